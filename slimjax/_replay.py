"""Trace replay: every token's latency under a placement, and its mean and percentiles.

A token's latency is ``Σ_l max_k d[user, l, expert_ids[t, l, k]]`` (``Σ_k`` with
``aggregation="sum"``), with ``d`` the expert latency of :func:`slimjax.expert_latency`. The mean
over the tokens equals :func:`slimjax.objective` of the instance whose patterns are those tokens
(each with weight 1/T).

One implementation serves one instance and a batch. A batch (instances [B], placements
[B, N, L, E]) replays one token set [T, L, K] shared by all instances, or its own tokens per
instance [B, T, L, K], without a Python loop over instances. The work is cut to a memory
budget: instances go in chunks of a fixed size (the last chunk padded, so every chunk runs the
same compiled program) and, inside a chunk, a ``lax.scan`` takes the tokens ``tokens_per_step``
at a time, so ``B × T × L × K`` gathered latencies never exist at once. The chunk sizes come from
an estimate of the working set; the compiled chunk program's own ``memory_analysis()`` then
checks them against the budget, and they shrink until the program fits. Compiled programs are
cached per shape: repeated calls (other placements, users, latencies) do not recompile.

:func:`replay_stats` reduces each chunk to its mean and percentiles as soon as it is done, so
only one chunk's token latencies exist at a time. The percentiles are NumPy's (linear
interpolation, float64) on the host: an O(T) selection, where a device-side sort costs
O(T log T) and, on CPU, measured about 9× slower.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from slimjax._instance import Instance
from slimjax._objective import Placement, _check_aggregation, check_placement, expert_latency_from

__all__ = ["DEFAULT_MEMORY_BUDGET_MB", "replay", "replay_stats"]

#: Default working-memory budget of one replay chunk (MB): small enough for a laptop CPU, large
#: enough that the default suite and typical traces run as a single chunk.
DEFAULT_MEMORY_BUDGET_MB = 256.0


# --------------------------------------------------------------------------------------------
# The chunk program: C instances, all T tokens, tokens_per_step tokens at a time
# --------------------------------------------------------------------------------------------
def _chunk_program(latency, fallback, base, placement, expert_ids, user, *, num_tokens, tokens_per_step, aggregation,
                   include_base):
    """Token latencies [C, T] of C instances.

    ``expert_ids`` is [T', L, K] (shared) or [C, T', L, K] with T' a multiple of
    ``tokens_per_step`` (padded on the host); the first ``num_tokens`` are real.
    """
    shared = expert_ids.ndim == 3
    C, L = latency.shape[0], latency.shape[-2]
    lat_u = jax.lax.dynamic_index_in_dim(latency, user, 1, keepdims=True)  # [C, 1, N, L, E]
    fb_u = jax.lax.dynamic_index_in_dim(fallback, user, 1, keepdims=True)
    d = jax.vmap(expert_latency_from)(lat_u, fb_u, placement)[:, 0]  # [C, L, E]
    rows = jnp.arange(L)[None, :, None]
    steps = expert_ids.shape[-3] // tokens_per_step

    def step(_, s):
        part = jax.lax.dynamic_slice_in_dim(expert_ids, s * tokens_per_step, tokens_per_step, axis=-3)
        def gather(dc, ids):  # [L, E], [tc, L, K] -> [tc, L, K]
            return dc[rows, ids]

        member = jax.vmap(gather, in_axes=(0, None if shared else 0))(d, part)  # [C, tc, L, K]
        per_layer = member.max(-1) if aggregation == "max" else member.sum(-1)
        return None, per_layer.sum(-1)  # [C, tc]

    _, ys = jax.lax.scan(step, None, jnp.arange(steps))  # [steps, C, tc]
    out = jnp.moveaxis(ys, 0, 1).reshape(C, steps * tokens_per_step)[:, :num_tokens]
    if include_base:
        out = out + jax.lax.dynamic_index_in_dim(base, user, 1, keepdims=True)
    return out


@functools.lru_cache(maxsize=128)
def _compiled(avals: tuple, num_tokens: int, tokens_per_step: int, aggregation: str, include_base: bool):
    """The chunk program compiled for these argument shapes (cached: no recompile per call)."""
    fn = functools.partial(_chunk_program, num_tokens=num_tokens, tokens_per_step=tokens_per_step,
                           aggregation=aggregation, include_base=include_base)
    return jax.jit(fn).lower(*avals).compile()


def _compiled_bytes(compiled) -> int | None:
    """Arguments + outputs + temporaries of a compiled program, as XLA reports them (None if not)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


# --------------------------------------------------------------------------------------------
# The plan: chunk sizes for a budget
# --------------------------------------------------------------------------------------------
class _Plan(NamedTuple):
    instances: int  # instances per chunk (C)
    chunks: int  # number of instance chunks (the last one padded)
    tokens_per_step: int  # tokens per step of the on-device token loop
    bytes: int  # working set of one chunk: XLA's measurement when available, else the estimate
    measured: bool  # bytes come from memory_analysis()


def _steps(T: int, tc: int) -> tuple[int, int]:
    """(steps, tokens per step) covering T tokens with at most ``tc`` per step and the least padding."""
    if T == 0:
        return 0, 1
    steps = math.ceil(T / max(1, min(tc, T)))
    return steps, math.ceil(T / steps)


def _estimate(C: int, tc: int, shape: tuple, T: int, itemsize: int, shared: bool) -> int:
    """A working-set estimate of one chunk (bytes): inputs, d, one token step, the [C, T] outputs."""
    U, N, L, E, K = shape
    f = itemsize
    steps, tc = _steps(T, tc) if tc else (0, 0)
    Tp = max(T, steps * tc)
    inputs = C * (U * N * L * E * f + U * L * E * f + U * f + N * L * E) + (1 if shared else C) * Tp * L * K * 4
    d = C * (N * L * E * f + L * E * f)
    step = C * tc * L * (K + 1) * f  # gathered latencies and their per-layer max (or sum)
    out = C * (Tp + T) * f  # the scan's output and its trimmed copy
    return inputs + d + step + out


def _avals(C: int, shape: tuple, Tp: int, dtype, shared: bool) -> tuple:
    U, N, L, E, K = shape
    S = jax.ShapeDtypeStruct
    ids = S((Tp, L, K), jnp.int32) if shared else S((C, Tp, L, K), jnp.int32)
    return (S((C, U, N, L, E), dtype), S((C, U, L, E), dtype), S((C, U), dtype), S((C, N, L, E), jnp.bool_), ids,
            S((), jnp.int32))


def _plan(B: int, shape: tuple, T: int, dtype, *, shared: bool, budget_bytes: float, tokens_per_step: int | None,
          aggregation: str, include_base: bool) -> tuple[_Plan, Any]:
    """Chunk sizes whose compiled program fits ``budget_bytes``, and that compiled program.

    The estimate picks the sizes (after a shared token set, half the budget for the instances'
    own data and outputs, the rest for the token step); XLA's ``memory_analysis()`` of the compiled chunk checks them, and the token step
    (then the instance chunk) shrinks by the measured excess until the program fits.
    """
    f = jnp.dtype(dtype).itemsize

    def est(C, tc):
        return _estimate(C, tc, shape, T, f, shared)

    per_inst = est(2, 0) - est(1, 0)
    shared_bytes = est(1, 0) - per_inst  # a shared token set is held once
    avail = budget_bytes - shared_bytes
    C = int(min(B, max(1, (avail / 2) // max(per_inst, 1))))
    if tokens_per_step is None:
        per_tok = max(est(C, 2) - est(C, 1), 1)
        tc = int(min(max(T, 1), max(1, (budget_bytes - est(C, 0)) // per_tok)))
    else:
        tc = int(tokens_per_step)
    while True:
        C = math.ceil(B / math.ceil(B / C))  # balanced chunks: the least padding for this many chunks
        steps, tc = _steps(T, tc)
        compiled = _compiled(_avals(C, shape, steps * tc, dtype, shared), T, tc, aggregation, include_base)
        measured = _compiled_bytes(compiled)
        used = measured if measured is not None else est(C, tc)
        can_shrink_tokens = tokens_per_step is None and tc > 1
        if used <= budget_bytes or (C == 1 and not can_shrink_tokens):
            break
        shrink = max(2.0, used / budget_bytes)
        if can_shrink_tokens and (tc >= 256 or C == 1):  # keep C·tc large: shrink the token step first
            tc = max(1, int(tc / shrink))
        else:
            C = max(1, int(C / shrink))
    if used > budget_bytes:
        warnings.warn(f"memory_budget_mb: replaying {T} tokens needs {used / 2**20:.2f} MB for a single instance, more "
                      f"than the budget of {budget_bytes / 2**20:.2f} MB; running with the smallest chunks", stacklevel=4)
    return _Plan(C, math.ceil(B / C), tc, int(used), measured is not None), compiled


# --------------------------------------------------------------------------------------------
# Validation and the driver
# --------------------------------------------------------------------------------------------
def _token_array(expert_ids: Any) -> np.ndarray:
    """The id array of ``expert_ids`` (an array or anything with an ``expert_ids`` attribute, e.g. a Trace)."""
    ids = getattr(expert_ids, "expert_ids", expert_ids)
    return np.asarray(ids)


def _prepare(inst, placement, expert_ids, user, aggregation, chunk):
    _check_aggregation(aggregation)
    if not isinstance(inst, Instance):
        raise ValueError(f"inst: expected a slimjax.Instance, got {type(inst).__name__}")
    if len(inst.batch_shape) > 1:
        raise ValueError(f"inst: replay takes one instance or a batch with one leading axis, got batch shape "
                         f"{inst.batch_shape}")
    batched = len(inst.batch_shape) == 1
    U, _, L, E, _, _ = inst.shape
    B = inst.batch_shape[0] if batched else 1
    if isinstance(user, bool) or not isinstance(user, (int, np.integer)) or not 0 <= user < U:
        raise ValueError(f"user: must be an integer in [0, U={U}), got {user!r}")
    x = check_placement(inst, placement)  # bool [B, N, L, E] or [N, L, E]
    ids = _token_array(expert_ids)
    if ids.ndim == 4 and batched:
        if ids.shape[0] != B or ids.shape[2] != L:
            raise ValueError(f"expert_ids: per-instance tokens must have shape [B={B}, T, L={L}, K], got {list(ids.shape)}")
    elif ids.ndim != 3 or ids.shape[1] != L:
        want = f"[T, L={L}, K]" + (f" (or [B={B}, T, L={L}, K] per instance)" if batched else "")
        raise ValueError(f"expert_ids: expected shape {want}, got {list(ids.shape)}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"expert_ids: must be integer expert ids, got dtype {ids.dtype}")
    if ids.shape[-1] < 1:
        raise ValueError(f"expert_ids: need K >= 1 experts per token and layer, got shape {list(ids.shape)}")
    if ids.size and (ids.min() < 0 or ids.max() >= E):
        bad = tuple(int(v) for v in np.argwhere((ids < 0) | (ids >= E))[0])
        raise ValueError(f"expert_ids: ids must be in [0, E={E}), got {ids[bad]} at index {bad}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1):
        raise ValueError(f"chunk: tokens per step must be an integer >= 1, got {chunk!r}")
    return batched, B, x, ids


def _budget_bytes(memory_budget_mb: float | str) -> float:
    """``memory_budget_mb`` in bytes: a number > 0, or ``"auto"`` as in :func:`slimjax.solve_batch`."""
    from slimjax._memory import memory_budget_bytes  # the one resolver of "auto"

    return memory_budget_bytes(memory_budget_mb)


def _chunks(inst, placement, expert_ids, *, user, aggregation, include_base, memory_budget_mb, chunk):
    """Replay in chunks: yields ``(start, count, token latencies [C, T])`` per chunk of instances.

    Chunk i + 1 is dispatched before chunk i is handed out, so host-side work on a chunk overlaps
    the device's work on the next (JAX dispatches asynchronously).
    """
    batched, B, x, ids = _prepare(inst, placement, expert_ids, user, aggregation, chunk)
    budget = _budget_bytes(memory_budget_mb)
    U, N, L, E, _, _ = inst.shape
    K, T, shared = ids.shape[-1], ids.shape[-3], ids.ndim == 3
    lat, fb, base = inst.latency, inst.fallback, inst.base
    if not batched:
        lat, fb, base, x = lat[None], fb[None], base[None], x[None]
    if T == 0:  # nothing to replay (statistics refuse this earlier)
        yield 0, B, jnp.zeros((B, 0), lat.dtype)
        return
    plan, compiled = _plan(B, (U, N, L, E, K), T, lat.dtype, shared=shared,
                           budget_bytes=budget, tokens_per_step=chunk,
                           aggregation=aggregation, include_base=bool(include_base))
    steps, tc = _steps(T, plan.tokens_per_step)
    ids = ids.astype(np.int32, copy=False)
    if steps * tc > T:  # whole token steps: padded tokens (expert 0) are computed and dropped on the device
        pad = np.zeros(ids.shape[:-3] + (steps * tc - T,) + ids.shape[-2:], np.int32)
        ids = np.concatenate([ids, pad], axis=-3)
    u = np.int32(user)
    C = plan.instances
    if C == B:
        yield 0, B, compiled(lat, fb, base, x, jnp.asarray(ids), u)
        return
    ids_dev = jnp.asarray(ids) if shared else None  # per-instance tokens travel with their chunk
    pending = None
    for start in range(0, B, C):
        idx = np.minimum(np.arange(start, start + C), B - 1)  # the last chunk repeats its last instance
        ids_c = ids_dev if shared else jnp.asarray(ids[idx])
        res = compiled(lat[idx], fb[idx], base[idx], x[idx], ids_c, u)
        if pending is not None:
            yield pending
        pending = (start, min(C, B - start), res)
    yield pending


def replay(
    inst: Instance,
    placement: Placement,
    expert_ids: Int[ArrayLike, "*_b T L K"] | Any,  # or a Trace (anything with .expert_ids)
    *,
    user: int = 0,
    aggregation: str = "max",
    include_base: bool = False,
    chunk: int | None = None,
    memory_budget_mb: float | str = DEFAULT_MEMORY_BUDGET_MB,
) -> Float[Array, "*B T"]:
    """Replay tokens through a placement; returns each token's latency.

    Args:
      inst: one instance, or a batch with one leading axis B.
      placement: bool [N, L, E] (a batch: [B, N, L, E]).
      expert_ids: int [T, L, K], the experts each token chose at each MoE layer (any K ≤ E); for a
        batch, one token set [T, L, K] shared by all instances or one per instance [B, T, L, K].
        A :class:`slimjax.traces.Trace` works too.
      user: which user of a multi-user instance the tokens belong to.
      aggregation: ``"max"`` or ``"sum"``, as in :func:`slimjax.objective`.
      include_base: add that user's non-expert ``base`` latency.
      chunk: tokens per step of the on-device loop (default: chosen from the budget).
      memory_budget_mb: working memory of one chunk (inputs, intermediates and outputs of the
        compiled chunk program, as XLA measures it), or ``"auto"`` as in :func:`slimjax.solve_batch`. The result itself is B × T floats; for
        statistics of a large batch use :func:`replay_stats`, which never holds it.

    Returns:
      float [T] (a batch: [B, T]).

    Raises:
      ValueError: shapes that disagree, ids outside [0, E), a bad user, aggregation or budget.
    """
    parts = [res[:n] for _, n, res in _chunks(inst, placement, expert_ids, user=user, aggregation=aggregation,
                                               include_base=include_base, memory_budget_mb=memory_budget_mb,
                                               chunk=chunk)]
    out = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
    return out if inst.batch_shape else out[0]


def _check_percentiles(percentiles: Sequence[float]) -> tuple[float, ...]:
    try:
        q = tuple(float(p) for p in percentiles)
    except TypeError:
        raise ValueError(f"percentiles: expected a sequence of numbers in [0, 100], got {percentiles!r}") from None
    if any(not 0 <= p <= 100 for p in q):
        raise ValueError(f"percentiles: each must be in [0, 100], got {list(q)}")
    return q


def _summary(a: np.ndarray, q: tuple[float, ...]) -> dict[str, np.ndarray | np.floating]:
    """Mean and percentiles over the last axis of token latencies, in float64."""
    a = np.asarray(a, np.float64)
    out = {"mean": a.mean(-1)}
    for p in q:
        out[f"p{p:g}"] = np.percentile(a, p, axis=-1)
    return out


def replay_stats(
    inst: Instance | Float[ArrayLike, "*B T"],
    placement: Placement | Sequence[float] | None = None,  # (the array form: the percentiles)
    expert_ids: Int[ArrayLike, "*_b T L K"] | Any = None,  # or a Trace
    *,
    percentiles: Sequence[float] = (50, 95, 99),
    **options: Any,
) -> dict[str, Any]:
    """Mean and percentiles of per-token latency: ``{"mean", "p50", "p95", "p99", "tokens"}``.

    Two forms:

    * ``replay_stats(inst, placement, expert_ids, **options)`` replays (``options`` as in
      :func:`replay`: ``user``, ``aggregation``, ``include_base``, ``chunk``,
      ``memory_budget_mb``) and reduces each chunk of instances as soon as it is done, so the
      token latencies of a large batch are never held at once;
    * ``replay_stats(token_latency)`` summarises latencies already replayed, [T] or [B, T]
      (``replay_stats(token_latency, percentiles)`` also works).

    Percentiles are NumPy's (linear interpolation), computed in float64.

    Returns:
      floats for one instance ([T]); NumPy arrays [B] for a batch ([B, T]). ``tokens`` is T.

    Raises:
      ValueError: no tokens, percentiles outside [0, 100], bad replay input (see :func:`replay`).
    """
    if not isinstance(inst, Instance):
        if expert_ids is not None or options:
            raise ValueError("replay_stats: token latencies take no placement, tokens or replay options")
        q = _check_percentiles(percentiles if placement is None else placement)
        a = np.asarray(inst, np.float64)
        if a.ndim not in (1, 2):
            raise ValueError(f"token_latency: expected shape [T] or [B, T], got {list(a.shape)}")
        if a.shape[-1] == 0:
            raise ValueError("token_latency: empty; no tokens were replayed")
        out: dict[str, Any] = _summary(a, q)
        if a.ndim == 1:
            out = {k: float(v) for k, v in out.items()}
        out["tokens"] = int(a.shape[-1])
        return out
    q = _check_percentiles(percentiles)
    if placement is None or expert_ids is None:
        raise ValueError("replay_stats: an instance needs a placement and expert_ids")
    unknown = set(options) - {"user", "aggregation", "include_base", "memory_budget_mb", "chunk"}
    if unknown:
        raise ValueError(f"replay_stats: unknown option(s) {sorted(unknown)}")
    options = {"user": 0, "aggregation": "max", "include_base": False, "chunk": None,
               "memory_budget_mb": DEFAULT_MEMORY_BUDGET_MB, **options}
    ids = _token_array(expert_ids)
    if ids.ndim >= 3 and ids.shape[-3] == 0:
        raise ValueError("expert_ids: no tokens to replay")
    B = inst.batch_shape[0] if inst.batch_shape else 1
    out = {k: np.empty(B) for k in ["mean"] + [f"p{p:g}" for p in q]}
    for start, n, res in _chunks(inst, placement, ids, **options):
        for k, v in _summary(np.asarray(res)[:n], q).items():
            out[k][start : start + n] = v
    if not inst.batch_shape:
        out = {k: float(v[0]) for k, v in out.items()}
    out["tokens"] = int(ids.shape[-3])
    return out
