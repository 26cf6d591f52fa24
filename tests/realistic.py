"""Realistic instances for speed and certificate work (issue 29): instances built from the real
per-token routing traces in ``../shared/traces`` (or ``$SLIMJAX_SHARED/traces``), with thousands
of distinct top-K patterns per layer, single- and multi-user.

* ``qwen``: the Qwen1.5-MoE vLLM trace as it is (L = 3 logged layers, E = 60, K = 4,
  ~3,000 distinct patterns per layer, 4,357 tokens).
* ``olmoe``: the OLMoE vLLM trace (L = 1, E = 64, K = 8, 4,471 tokens).
* ``deepseek_v2_lite``: L = 26, E = 64, K = 6 (deepseek_v2_lite's shape) built from the OLMoE
  per-token trace: layer l takes 6 of each token's 8 experts (a seeded random choice per token
  and layer) of the tokens read cyclically from offset 997·l, 8,192 tokens, its expert ids relabelled by a fixed
  per-layer permutation (seed 0) so that layers differ. The co-activation within a layer is real;
  across layers it is not. ~7,300 distinct patterns per layer.

``users > 1`` splits the tokens among users round-robin (token t belongs to user t mod U), so
each user has its own patterns and traffic; ``load`` sets the load model's target utilisation.
Used by tests (they skip when the traces are absent) and by ``scripts/bench.py``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

import slimjax

KINDS = ("qwen", "olmoe", "deepseek_v2_lite")


def shared_traces() -> Path | None:
    """The raw traces folder, or None when ``../shared`` is absent."""
    root = os.environ.get("SLIMJAX_SHARED")
    base = Path(root) if root else Path(__file__).resolve().parents[1].parent / "shared"
    raw = base / "traces" / "raw"
    return raw if raw.is_dir() else None


@lru_cache(maxsize=None)
def trace(kind: str = "qwen") -> slimjax.traces.Trace:
    """The per-token trace of ``kind`` (see the module docstring)."""
    from slimjax import traces

    raw = shared_traces()
    if raw is None:
        raise FileNotFoundError("../shared/traces/raw is absent (set SLIMJAX_SHARED)")
    if kind == "qwen":
        return traces.load(raw / "weiran0129__vLLM-MoE-Logger")
    olmoe = traces.load(raw / "KaxitPandya__cerebras-assesment2" / "moe_routes.jsonl")
    if kind == "olmoe":
        return olmoe
    if kind != "deepseek_v2_lite":
        raise ValueError(f"kind: must be one of {KINDS}, got {kind!r}")
    ids = np.asarray(olmoe.expert_ids[:, 0, :])  # [T0, 8]
    T0, L, T, E = ids.shape[0], 26, 8192, 64
    rng = np.random.default_rng(0)
    out = np.empty((T, L, 6), np.int32)
    for layer in range(L):
        perm = rng.permutation(E)
        rows = (np.arange(T) + 997 * layer) % T0
        keep = np.argsort(rng.random((T, 8)), axis=1)[:, :6]  # 6 of the token's 8 experts
        out[:, layer] = perm[np.take_along_axis(ids[rows], keep, axis=1)]
    return traces.Trace(expert_ids=out, num_experts=E, source="olmoe-gsm8k tiled to deepseek_v2_lite shape")


def instance(kind: str = "qwen", *, users: int = 1, servers: int = 2, load: float | None = None,
             seed: int = 0, storage_fraction: float | None = 0.5) -> slimjax.Instance:
    """A single instance from ``trace(kind)``: ``users`` users sharing ``servers`` edge servers,
    network sampled with ``seed``; edge storage ``storage_fraction`` of the logged layers' bytes."""
    from slimjax.generate import instance_from_trace

    tr = trace(kind)
    if users > 1:
        tr = slimjax.traces.Trace(expert_ids=tr.expert_ids, num_experts=tr.num_experts,
                                  user=np.arange(tr.num_tokens) % users, source=tr.source)
    model = "deepseek_v2_lite" if kind == "deepseek_v2_lite" else None
    net = {"servers": servers, "users": users, "storage_fraction": storage_fraction}
    if load is not None:
        net["load"] = load
    return instance_from_trace(tr, model=model, network=net, key=seed)
