"""Train/test splits of a trace by token, request, phase or domain: solve on one part, replay the other."""

from __future__ import annotations

import numpy as np

from slimjax.traces._trace import Trace

__all__ = ["split"]


def split(
    trace: Trace, fraction: float = 0.5, by: str = "token", seed: int | None = 0
) -> tuple[Trace, Trace]:
    """Train/test split: ``fraction`` of the tokens (or of the requests, or domains) go to the first part.

    Args:
      by: ``"token"`` (tokens assigned independently), ``"request"`` (whole requests stay on
        one side; needs ``trace.request`` with >= 2 requests), ``"domain"`` (the same with whole
        domains; needs ``trace.domain`` with >= 2 domains; seed=None takes them in order of first
        appearance) or ``"phase"`` (prefill tokens, then decode tokens; ``fraction`` and ``seed``
        are not used; needs ``trace.phase`` with both).
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
    elif by == "domain":
        if trace.domain is None:
            raise ValueError("by='domain': the trace has no per-token domain tags")
        _, at = np.unique(trace.domain, return_index=True)
        doms = trace.domain[np.sort(at)]  # in order of first appearance
        if doms.size < 2:
            raise ValueError(f"by='domain': need >= 2 domains, the trace has {doms.size}")
        doms = rng.permutation(doms) if rng is not None else doms
        n = min(max(int(round(fraction * doms.size)), 1), doms.size - 1)
        first = np.isin(trace.domain, doms[:n])
    elif by == "phase":
        if trace.phase is None:
            raise ValueError("by='phase': the trace has no per-token phase tags")
        first = trace.phase == "prefill"
        for name, part in (("prefill", first), ("decode", trace.phase == "decode")):
            if not part.any():
                raise ValueError(f"by='phase': the trace has no {name} tokens (phases: {np.unique(trace.phase).tolist()})")
        return trace.select(first), trace.select(trace.phase == "decode")
    else:
        raise ValueError(f"by: must be 'token', 'request', 'domain' or 'phase', got {by!r}")
    return trace.select(first), trace.select(~first)
