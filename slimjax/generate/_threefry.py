"""JAX's default random numbers (threefry2x32), bit for bit, computed on the host in NumPy.

Why: a small batch of instances (``instance(key)``, ``instances(key, n)`` for small ``n``) is
drawn in a new process with the sampling program compiled from scratch, and XLA spends about
40 % of that compilation on the four threefry hashing loops (the batch split, the per-instance
split, the two uniform pools) although they hash only ~10^4 counters. Drawing those few bits on
the host and handing the program its uniform pools makes the first draw about a third faster and
changes no bit: threefry is pure ``uint32`` arithmetic, and the bits-to-float step below is the
one ``jax.random.uniform`` uses (exact). ``tests/test_threefry.py`` checks both against
``jax.random`` on many keys, sizes and both float widths.

It mirrors JAX's ``jax_threefry_partitionable`` scheme (the default since JAX 0.5): the counters
of an array of shape ``(n,)`` are the 64-bit integers ``0..n-1`` split into two ``uint32`` words.
:func:`host_draws_match_jax` says when that holds (default threefry keys, partitionable mode);
otherwise callers keep drawing with ``jax.random``.
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["host_draws_match_jax", "split", "threefry2x32", "uniform"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(v: np.ndarray, r: int) -> np.ndarray:
    return (v << np.uint32(r)) | (v >> np.uint32(32 - r))


def threefry2x32(k1: np.ndarray, k2: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Threefry-2x32 hash (20 rounds) of counters ``(x1, x2)`` under keys ``(k1, k2)``;
    every argument ``uint32``, broadcast together. Same values as ``jax.random``'s primitive."""
    with np.errstate(over="ignore"):
        k1, k2, x1, x2 = (np.asarray(a, np.uint32) for a in (k1, k2, x1, x2))
        ks = (k1, k2, k1 ^ k2 ^ _PARITY)
        v0, v1 = x1 + ks[0], x2 + ks[1]
        for i in range(5):
            for r in _ROTATIONS[i % 2]:
                v0 = v0 + v1
                v1 = v0 ^ _rotl(v1, r)
            v0 = v0 + ks[(i + 1) % 3]
            v1 = v1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return v0, v1


def _counters(n: int) -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(n, dtype=np.uint64)
    return (i >> np.uint64(32)).astype(np.uint32), (i & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def split(key_data: np.ndarray, n: int) -> np.ndarray:
    """``jax.random.split`` on raw key data: ``[..., 2]`` uint32 -> ``[..., n, 2]``."""
    kd = np.asarray(key_data, np.uint32)
    c1, c2 = _counters(n)
    b1, b2 = threefry2x32(kd[..., 0, None], kd[..., 1, None], c1, c2)
    return np.stack([b1, b2], axis=-1)


def uniform(key_data: np.ndarray, size: int, dtype) -> np.ndarray:
    """``jax.random.uniform(key, (size,), dtype)`` on raw key data ``[..., 2]`` -> ``[..., size]``
    (values in [0, 1); float32 or float64)."""
    kd = np.asarray(key_data, np.uint32)
    c1, c2 = _counters(size)
    b1, b2 = threefry2x32(kd[..., 0, None], kd[..., 1, None], c1, c2)
    dt = np.dtype(dtype)
    if dt == np.float32:
        bits = (b1 ^ b2) >> np.uint32(32 - 23)
        return (bits | np.array(1.0, np.float32).view(np.uint32)).view(np.float32) - np.float32(1.0)
    if dt == np.float64:
        bits = ((b1.astype(np.uint64) << np.uint64(32)) | b2.astype(np.uint64)) >> np.uint64(64 - 52)
        return (bits | np.array(1.0, np.float64).view(np.uint64)).view(np.float64) - 1.0
    raise ValueError(f"dtype: must be float32 or float64, got {dt}")


def host_draws_match_jax(key) -> bool:
    """Whether :func:`split` and :func:`uniform` give ``jax.random``'s values for ``key`` (a typed
    key or raw ``uint32[2]`` data): threefry2x32 keys under ``jax_threefry_partitionable``."""
    if not jax.config.jax_threefry_partitionable:
        return False
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return str(jax.random.key_impl(key)) in ("threefry2x32", "PRNGImpl(threefry2x32)")
    return jax.config.jax_default_prng_impl == "threefry2x32"
