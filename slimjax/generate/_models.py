"""MoE model presets, from the models' published configs.

Only what the caching problem needs: the number of MoE layers ``L``, routed experts per layer
``E``, top-``K``, the hidden size and the expert FFN width. From them:

* ``expert_bytes = matrices · hidden · ffn · bytes_per_weight`` (gate, up, down: ``matrices = 3``),
* ``expert_flops = 2 · matrices · hidden · ffn`` per decoded token (a multiply-add is 2 FLOPs),

so with the default ``matrices = 3`` and bf16 weights ``expert_bytes = 3·hidden·ffn·2`` and
``expert_flops = 6·hidden·ffn``. Shared (always active) experts are not placed: they run on the
user's device and are counted in ``base`` (non-expert per-token latency), together with an
approximate attention block of ``attention_params`` weights per MoE layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["MODELS", "ModelPreset", "get_model", "model_names"]


@dataclasses.dataclass(frozen=True)
class ModelPreset:
    """A MoE model's shape (hashable, usable as a static jit argument).

    Attributes:
      name: preset name.
      layers: number of MoE layers ``L``.
      experts: routed experts per layer ``E``.
      top_k: experts chosen per token and layer ``K``.
      hidden: model (hidden) size; the activation sent to a remote expert has this many values.
      ffn: FFN width of one routed expert.
      shared_experts: always-active shared experts per layer (counted in ``base``), each of
        width ``ffn``.
      bytes_per_weight: bytes per stored weight (2 = bf16).
      matrices: weight matrices per expert (3 = gate, up, down of a SwiGLU FFN).
      attention_params: non-expert weights per MoE layer read for every token (attention and
        norms); ``None`` = the approximation ``4 · hidden²``. Only enters ``base``.
    """

    name: str
    layers: int
    experts: int
    top_k: int
    hidden: int
    ffn: int
    shared_experts: int = 0
    bytes_per_weight: float = 2.0
    matrices: int = 3
    attention_params: int | None = None

    def __post_init__(self):
        for f in ("layers", "experts", "top_k", "hidden", "ffn", "matrices"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"model.{f}: must be an integer >= 1, got {v!r}")
        if not isinstance(self.shared_experts, int) or self.shared_experts < 0:
            raise ValueError(f"model.shared_experts: must be an integer >= 0, got {self.shared_experts!r}")
        if self.top_k > self.experts:
            raise ValueError(f"model.top_k: must be <= experts={self.experts}, got {self.top_k}")
        if not self.bytes_per_weight > 0:
            raise ValueError(f"model.bytes_per_weight: must be > 0, got {self.bytes_per_weight!r}")
        if self.attention_params is not None and self.attention_params < 0:
            raise ValueError(f"model.attention_params: must be >= 0, got {self.attention_params!r}")

    @property
    def expert_params(self) -> int:
        """Weights of one routed expert."""
        return self.matrices * self.hidden * self.ffn

    @property
    def expert_bytes(self) -> float:
        """Bytes of one routed expert (``3·hidden·ffn·bytes_per_weight`` by default)."""
        return float(self.expert_params * self.bytes_per_weight)

    @property
    def expert_flops(self) -> float:
        """FLOPs of one routed expert for one token (``6·hidden·ffn`` by default)."""
        return float(2 * self.expert_params)

    @property
    def total_expert_bytes(self) -> float:
        """Bytes of all routed experts (``L · E · expert_bytes``)."""
        return self.layers * self.experts * self.expert_bytes

    @property
    def dense_params_per_layer(self) -> int:
        """Per-layer weights that run on the device for every token: attention + shared experts."""
        attn = 4 * self.hidden * self.hidden if self.attention_params is None else self.attention_params
        return attn + self.shared_experts * self.expert_params

    @property
    def dense_bytes(self) -> float:
        """Bytes of the non-routed per-token weights over all MoE layers (enters ``base``)."""
        return float(self.layers * self.dense_params_per_layer * self.bytes_per_weight)

    @property
    def dense_flops(self) -> float:
        """FLOPs of the non-routed per-token work over all MoE layers (enters ``base``)."""
        return float(2 * self.layers * self.dense_params_per_layer)

    def replace(self, **changes) -> ModelPreset:
        """A copy with some fields changed (e.g. ``bytes_per_weight=1`` for int8 weights)."""
        return dataclasses.replace(self, **changes)


MODELS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset("mixtral_8x7b", layers=32, experts=8, top_k=2, hidden=4096, ffn=14336),
        ModelPreset("mixtral_8x22b", layers=56, experts=8, top_k=2, hidden=6144, ffn=16384),
        ModelPreset("phi3_5_moe", layers=32, experts=16, top_k=2, hidden=4096, ffn=6400),
        ModelPreset("qwen1_5_moe_a2_7b", layers=24, experts=60, top_k=4, hidden=2048, ffn=1408, shared_experts=4),
        ModelPreset("deepseek_v2_lite", layers=26, experts=64, top_k=6, hidden=2048, ffn=1408, shared_experts=2),
        ModelPreset("olmoe_1b_7b", layers=16, experts=64, top_k=8, hidden=2048, ffn=1024),
        ModelPreset("qwen3_30b_a3b", layers=48, experts=128, top_k=8, hidden=2048, ffn=768),
        ModelPreset("gpt_oss_20b", layers=24, experts=32, top_k=4, hidden=2880, ffn=2880),
        ModelPreset("deepseek_v3", layers=58, experts=256, top_k=8, hidden=7168, ffn=2048, shared_experts=1),
        ModelPreset("moe_llava_phi2", layers=16, experts=4, top_k=2, hidden=2560, ffn=10240),
    )
}


def model_names() -> tuple[str, ...]:
    """Names of the presets."""
    return tuple(MODELS)


def get_model(model: str | ModelPreset | Mapping[str, Any]) -> ModelPreset:
    """Look up a preset by name (or pass a :class:`ModelPreset` / a mapping of its fields through).

    Raises:
      ValueError: for an unknown name, listing the valid ones, or a malformed mapping.
    """
    if isinstance(model, ModelPreset):
        return model
    if isinstance(model, Mapping):
        fields = {f.name for f in dataclasses.fields(ModelPreset)}
        d = dict(model)
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"model: unknown field(s) {unknown}; valid fields: {sorted(fields)}")
        if "name" in d and set(d) == {"name"}:
            return get_model(d["name"])
        d.setdefault("name", "custom")
        base = MODELS.get(d["name"])
        if base is not None:  # a preset with some fields overridden
            return dataclasses.replace(base, **{k: v for k, v in d.items() if k != "name"})
        return ModelPreset(**d)
    if not isinstance(model, str) or model not in MODELS:
        raise ValueError(f"model: unknown preset {model!r}; valid names: {', '.join(MODELS)}")
    return MODELS[model]
