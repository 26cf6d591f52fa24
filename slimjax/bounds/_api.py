"""``lower_bound`` and ``certify``: certified lower bounds on J and certified optimality gaps.

Every method returns, per instance, a number that is ≤ the optimal J of that instance over all
placements that :func:`slimjax.feasible` accepts (slimjax's one storage contract,
:mod:`slimjax._storage`: ``used ≤ capacity·(1 + 1e-6) + 1e-9·max(1, max size)``, float64), however
far an iterative method got. By construction: every relaxation's storage rows contain that set
(:func:`slimjax._storage.storage_cut` for the whole-expert rows of ``threshold``/``levels``, each
layer's smallest size; :func:`slimjax._storage.relaxed_limit` for the LP of the MILP), and every
LP-based value is a Lagrangian dual function evaluated in float64 at the dual point the method (or
HiGHS) reached (weak duality), never a primal objective. The float64 evaluation subtracts a
rounding margin of 1e-9 times the magnitudes it sums (far above float64's ~1e-16 per operation);
``levels`` inflates its float32 knapsack values by their worst-case rounding before the float64
combination. So a bound exceeds the optimum only by the float64 rounding of the optimum's own
evaluation (≤ ~1e-15 relative).

Execution. The methods are objects (:mod:`slimjax.bounds._methods`); their JAX programs run
through the one compile cache (:func:`slimjax._compile.call`, compile time measured apart) in
fixed-size chunks of the batch sized to ``memory_budget_mb`` (each program's XLA footprint —
arguments, outputs and temporaries, from ``memory_analysis`` — is recorded in
``Bound.peak_bytes``; when a chunk's footprint exceeds the budget the next chunks shrink). The
PDHG of the LP methods runs only on the instances that still need it (those another bound
already certified to the target, or that ``auto`` leaves to ``levels``, are not iterated).
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slimjax import _compile
from slimjax import _storage as storage
from slimjax._instance import Instance, is_batched
from slimjax._memory import memory_budget_bytes
from slimjax.bounds import _assignment, _highs_lp, _levels, _threshold
from slimjax.bounds import _pdhg as pdhg
from slimjax.bounds._methods import (
    COARSE_MIN_RATIO,
    METHODS,
    STATUS_NAMES,
    AssignmentLP,
    Auto,
    BoundMethod,
    BoundStatus,
    HighsLP,
    Levels,
    ThresholdHighs,
    ThresholdLP,
    Trivial,
    as_method,
)
from slimjax.ops import merge_patterns_host

__all__ = ["Bound", "Certificate", "HostBatch", "METHODS", "lower_bound", "certify", "host_batch", "objective64"]

_FORMS = {"threshold": _threshold, "lp": _assignment}
#: PDHG checks per run of the compiled loop (fixed, so max_iters does not change the program);
#: the time limit is checked between runs
CHECKS_PER_RUN = 16


def _names(status) -> Any:
    return STATUS_NAMES[np.asarray(status, np.int64)]


class Bound(NamedTuple):
    """Certified lower bounds of a batch (fields have a leading axis B; 0-d for one instance).

    Attributes:
      value: float64 [B], ≤ the optimal J of each instance.
      status: int8 [B] of :class:`~slimjax.bounds.BoundStatus` (``status_names``: the words). The
        value is a valid bound whatever the status.
      iterations: int [B] first-order iterations (0 for other methods and for instances that were
        not iterated).
      lp_error: float [B] relative KKT error of the LP at the end (nan where not measured).
      lp_gap: float [B] relative gap between a feasible LP point and the bound (an upper bound on
        how far the bound is below the LP optimum; nan where not measured).
      seconds: wall time of the call without compilation (the whole batch).
      compile_seconds: time spent compiling (0 when cached).
      instance_seconds: float [B] time per instance (batched methods: ``seconds / B``).
      method: the method's name (``"levels"``, ``"auto"``, ...).
      peak_bytes: the largest XLA footprint (arguments + outputs + temporaries) of a program run
        (0 for the host methods).
    """

    value: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    lp_error: np.ndarray
    lp_gap: np.ndarray
    seconds: float
    compile_seconds: float
    instance_seconds: np.ndarray
    method: str
    peak_bytes: int = 0

    @property
    def status_names(self) -> Any:
        """The status as words (``"optimal"``, ``"solved"``, ``"iteration_limit"``, ...)."""
        return _names(self.status)


class Certificate(NamedTuple):
    """Certified optimality gaps: ``gap = objective / bound.value − 1`` ≥ the true gap to the optimum.

    Attributes:
      gap: float64 [B] (0 when objective = bound = 0, inf when the bound is ≤ 0 < objective).
      objective: float64 [B] J of the certified placements (or the given values).
      bound: the :class:`Bound` used.
    """

    gap: np.ndarray
    objective: np.ndarray
    bound: Bound

    @property
    def lower(self) -> np.ndarray | np.floating:
        """float64 [B]: the certified lower bounds (``bound.value``; a scalar for one instance)."""
        return self.bound.value

    @property
    def status(self) -> Any:
        """int8 [B]: the bound's :class:`~slimjax.bounds.BoundStatus` per instance (``bound.status``)."""
        return self.bound.status

    @property
    def status_names(self) -> Any:
        """The bound's status per instance as words (``bound.status_names``)."""
        return self.bound.status_names

    @property
    def seconds(self) -> float:
        """Wall time of the bound for the batch, compilation apart (``bound.seconds``)."""
        return self.bound.seconds


# -- validation --------------------------------------------------------------------------------


def _as_batch(batch) -> tuple[Instance, bool]:
    if not isinstance(batch, Instance):
        raise ValueError(f"batch: expected a slimjax.Instance (one or a batch), got {type(batch).__name__}")
    if is_batched(batch):
        if batch.latency.shape[0] < 1:
            raise ValueError("batch: the batch axis is empty")
        return batch, False
    return jax.tree_util.tree_map(lambda a: a[None], batch), True


def _check_upper(upper, B: int):
    if upper is None:
        return np.full(B, np.inf)
    u = np.asarray(upper, np.float64).reshape(-1) if np.ndim(upper) else np.full(B, float(upper))
    if u.shape != (B,):
        raise ValueError(f"upper: expected {B} values (one per instance), got shape {np.shape(upper)}")
    if np.isnan(u).any():
        raise ValueError(f"upper: NaN at index {int(np.flatnonzero(np.isnan(u))[0])}")
    return u


def _check_placement(placement, batch: Instance):
    if placement is None:
        return None
    want = tuple(batch.latency.shape[:1] + batch.latency.shape[2:])
    x = np.asarray(placement)
    if x.shape != want and x.shape == want[1:] and want[0] == 1:
        x = x[None]
    if x.shape != want:
        raise ValueError(f"placement: expected shape {list(want)} (bool [B, N, L, E]), got {list(x.shape)}")
    return x.astype(bool)


def _check_call(aggregation, target_gap, merge) -> None:
    if aggregation not in ("max", "sum"):
        raise ValueError(f"aggregation: must be one of ('max', 'sum'), got {aggregation!r}")
    if target_gap is not None and (isinstance(target_gap, bool) or not isinstance(target_gap, (int, float))
                                   or not target_gap >= 0):
        raise ValueError(f"target_gap: must be a number >= 0 or None, got {target_gap!r}")
    if not isinstance(merge, bool):
        raise ValueError(f"merge: must be a bool, got {merge!r}")


# -- the objective in float64 (the one place J is evaluated here) -------------------------------


def objective64(batch: Instance, placement, aggregation: str = "max") -> np.ndarray:
    """J of every instance in float64 on the host (the value :func:`certify` certifies).

    Args:
      batch: a batch; placement: bool [B, N, L, E].

    Returns:
      float64 [B].
    """
    lat = np.asarray(batch.latency, np.float64)
    fb = np.asarray(batch.fallback, np.float64)
    x = np.asarray(placement).astype(bool)
    d = np.minimum(fb, np.where(x[:, None], lat, np.inf).min(axis=2))  # [B, U, L, E]
    pat = np.asarray(batch.patterns).astype(np.int64)
    B, U, L, M, K = pat.shape
    bi = np.arange(B)[:, None, None, None, None]
    ui = np.arange(U)[None, :, None, None, None]
    li = np.arange(L)[None, None, :, None, None]
    mem = d[bi, ui, li, pat]
    pl = mem.max(-1) if aggregation == "max" else mem.sum(-1)
    w = np.asarray(batch.weight, np.float64)
    tr = np.asarray(batch.traffic, np.float64)
    return (tr[:, :, None, None] * w * pl).sum(axis=(1, 2, 3))


def _trivial(batch: Instance, aggregation: str) -> np.ndarray:
    """J with every expert on every node: a valid (weak) bound."""
    B, N, L, E = batch.latency.shape[0], *batch.latency.shape[2:]
    return objective64(batch, np.ones((B, N, L, E), bool), aggregation)


# -- the data the bounds are computed from ------------------------------------------------------


class HostBatch(NamedTuple):
    """A batch as float64 NumPy arrays (patterns int64), with ``aggregation="sum"`` already turned
    into one-member patterns and identical patterns merged in float64 (so the bounds see exactly
    the instance's J: merging in float32 would round the summed weights)."""

    latency: np.ndarray
    fallback: np.ndarray
    size: np.ndarray
    capacity: np.ndarray
    patterns: np.ndarray
    weight: np.ndarray
    traffic: np.ndarray


def host_batch(batch: Instance, aggregation: str = "max", merge: bool = True) -> HostBatch:
    """The float64 host copy of a batch the bounds are built from (see :class:`HostBatch`)."""
    pat = np.asarray(batch.patterns).astype(np.int64)
    w = np.asarray(batch.weight, np.float64)
    if aggregation == "sum":
        pat, w = _threshold._sum_patterns(pat, w)
    E = batch.latency.shape[-1]
    M, K = pat.shape[-2:]
    Mp = min(M, math.comb(E + K - 1, K))
    if merge and Mp < M:
        pat, w = merge_patterns_host(pat, w, Mp)
    return HostBatch(np.asarray(batch.latency, np.float64), np.asarray(batch.fallback, np.float64),
                     np.asarray(batch.size, np.float64), np.asarray(batch.capacity, np.float64),
                     np.asarray(pat).astype(np.int64), np.asarray(w, np.float64),
                     np.asarray(batch.traffic, np.float64))


def expert_spread(host: HostBatch, rtol: float = 1e-6) -> np.ndarray:
    """bool [B]: some node serves some user at different latencies for different experts (or the
    fallbacks differ between experts). ``auto`` runs the threshold LP only on such instances (and
    where ``levels`` does not apply): on node-wise latencies the level bound was the tighter one on
    every instance measured, at a fraction of the time."""
    lat = host.latency
    fin = np.isfinite(lat)
    hi = np.where(fin, lat, -np.inf).max(axis=(3, 4))
    lo = np.where(fin, lat, np.inf).min(axis=(3, 4))
    node = (fin.any(axis=(3, 4)) & (hi - lo > rtol * np.abs(hi))).any(axis=(1, 2))
    fb = host.fallback
    fbs = (fb.max(axis=(2, 3)) - fb.min(axis=(2, 3)) > rtol * fb.max(axis=(2, 3))).any(axis=1)
    return node | fbs


# -- chunked execution under the memory budget ------------------------------------------------


class _Chunks:
    """Fixed-size chunks of the instances ``rows`` (the last one padded by repeating its last
    instance, so one program serves every chunk), sized to the memory budget from an estimate and
    shrunk when a program's XLA footprint turns out larger than the budget."""

    def __init__(self, rows: np.ndarray, estimate: float, budget: float):
        self.rows = np.asarray(rows, np.int64)
        self.budget = float(budget)
        n = len(self.rows)
        size = max(1, int(self.budget // max(estimate, 1.0)))
        self.size = _pow2_floor(min(size, _pow2_ceil(max(n, 1))))
        self.peak = 0

    def __iter__(self):
        lo = 0
        n = len(self.rows)
        while lo < n:
            size = min(self.size, _pow2_ceil(n - lo))
            part = self.rows[lo : lo + size]
            idx = np.concatenate([part, np.repeat(part[-1:], size - len(part))])
            yield part, idx
            lo += len(part)

    def record(self, clock: _compile.Clock, size: int) -> None:
        """A program of ``size`` instances ran with ``clock.peak_bytes``: shrink later chunks when
        it was over the budget."""
        self.peak = max(self.peak, clock.peak_bytes)
        if clock.peak_bytes > self.budget and size > 1:
            per = clock.peak_bytes / size
            self.size = min(self.size, _pow2_floor(max(1, int(self.budget // per))))


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


def _call(fn, static, args, clock: _compile.Clock):
    """:func:`slimjax._compile.call` with a clock of its own: (result, that program's clock)."""
    own = _compile.Clock()
    out = _compile.call(fn, static, args, own)
    clock.compile_seconds += own.compile_seconds
    clock.compiled += own.compiled
    clock.peak_bytes = max(clock.peak_bytes, own.peak_bytes)
    return out, own


def _targets(upper, target_gap, B):
    if target_gap is None:
        return np.full(B, np.inf)
    return np.where(np.isfinite(upper), upper / (1 + target_gap), np.inf)


def _dtype(dtype, batch):
    return jnp.dtype(dtype) if dtype is not None else batch.latency.dtype


# -- levels --------------------------------------------------------------------------------------


def _levels_bound(batch, host, aggregation, upper, target_gap, m: Levels, budget: float,
                  clock: _compile.Clock) -> Bound:
    """The level-decomposition bound (exact, non-iterative)."""
    t0 = time.perf_counter()
    c0 = clock.compile_seconds
    B = batch.latency.shape[0]
    data = _levels.build(host, "max", m.max_levels)
    dt = _dtype(m.dtype, batch)
    E = batch.latency.shape[-1]
    keys = ("masks", "w", "free", "elig", "cap", "s_hat")
    arrays = [np.asarray(data[k], dt if k == "w" else np.int32) for k in keys]
    est = _levels.bytes_per_instance(data, E, np.dtype(dt).itemsize)
    chunks = _Chunks(np.arange(B), est, budget)
    U, G = data["free"].shape[1:3]
    opt = np.empty((B, U, G))
    for part, idx in chunks:
        out, own = _call(_levels.LEVEL_PROGRAM, (E, int(data["qmax"])), tuple(jnp.asarray(a[idx]) for a in arrays),
                         clock)
        chunks.record(own, len(idx))
        opt[part] = np.asarray(out)[: len(part)]
    value = _levels.value64(data, opt, dt)
    value = np.maximum(value, _trivial(batch, aggregation))
    comp = clock.compile_seconds - c0
    secs = time.perf_counter() - t0 - comp
    status = np.where(value >= _targets(upper, target_gap, B), BoundStatus.TARGET, BoundStatus.SOLVED).astype(np.int8)
    return Bound(value, status, np.zeros(B, np.int64), np.full(B, np.nan), np.full(B, np.nan), secs, comp,
                 np.full(B, secs / B), "levels", chunks.peak)


# -- first-order (PDHG) methods ------------------------------------------------------------------


def _first_order(batch, host, form: str, m, aggregation, upper, target_gap, budget: float, clock: _compile.Clock,
                 start=None, skip=None, placement=None) -> Bound:
    """An LP bound by PDHG (``form``: "threshold" or "lp"), run only on the instances not in
    ``skip`` and not already at the target with ``start`` (a bound known from another method);
    ``placement`` (bool [B, N, L, E], a known placement) warm-starts the threshold LP."""
    mod = _FORMS[form]
    t0 = time.perf_counter()
    c0 = clock.compile_seconds
    B = batch.latency.shape[0]
    data64 = mod.build(host, "max")
    dt = _dtype(m.dtype, batch)
    tgt = _targets(upper, target_gap, B)
    known = np.full(B, np.inf) if target_gap is None else upper  # gap_rtol's reference (None: run on)
    start = np.full(B, -np.inf) if start is None else np.asarray(start, np.float64)
    done0 = np.zeros(B, bool) if skip is None else np.asarray(skip, bool).copy()
    done0 |= start >= tgt  # certified to the target by another bound: not iterated
    solver = pdhg.PDHG(mod.FORMULATION, int(m.check_every), int(m.patience), halpern=getattr(mod, "HALPERN", False),
                       omega_scale=float(getattr(mod, "OMEGA_SCALE", 1.0)))
    est = mod.bytes_per_instance(data64, np.dtype(dt).itemsize)
    chunks = _Chunks(np.flatnonzero(~done0), est, budget)
    dual = np.full(B, -np.inf)
    status = np.full(B, BoundStatus.TARGET, np.int8)  # frozen from the start
    iters = np.zeros(B, np.int64)
    err, gap = np.full(B, np.nan), np.full(B, np.nan)
    t_start = time.perf_counter()  # the time limit counts the iterations only
    scalars = (jnp.asarray(m.rtol, dt), jnp.asarray(m.stall_rtol, dt), jnp.int32(m.max_iters))
    warm = placement is not None and hasattr(mod, "start_from")
    coarse = None  # the warm start from a coarse LP (ThresholdLP.coarse_patterns)
    keep = getattr(m, "coarse_patterns", None)
    if warm and keep is not None and host.weight.shape[-1] >= COARSE_MIN_RATIO * keep:
        chost, top, scale = mod.coarse_batch(host, int(keep))
        coarse = (mod.build(chost, "max"), top, scale)
    for part, idx in chunks:
        n = len(part)
        if m.time_limit is not None and time.perf_counter() - t_start >= m.time_limit:
            status[part] = BoundStatus.TIME_LIMIT  # never started: the start / trivial bound
            continue
        one = {k: v[idx] for k, v in data64.items()}
        data = mod.to_device(one, dt)
        ctl = pdhg.Controls(jnp.asarray(tgt[idx], dt), *scalars, upper=jnp.asarray(known[idx], dt),
                            gap_rtol=jnp.asarray(m.gap_rtol, dt))
        x = jnp.asarray(placement[idx], dt) if warm else None
        if coarse is not None:
            c64, top, scale = coarse
            cdata = mod.to_device({k: v[idx] for k, v in c64.items()}, dt)
            cctl = ctl._replace(max_iters=jnp.int32(m.coarse_iters))
            cst, own = _call(pdhg.INIT_PROGRAM, (solver, mod.start_from),
                             (cdata, jnp.full(len(idx), -jnp.inf, dt), x), clock)
            while True:
                cst, own = _call(pdhg.RUN_PROGRAM, (solver, CHECKS_PER_RUN), (cdata, cst, cctl), clock)
                chunks.record(own, len(idx))
                if not ((np.asarray(cst.status) == pdhg.STATUS_RUNNING)
                        & (np.asarray(cst.iters) < m.coarse_iters)).any():
                    break
            s0 = mod.coarse_start(data, one["act"], cst.v[0], cst.y[0], cst.y[1], top[idx], scale[idx])
            del cdata, cst
            st, own = _call(pdhg.INIT_PROGRAM, (solver, mod.given_start), (data, jnp.asarray(start[idx], dt), s0),
                            clock)
        else:
            st, own = _call(pdhg.INIT_PROGRAM, (solver, mod.start_from if warm else None),
                            (data, jnp.asarray(start[idx], dt), x), clock)
        chunks.record(own, len(idx))
        while True:
            st, own = _call(pdhg.RUN_PROGRAM, (solver, CHECKS_PER_RUN), (data, st, ctl), clock)
            chunks.record(own, len(idx))
            s = np.asarray(st.status)[:n]
            running = (s == pdhg.STATUS_RUNNING) & (np.asarray(st.iters)[:n] < m.max_iters)
            if not running.any():
                break
            if m.time_limit is not None and time.perf_counter() - t_start >= m.time_limit:
                s = np.where(running, BoundStatus.TIME_LIMIT, s)
                break
        ys = jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], st.best_y)
        dual[part] = mod.dual_value64({k: v[part] for k, v in data64.items()}, ys)
        status[part] = s
        iters[part] = np.asarray(st.iters)[:n]
        err[part] = np.asarray(st.err, np.float64)[:n]
        gap[part] = np.asarray(st.gap, np.float64)[:n]
    value = np.maximum(np.maximum(dual, _trivial(batch, aggregation)), start)  # all valid; keep the largest
    comp = clock.compile_seconds - c0
    seconds = time.perf_counter() - t0 - comp
    return Bound(value, status, iters, err, gap, seconds, comp, np.full(B, seconds / B), form, chunks.peak)


# -- HiGHS references ----------------------------------------------------------------------------


def _highs_bound(batch, m, aggregation) -> Bound:
    from slimjax._highs import highspy

    highspy()
    t0 = time.perf_counter()
    B = batch.latency.shape[0]
    triv = _trivial(batch, aggregation)
    vals, status, secs = np.empty(B), np.empty(B, np.int8), np.empty(B)
    host = host_batch(batch, aggregation)
    thr = isinstance(m, ThresholdHighs)
    data64 = (_threshold if thr else _assignment).build(host, "max")
    for b in range(B):  # HiGHS solves one model at a time
        t1 = time.perf_counter()
        if thr:
            v, s, _ = _highs_lp.threshold_highs_one(data64, b, m.time_limit, m.threads)
        else:
            v, s = _highs_lp.assignment_highs_one(data64, b, m.time_limit, m.threads)
        vals[b], status[b] = max(v, triv[b]), s
        secs[b] = time.perf_counter() - t1
    seconds = time.perf_counter() - t0
    return Bound(vals, status, np.zeros(B, np.int64), np.full(B, np.nan), np.full(B, np.nan), seconds, 0.0, secs,
                 m.name)


# -- public functions ----------------------------------------------------------------------------


def lower_bound(
    batch: Instance,
    method: str | BoundMethod = "auto",
    *,
    aggregation: str = "max",
    upper=None,
    target_gap: float | None = None,
    merge: bool = True,
    memory_budget_mb: float | str = "auto",
    placement=None,
    **options,
) -> Bound:
    """Certified lower bounds on the optimal J of every instance of a batch.

    The methods (objects of :mod:`slimjax.bounds`; the names are sugar):

    - :class:`~slimjax.bounds.Auto` (``"auto"``, default): ``levels`` where it applies (E ≤ 16),
      raised by ``threshold`` on the instances whose node latencies differ between experts and
      that ``levels`` did not already certify to ``target_gap``; ``threshold`` alone for larger E.
    - :class:`~slimjax.bounds.Levels` (``"levels"``): the level decomposition, an exact knapsack
      per latency level over all 2^E expert sets of a layer (E ≤ 16).
    - :class:`~slimjax.bounds.ThresholdLP` (``"threshold"``): the threshold formulation of the
      pattern max with whole-expert storage rows, by restarted PDHG in JAX; the value is its
      Lagrangian dual with the per-node 0/1 knapsacks solved exactly, in float64.
    - :class:`~slimjax.bounds.AssignmentLP` (``"lp"``): the MILP's LP relaxation by the same PDHG.
    - :class:`~slimjax.bounds.ThresholdHighs` (``"threshold-highs"``), :class:`~slimjax.bounds.HighsLP`
      (``"highs"``): the same two LPs on HiGHS, one instance at a time, valued at HiGHS's duals.
    - :class:`~slimjax.bounds.Trivial` (``"trivial"``): J with every expert on every node.

    Args:
      batch: an Instance or a batch (leading axis B).
      method: a bound method object, or its name (:data:`METHODS`).
      aggregation: "max" or "sum".
      upper: optional float [B], known objective values (e.g. J of a solution); with
        ``target_gap`` an instance stops once its bound reaches ``upper / (1 + target_gap)``, and
        the PDHG methods also stop once a feasible LP point shows that the bound cannot rise by more
        than ``gap_rtol`` (a method option, default 0.05) of its gap to ``upper``.
      target_gap: relative gap at which to stop (None: never stop on the gap).
      merge: merge identical patterns first (J unchanged; smaller LPs).
      memory_budget_mb: working memory of one compiled program in MB, or ``"auto"`` (as
        :func:`slimjax.solve_batch`); the batch runs in chunks that fit it.
      placement: optional bool [B, N, L, E], a known placement (:func:`certify` passes the one
        it certifies): the threshold LP starts from it (its z, and the weights on the member rows
        that bind at it) instead of from nothing; on LPs with many patterns per layer it first
        solves a coarse LP of the heaviest patterns from it and starts from that
        (``ThresholdLP.coarse_patterns``). The value is valid either way.
      **options: with a method name, its options (``lower_bound(b, "levels", max_levels=16)`` is
        ``lower_bound(b, Levels(max_levels=16))``); the options of the 1.x signature that do not
        apply to the named method are ignored, as they were. With an object: options replaced
        on it (each must be one of its fields).

    Returns:
      :class:`Bound` (per-instance value, integer status, iterations; the time taken apart from
      compilation).

    Raises:
      ValueError: an unknown method or option, a bad option value or a non-Instance ``batch``.

    Examples:
      >>> import jax, slimjax
      >>> from slimjax.bounds import Levels, lower_bound
      >>> batch = slimjax.generate.instances(jax.random.key(0), 4, model="mixtral_8x7b")  # doctest: +SKIP
      >>> lower_bound(batch, Levels(max_levels=16)).value  # doctest: +SKIP
    """
    m = as_method(method, options)
    _check_call(aggregation, target_gap, merge)
    budget = memory_budget_bytes(memory_budget_mb)
    batch, single = _as_batch(batch)
    B = batch.latency.shape[0]
    up = _check_upper(upper, B)
    x0 = _check_placement(placement, batch)
    clock = _compile.Clock()
    E = batch.latency.shape[-1]
    if isinstance(m, (Levels, Auto, ThresholdLP, AssignmentLP)):
        host = host_batch(batch, aggregation, merge)
    if isinstance(m, Levels) or (isinstance(m, Auto) and E <= _levels.LEVELS_MAX_E):
        lv = _levels_bound(batch, host, aggregation, up, target_gap, m.levels() if isinstance(m, Auto) else m,
                           budget, clock)
        res = lv
        if isinstance(m, Auto):
            need = expert_spread(host) & (lv.status != BoundStatus.TARGET)
            if need.any():
                th = _first_order(batch, host, "threshold", m.threshold(), aggregation, up, target_gap, budget, clock,
                                  start=lv.value, skip=~need, placement=x0)
                res = th._replace(status=np.where(need, th.status, lv.status).astype(np.int8),
                                  iterations=np.where(need, th.iterations, 0),
                                  seconds=th.seconds + lv.seconds,
                                  compile_seconds=th.compile_seconds + lv.compile_seconds,
                                  instance_seconds=th.instance_seconds + lv.instance_seconds,
                                  peak_bytes=max(th.peak_bytes, lv.peak_bytes))
            res = res._replace(method=m.name)
    elif isinstance(m, Auto):
        res = _first_order(batch, host, "threshold", m.threshold(), aggregation, up, target_gap, budget,
                           clock, placement=x0)._replace(method=m.name)
    elif isinstance(m, (ThresholdLP, AssignmentLP)):
        res = _first_order(batch, host, m.name, m, aggregation, up, target_gap, budget, clock, placement=x0)
    elif isinstance(m, (HighsLP, ThresholdHighs)):
        res = _highs_bound(batch, m, aggregation)
    else:
        t0 = time.perf_counter()
        v = _trivial(batch, aggregation)
        s = time.perf_counter() - t0
        res = Bound(v, np.full(B, BoundStatus.EXACT, np.int8), np.zeros(B, np.int64), np.full(B, np.nan),
                    np.full(B, np.nan), s, 0.0, np.full(B, s / B), m.name)
    if single:
        res = _squeeze(res)
    return res


#: relative slack of certify's "J below the bound" check for float64 J: the float64 rounding of the
#: two evaluations (J over M·K terms, the bound's own margin is already subtracted), with room
_F64_SLACK = 1e-12

_PER_INSTANCE = ("value", "status", "iterations", "lp_error", "lp_gap", "instance_seconds")


def _squeeze(b: Bound) -> Bound:
    return b._replace(**{k: np.asarray(getattr(b, k)).reshape(-1)[0] for k in _PER_INSTANCE})


def _unsqueeze(b: Bound) -> Bound:
    return b._replace(**{k: np.atleast_1d(getattr(b, k)) for k in _PER_INSTANCE})


def _storage_check(batch: Instance, x: np.ndarray) -> None:
    """The storage contract (:mod:`slimjax._storage`, as :func:`slimjax.feasible`)."""
    used = storage.used(batch.size, x)
    cap = np.asarray(batch.capacity, np.float64)
    bad = ~(used <= storage.limit(batch.size, batch.capacity))
    if bad.any():
        b, n = np.argwhere(bad)[0]
        raise ValueError(f"placement: infeasible at instance {b}, node {n}: uses {used[b, n]:.6g} > capacity "
                         f"{cap[b, n]:.6g}; a lower bound certifies feasible placements only")


def certify(batch: Instance, solution: Any, method: str | BoundMethod = "auto", *, aggregation: str = "max",
            target_gap: float | None = 1e-5, bound: Bound | None = None, **options) -> Certificate:
    """Certified optimality gap of placements (or objective values): ``J / bound − 1`` per instance.

    Args:
      batch: an Instance or a batch.
      solution: an object with a ``placement`` attribute (a solver's Solution), a placement
        bool [B, N, L, E], or objective values float [B] (taken as given).
      method: the bound method, an object or its name (:func:`lower_bound`).
      aggregation: "max" or "sum".
      target_gap: stop each instance once its gap is certified below this, or (PDHG methods) once
        the LP cannot shrink it by more than the method's ``gap_rtol`` (default 5 %) of itself
        (None: run to convergence); the certified gap is then at most about this.
      bound: a precomputed :class:`Bound` of ``batch`` (skips the bound computation).
      **options: passed to :func:`lower_bound` (``merge``, ``memory_budget_mb``, a named method's options).

    Returns:
      :class:`Certificate` (gap, objective, bound). The gap is an upper bound on the true relative
      gap ``J / J* − 1``.

    Raises:
      ValueError: a placement of the wrong shape or one that violates the storage limits, or
        objective values below the certified bound (not the J of any feasible placement).
    """
    b, single = _as_batch(batch)
    B = b.latency.shape[0]
    placement = getattr(solution, "placement", solution)
    arr = np.asarray(placement)
    x = None
    want = (B,) + tuple(b.latency.shape[2:])
    if arr.ndim in (3, 4) and arr.shape[-3:] == want[1:]:
        x = arr.reshape(want)
        if not (arr.dtype == bool or np.isin(arr, (0, 1)).all()):
            raise ValueError("placement: entries must be 0/1 or bool")
        _storage_check(b, x.astype(bool))
        obj = objective64(b, x, aggregation)
        tol = _F64_SLACK  # J and the bound are both float64 evaluations
    elif arr.ndim <= 1 and arr.size == B:
        obj = arr.astype(np.float64).reshape(B)
        # values computed in float32 (a solver's J) carry float32 rounding; float64 values float64's
        tol = _F64_SLACK if arr.dtype == np.float64 else 1e-6
        if not np.isfinite(obj).all():
            raise ValueError(f"objective: values must be finite, got {obj[~np.isfinite(obj)][0]}")
    else:
        raise ValueError(f"solution: expected a placement [B, N, L, E] = {list(want)}, objective values [{B}] "
                         f"or an object with .placement; got shape {arr.shape}")
    if bound is None:
        if x is not None:
            options.setdefault("placement", x)
        bound = lower_bound(b, method, aggregation=aggregation, upper=obj, target_gap=target_gap, **options)
        if single:
            bound = _unsqueeze(bound)
    lb = np.asarray(bound.value, np.float64).reshape(-1)
    if lb.shape != (B,):
        raise ValueError(f"bound: expected {B} values, got shape {np.shape(bound.value)}")
    scale = np.maximum(np.abs(obj), np.abs(lb))
    below = obj < lb - tol * scale
    if below.any():
        i = int(np.flatnonzero(below)[0])
        raise ValueError(f"objective: instance {i} has J = {obj[i]:.9g} below its certified lower bound "
                         f"{lb[i]:.9g}; it is not the J of a feasible placement of this instance")
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(lb > 0, obj / lb - 1, np.where(obj <= 0, 0.0, np.inf))
    gap = np.maximum(gap, 0.0)
    if single:
        return Certificate(gap[0], obj[0], _squeeze(_unsqueeze(bound)))
    return Certificate(gap, obj, bound)
