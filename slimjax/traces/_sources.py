"""Defaults for what a trace file does not state, by known source.

Matched (case-insensitively) against the path and the model id of a JSONL meta line; options
given to a loader always win.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["KNOWN_SOURCES"]

#: ``{key: defaults}``: the first key that occurs in the path or model id gives ``num_experts``,
#: ``top_k``, ``warmup`` (JSONL rows to drop per layer) and ``layers`` (original layer indices).
KNOWN_SOURCES: dict[str, dict[str, Any]] = {
    # Qwen1.5-MoE-A2.7B-Chat in vLLM 0.11: 8192 + 256 dummy rows of profiling/CUDA-graph runs.
    "qwen1.5-moe": {"num_experts": 60, "top_k": 4, "warmup": 8448},
    # OLMoE-1B-7B in vLLM 0.6.6: 2048 dummy profiling rows (uniform weights, identical ids).
    "olmoe-1b-7b": {"num_experts": 64, "top_k": 8, "warmup": 2048},
    # allenai/OLMoE routing_output pickles: counts of layers [0, 7, 15].
    "olmoe/expert_counts": {"num_experts": 64, "top_k": 8, "layers": [0, 7, 15]},
    "mistral/expert_counts": {"num_experts": 8, "top_k": 2, "layers": [0, 7, 15]},
    # google/switch-base-128 statistics (specMoE): top-1.
    "specmoe": {"num_experts": 128, "top_k": 1},
    "switch-base": {"num_experts": 128, "top_k": 1},
    "mixtral": {"num_experts": 8, "top_k": 2},
}


def hints(*texts: str | None) -> dict[str, Any]:
    """Defaults of the first known source whose key occurs in any of ``texts``."""
    hay = " ".join(t.lower().replace("\\", "/") for t in texts if t)
    for key, vals in KNOWN_SOURCES.items():
        if key in hay:
            return dict(vals)
    return {}


def reject_unknown(options: dict, allowed: Iterable[str]) -> None:
    """``ValueError`` for loader options that this format does not take."""
    bad = [k for k in options if k not in allowed]
    if bad:
        raise ValueError(f"options: unknown option(s) {bad} for this trace format")
