"""Train/test splits of a trace by token or by request: solve on one part, replay the other."""

from __future__ import annotations

import numpy as np

from slimjax.traces._trace import Trace

__all__ = ["split"]


def split(
    trace: Trace, fraction: float = 0.5, by: str = "token", seed: int | None = 0
) -> tuple[Trace, Trace]:
    """Train/test split: ``fraction`` of the tokens (or of the requests) go to the first part.

    Args:
      by: ``"token"`` (tokens assigned independently) or ``"request"`` (whole requests stay on
        one side; needs ``trace.request`` with >= 2 requests).
      seed: shuffle seed; None keeps the original order (first part = the earliest tokens).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction: must be in (0, 1), got {fraction}")
    T = trace.num_tokens
    rng = np.random.default_rng(seed) if seed is not None else None
    if by == "token":
        if T < 2:
            raise ValueError(f"trace: need >= 2 tokens to split, got {T}")
        order = rng.permutation(T) if rng is not None else np.arange(T)
        n = min(max(int(round(fraction * T)), 1), T - 1)
        first = np.zeros(T, bool)
        first[order[:n]] = True
    elif by == "request":
        if trace.request is None:
            raise ValueError("by='request': the trace has no per-token request ids")
        reqs = np.unique(trace.request)
        if reqs.size < 2:
            raise ValueError(f"by='request': need >= 2 requests, the trace has {reqs.size}")
        reqs = rng.permutation(reqs) if rng is not None else reqs
        n = min(max(int(round(fraction * reqs.size)), 1), reqs.size - 1)
        first = np.isin(trace.request, reqs[:n])
    else:
        raise ValueError(f"by: must be 'token' or 'request', got {by!r}")
    return trace.select(first), trace.select(~first)
