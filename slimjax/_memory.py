"""The memory budget of compiled programs: ``memory_budget_mb`` ("auto" or MB) in bytes, and how
many instances a chunk holds given one instance's working set. The one resolver of "auto", used by
the solvers, the bounds, the load-aware solver, replay and the app."""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["ACCELERATOR_SHARE", "CPU_BUDGET_MB", "chunk_size_for", "instance_bytes", "memory_budget_bytes"]


#: The budget of ``memory_budget_mb="auto"`` on CPU (MB), and the share of an accelerator's memory.
CPU_BUDGET_MB = 2048.0
ACCELERATOR_SHARE = 0.4


def memory_budget_bytes(value) -> float:
    """``memory_budget_mb`` in bytes: a number > 0, or ``"auto"`` (:data:`CPU_BUDGET_MB` on CPU,
    :data:`ACCELERATOR_SHARE` of the first device's memory limit on a GPU/TPU when JAX reports it)."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"memory_budget_mb: must be a number > 0 or 'auto', got {value!r}")
        dev = jax.local_devices()[0]
        if dev.platform != "cpu":
            try:
                limit = (dev.memory_stats() or {}).get("bytes_limit")
            except Exception:  # noqa: BLE001 - some backends do not report memory
                limit = None
            if limit:
                return ACCELERATOR_SHARE * float(limit)
        return CPU_BUDGET_MB * 2**20
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value > 0:
        raise ValueError(f"memory_budget_mb: must be a number > 0 or 'auto', got {value!r}")
    return float(value) * 2**20


def chunk_size_for(estimate: float, n: int, chunk_size, memory_budget_mb) -> int:
    """Instances per chunk: ``chunk_size`` if given, else what fits ``memory_budget_mb`` given the
    working-set ``estimate`` of one instance (bytes); at least 1, at most ``n``."""
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"chunk_size: must be an integer >= 1 or None, got {chunk_size!r}")
        return int(min(chunk_size, n))
    budget = memory_budget_bytes(memory_budget_mb)
    c = max(1, int(budget // max(estimate, 1)))
    return min(c, n)


def instance_bytes(shape: tuple) -> float:
    """Bytes of one instance's main float32 arrays (latency, fallback and d, patterns and weight)
    from ``Instance.shape`` = (U, N, L, E, M, K): the unit of the app's and solve's memory models."""
    U, N, L, E, M, K = shape
    return 4.0 * (U * N * L * E + 2 * U * L * E + U * L * M * (K + 1))
