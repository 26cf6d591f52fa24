"""Restarted, preconditioned primal-dual hybrid gradient (PDHG) for batches of structured LPs.

Every LP has the form

    min  c·v   s.t.  K v ≤ q,   0 ≤ v ≤ hi        (hi finite)

with ``v`` and the dual ``y ≥ 0`` pytrees of arrays and ``K`` given as four functions of a
formulation's data (``K v``, ``Kᵀ y`` and the same with absolute coefficients, for the
preconditioner). Because every box is finite, the Lagrangian

    g(y) = −q·y + Σ_j hi_j · min(0, (c + Kᵀ y)_j)

is a lower bound on the LP optimum for **every** ``y ≥ 0`` (weak duality). The solver never
reports a primal value: the caller evaluates a bound at the dual iterates it returns.

The method is PDHG (Chambolle & Pock 2011) with the diagonal preconditioner of Pock & Chambolle
(2011, α = 1: ``τ_j = 1/Σ_i |K_ij|``, ``σ_i = 1/Σ_j |K_ij|``, which makes any step ≤ 1 stable), a
primal weight ``ω`` (``τ/ω``, ``σ·ω``) updated at restarts, and adaptive restarts on a KKT error
as in PDLP (Applegate et al. 2021). Two schemes (``PDHG.halpern``): the reflected restarted
Halpern scheme of cuPDLPx (Lu & Yang 2024, 2025) — with ``T`` one PDHG step and ``z⁰`` the last
restart point, ``z^{k+1} = (k+1)/(k+2)·(2·T(z^k) − z^k) + 1/(k+2)·z⁰``, restart candidate
``T(z^k)``, no averages — used by the threshold LP (on the real-trace deepseek_v2_lite instance
1,792 iterations to a sufficient certificate against 3,712 for the averaged scheme; on a 4-layer
slice 2,176 against more than 3,840 to a 1e-5 LP gap); and PDLP's plain steps with restarts to
the average or the current iterate, used by the assignment LP (where Halpern hit the iteration
cap on a test instance). Iterations run in
fixed-size chunks of ``check_every`` steps; between chunks each instance checks its error,
restarts, records its best dual point by the formulation's ``bound`` function, and stops (its
state is frozen) once converged or once it reaches the caller's target. Instances never interact,
so a batch gives the same iterates as one instance at a time.

The solver is an object with explicit state, step and termination (the shape of optimistix's
iterative solvers): ``solver = PDHG(formulation, check_every, patience)``;
``state = solver.init(data, bound0)``; ``state = solver.step(data, state, controls)`` (one chunk
of ``check_every`` iterations and the check, for the whole batch, frozen instances unchanged);
``solver.terminate(state, controls)`` (bool [B]: the instance stopped); ``solver.run`` loops
``step`` until every instance terminated or ``n_checks`` steps were taken (``lax.while_loop``).
The caller (:mod:`slimjax.bounds._api`) runs it through the one compile cache
(:func:`slimjax._compile.call`) and handles the time limit between runs.

References:
  Chambolle, A. and Pock, T. (2011). A first-order primal-dual algorithm for convex problems with
  applications to imaging. J. Math. Imaging Vis. 40, 120–145.
  Pock, T. and Chambolle, A. (2011). Diagonal preconditioning for first order primal-dual
  algorithms in convex optimization. ICCV.
  Applegate, D. et al. (2021). Practical large-scale linear programming using primal-dual hybrid
  gradient. NeurIPS.
  Lu, H. and Yang, J. (2024). Restarted Halpern PDHG for linear programming. arXiv:2407.16144.
  Lu, H., Peng, Z. and Yang, J. (2025). cuPDLPx: a further enhanced GPU-based first-order solver for
  linear programming. arXiv:2507.14051.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from slimjax.bounds._methods import BoundStatus

__all__ = ["Formulation", "PDHG", "PDHGState", "Controls", "lagrangian", "STATUS_RUNNING"]

PyTree = Any

#: an instance still iterating (when the iterations stop it is at its iteration limit)
STATUS_RUNNING = int(BoundStatus.ITERATION_LIMIT)
STATUS_OPTIMAL, STATUS_CONVERGED = int(BoundStatus.OPTIMAL), int(BoundStatus.CONVERGED)
STATUS_TARGET, STATUS_DOMINATED = int(BoundStatus.TARGET), int(BoundStatus.DOMINATED)
STATUS_SUFFICIENT = int(BoundStatus.SUFFICIENT)
OMEGA_MIN, OMEGA_MAX = 1e-8, 1e8


class Formulation(NamedTuple):
    """The operators of one LP family (module-level functions, so the tuple is hashable/static).

    Each function takes one instance's data (no batch axis):
      K(data, v) -> rows, KT(data, y) -> cols, Kabs(data, v), KTabs(data, y) (absolute coefficients),
      cost(data) -> c (v-shaped), rhs(data) -> q (y-shaped), upper(data) -> hi (v-shaped),
      bound(data, y, kty) -> a valid lower bound at y ≥ 0 given Kᵀy (scalar; may improve on g(y)),
      primal(data, v) -> the objective (with the same constants as ``bound``) of a feasible point
        repaired from v: an upper bound on the LP optimum, so ``primal − bound`` is a true gap,
      initial_primal(data) -> v0, initial_dual(data) -> y0 (the starts).
    """

    K: Callable
    KT: Callable
    Kabs: Callable
    KTabs: Callable
    cost: Callable
    rhs: Callable
    upper: Callable
    bound: Callable
    primal: Callable
    initial_primal: Callable
    initial_dual: Callable


class Controls(NamedTuple):
    """The traced stopping parameters of a run (one program serves every value)."""

    target: Float[Array, "B"]  # stop an instance once its bound reaches this
    rtol: Float[Array, ""]
    stall_rtol: Float[Array, ""]
    max_iters: Int[Array, ""]
    #: a known objective per instance (inf: none) and the fraction ``gap_rtol``: stop once a feasible
    #: LP point shows that the bound cannot rise by more than ``gap_rtol·(upper − bound)`` (the
    #: certified gap to ``upper`` can then shrink by at most that fraction of itself)
    upper: Any = float("inf")
    gap_rtol: Any = 0.0


class PDHGState(NamedTuple):
    """Batched solver state (leading axis B on every leaf; v/y leaves are pytrees)."""

    v: PyTree
    y: PyTree
    tau: PyTree  # diagonal primal steps (v-shaped)
    sigma: PyTree  # diagonal dual steps (y-shaped)
    kty: PyTree  # Kᵀ y of the current y
    v_restart: PyTree  # the Halpern anchor z⁰ (the last restart point)
    y_restart: PyTree
    kty_restart: PyTree  # Kᵀ y of the anchor
    v_sum: PyTree  # the averaged scheme's running sums (empty for Halpern)
    y_sum: PyTree
    n_avg: Int[Array, "B"]
    err_restart: Float[Array, "B"]
    err_prev: Float[Array, "B"]
    omega: Float[Array, "B"]
    since_restart: Int[Array, "B"]
    iters: Int[Array, "B"]
    best_bound: Float[Array, "B"]
    best_y: PyTree
    err: Float[Array, "B"]
    gap: Float[Array, "B"]  # (primal(repaired) − best bound) / |primal|: a true relative LP gap
    stall_ref: Float[Array, "B"]
    stall_count: Int[Array, "B"]
    status: Int[Array, "B"]


def _tmap(f, *trees):
    return jax.tree_util.tree_map(f, *trees)


def _dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _sq(a):
    return _dot(a, a)


def lagrangian(form: Formulation, data, y, kty=None):
    """g(y) = −q·y + Σ hi·min(0, c + Kᵀy) for y ≥ 0 (a lower bound on the LP, in the data's dtype)."""
    if kty is None:
        kty = form.KT(data, y)
    red = _tmap(jnp.add, form.cost(data), kty)
    lo = sum(jnp.sum(h * jnp.minimum(r, 0)) for h, r in
             zip(jax.tree_util.tree_leaves(form.upper(data)), jax.tree_util.tree_leaves(red)))
    return lo - _dot(form.rhs(data), y)


def _steps(form: Formulation, data):
    """Diagonal preconditioners (τ for v, σ for y): inverse absolute column / row sums."""
    ones_v = _tmap(jnp.ones_like, form.upper(data))
    ones_y = _tmap(jnp.ones_like, form.rhs(data))
    rows = form.Kabs(data, ones_v)
    cols = form.KTabs(data, ones_y)
    sigma = _tmap(lambda r: jnp.where(r > 0, 1.0 / jnp.where(r > 0, r, 1), 0.0), rows)
    tau = _tmap(lambda r: 1.0 / jnp.where(r > 0, r, 1), cols)
    return tau, sigma


def _kkt(form: Formulation, data, v, y, kty):
    """Relative KKT error of (v, y): max(primal infeasibility, duality gap), both normalized."""
    q = form.rhs(data)
    kv = form.K(data, v)
    pres = jnp.sqrt(_sq(_tmap(lambda a, b: jnp.maximum(a - b, 0), kv, q)))
    pobj = _dot(form.cost(data), v)
    dobj = lagrangian(form, data, y, kty)
    e_p = pres / (1 + jnp.sqrt(_sq(q)))
    e_g = jnp.abs(pobj - dobj) / (1 + jnp.abs(pobj) + jnp.abs(dobj))
    return jnp.maximum(e_p, e_g), pobj, e_p


def _select(done, old, new):
    return _tmap(lambda a, b: jnp.where(done, a, b), old, new)


#: the reflection of the Halpern iteration (1: ``2T − I``, the reflected scheme of cuPDLPx)
REFLECTION = 1.0


def _pdhg_step(form: Formulation, data, tp, sp, v, y, kty) -> tuple:
    """One preconditioned PDHG step ``T``: ``(T v, T y, Kᵀ T y)`` (feasible: ``0 ≤ T v ≤ hi``, ``T y ≥ 0``)."""
    c, q, hi = form.cost(data), form.rhs(data), form.upper(data)
    v1 = _tmap(lambda a, t, cc, g, h: jnp.clip(a - t * (cc + g), 0, h), v, tp, c, kty, hi)
    ext = _tmap(lambda a, b: 2 * a - b, v1, v)
    kext = form.K(data, ext)
    y1 = _tmap(lambda a, s, kk, qq: jnp.maximum(a + s * (kk - qq), 0), y, sp, kext, q)
    return v1, y1, form.KT(data, y1)


def _iterate_avg(form: Formulation, check_every: int, data, st: PDHGState) -> tuple:
    """``check_every`` plain preconditioned PDHG steps from ``st`` (the averaged scheme of PDLP):
    ``(v, y, Kᵀy, Σv, Σy)`` after them."""
    dt = st.omega.dtype
    eta = jnp.asarray(0.999, dt)
    tp = _tmap(lambda t: eta * t / st.omega, st.tau)
    sp = _tmap(lambda s: eta * s * st.omega, st.sigma)

    def step(_, carry):
        v, y, kty, vs, ys = carry
        v1, y1, kty1 = _pdhg_step(form, data, tp, sp, v, y, kty)
        return v1, y1, kty1, _tmap(jnp.add, vs, v1), _tmap(jnp.add, ys, y1)

    return lax.fori_loop(0, check_every, step, (st.v, st.y, st.kty, st.v_sum, st.y_sum))


def _iterate(form: Formulation, check_every: int, data, st: PDHGState) -> tuple:
    """``check_every`` reflected Halpern steps of preconditioned PDHG from ``st`` (anchored at the
    restart point), then one plain step: ``((v, y, Kᵀy), (T v, T y, Kᵀ T y))``, the Halpern iterate
    after them and its PDHG step ``T``, the restart candidate. Kᵀ of the Halpern iterate is the
    same combination of the Kᵀ's (linearity), so each step applies K and Kᵀ once."""
    dt = st.omega.dtype
    eta = jnp.asarray(0.999, dt)
    rho = jnp.asarray(REFLECTION, dt)
    tp = _tmap(lambda t: eta * t / st.omega, st.tau)
    sp = _tmap(lambda s: eta * s * st.omega, st.sigma)
    anchor = (st.v_restart, st.y_restart, st.kty_restart)

    def step(j, z):
        t = _pdhg_step(form, data, tp, sp, *z)
        k = (st.since_restart + j).astype(dt)
        w = (k + 1) / (k + 2)
        hal = lambda a, a1, a0: w * ((1 + rho) * a1 - rho * a) + (1 - w) * a0  # noqa: E731
        return tuple(_tmap(hal, a, a1, a0) for a, a1, a0 in zip(z, t, anchor))

    z = lax.fori_loop(0, check_every, step, (st.v, st.y, st.kty))
    return z, _pdhg_step(form, data, tp, sp, *z)


def _assess_pair(form: Formulation, data, v, y, va, ya) -> tuple:
    """(KKT error [2], bound [2], Kᵀy [2, ...]) of two candidates (index 0 and 1)."""

    def assess(vv, yy):  # (KKT error, bound, Kᵀy) of one candidate
        kk = form.KT(data, yy)
        e, _, _ = _kkt(form, data, vv, yy, kk)
        return e, form.bound(data, yy, kk), kk

    # one after the other (a vmap over the pair ran the threshold LP's check ~2x slower on XLA CPU)
    return _tmap(lambda a, b: jnp.stack([a, b]), assess(v, y), assess(va, ya))


def _restart_decision(err_c, since, iters, st: PDHGState):
    """Restart (PDLP): error <= 0.2x the last restart's, or <= 0.8x and rising, or a long run since it."""
    return ((err_c <= 0.2 * st.err_restart)
            | ((err_c <= 0.8 * st.err_restart) & (err_c > st.err_prev))
            | (since >= 0.36 * iters))


def _primal_weight(restart, vc, yc, st: PDHGState):
    """The primal weight ω after the check (updated only at a restart)."""
    # Primal weight (PDLP): ω ← exp(½ log(Δy/Δv) + ½ log ω) at a restart that moved both.
    dv = jnp.sqrt(_sq(_tmap(jnp.subtract, vc, st.v_restart)))
    dy = jnp.sqrt(_sq(_tmap(jnp.subtract, yc, st.y_restart)))
    tiny = jnp.finfo(st.omega.dtype).tiny
    ok = restart & (dv > 1e-10) & (dy > 1e-10)
    omega = jnp.where(ok, jnp.exp(0.5 * jnp.log(jnp.maximum(dy, tiny) / jnp.maximum(dv, tiny))
                                  + 0.5 * jnp.log(st.omega)), st.omega)
    return jnp.clip(omega, OMEGA_MIN, OMEGA_MAX)


def _best_dual(bnds, y, ya, st: PDHGState):
    """The best dual point so far by the formulation's bound (valid at any y ≥ 0): (bound, y)."""
    better_avg = bnds[1] > bnds[0]
    b_new = jnp.maximum(bnds[0], bnds[1])
    y_new = _select(better_avg, ya, y)
    improve = b_new > st.best_bound
    best_bound = jnp.where(improve, b_new, st.best_bound)
    best_y = _select(improve, y_new, st.best_y)
    return best_bound, best_y


def _stop_status(form: Formulation, data, patience: int, rtol, stall_rtol, target, vc, err_c, best_bound,
                 st: PDHGState, upper=float("inf"), gap_rtol=0.0):
    """The stopping check: ``(status, gap, stall_ref, stall_count)`` of the instance."""
    # Stall: the best bound rose by less than stall_rtol (relative) over the last `patience` checks.
    moved = best_bound > st.stall_ref + stall_rtol * jnp.maximum(jnp.abs(st.stall_ref), 1e-30)
    stall_ref = jnp.where(moved, best_bound, st.stall_ref)
    stall_count = jnp.where(moved, 0, st.stall_count + 1)
    # A stall counts only once the LP's relative KKT error is ≤ rtol: before that the bound can pause
    # for a while and then move again after a restart.
    status = jnp.where((stall_count >= patience) & (err_c <= rtol), STATUS_CONVERGED, STATUS_RUNNING)
    # Optimal: the bound is within rtol of a feasible point's objective (a true LP gap).
    # Dominated: a feasible point of this LP is already below the best bound known (e.g. one from
    # another method passed as the start), so this LP cannot give a better bound.
    upper_c = form.primal(data, vc)
    gap_c = (upper_c - best_bound) / jnp.maximum(jnp.abs(upper_c), jnp.finfo(upper_c.dtype).tiny)
    dominated = upper_c < best_bound
    # Sufficient: the LP optimum (≤ upper_c) is so close to the bound that running on could shrink
    # the certified gap to the known objective by at most gap_rtol of itself.
    sufficient = jnp.isfinite(upper) & (upper_c - best_bound <= gap_rtol * (upper - best_bound))
    status = jnp.where(sufficient, STATUS_SUFFICIENT, status)
    status = jnp.where(gap_c <= rtol, STATUS_OPTIMAL, status)
    status = jnp.where(dominated, STATUS_DOMINATED, status)
    status = jnp.where(best_bound >= target, STATUS_TARGET, status)
    return status, gap_c, stall_ref, stall_count


def _chunk_one(form: Formulation, check_every: int, patience: int, halpern: bool, rtol, stall_rtol, gap_rtol, target,
               upper, total_iters, data, st: PDHGState) -> PDHGState:
    """``check_every`` PDHG steps of one instance, then the restart / bound / stopping check."""
    if halpern:
        (v, y, kty), (vc, yc, ktyc) = _iterate(form, check_every, data, st)
        # the candidate is the last PDHG step's output T(z) (feasible); the Halpern iterate z itself
        # (whose y may have negative entries) is only assessed for the bound at its projection y⁺ ≥ 0
        y_pos = _tmap(lambda a: jnp.maximum(a, 0), y)
        errs, bnds, _ = _assess_pair(form, data, v, y_pos, vc, yc)
        err_c = errs[1]
        vs, ys, n = st.v_sum, st.y_sum, st.n_avg
    else:
        v, y, kty, vs, ys = _iterate_avg(form, check_every, data, st)
        n = st.n_avg + check_every
        va = _tmap(lambda a: a / n, vs)
        ya = _tmap(lambda a: a / n, ys)
        errs, bnds, ktys = _assess_pair(form, data, v, y, va, ya)
        # the restart candidate: the average or the current iterate, whichever has the smaller KKT error
        use_avg = errs[1] < errs[0]
        err_c = jnp.where(use_avg, errs[1], errs[0])
        vc = _select(use_avg, va, v)
        yc = _select(use_avg, ya, y)
        ktyc = _select(use_avg, _tmap(lambda a: a[1], ktys), kty)
        y_pos = y
    since = st.since_restart + check_every
    iters = st.iters + check_every
    restart = _restart_decision(err_c, since, iters, st)
    omega = _primal_weight(restart, vc, yc, st)
    best_bound, best_y = _best_dual(bnds, y_pos, yc, st)
    status, gap_c, stall_ref, stall_count = _stop_status(form, data, patience, rtol, stall_rtol, target, vc, err_c,
                                                         best_bound, st, upper, gap_rtol)
    zero = jnp.zeros((), jnp.int32)
    new = PDHGState(
        v=_select(restart, vc, v),
        y=_select(restart, yc, y),
        tau=st.tau,
        sigma=st.sigma,
        kty=_select(restart, ktyc, kty),
        v_restart=_select(restart, vc, st.v_restart),
        y_restart=_select(restart, yc, st.y_restart),
        kty_restart=_select(restart, ktyc, st.kty_restart),
        v_sum=_select(restart, _tmap(jnp.zeros_like, vs), vs),
        y_sum=_select(restart, _tmap(jnp.zeros_like, ys), ys),
        n_avg=jnp.where(restart, zero, n),
        err_restart=jnp.where(restart, err_c, st.err_restart),
        err_prev=err_c,
        omega=omega,
        since_restart=jnp.where(restart, zero, since),
        iters=iters,
        best_bound=best_bound,
        best_y=best_y,
        err=err_c,
        gap=gap_c,
        stall_ref=stall_ref,
        stall_count=stall_count,
        status=status,
    )
    return new


def _init_one(form: Formulation, halpern: bool, omega_scale: float, d, b0, start=None):
    """The state of one instance from ``start`` = (v0, y0) or the formulation's starts (y0
    projected onto y ≥ 0); the initial primal weight is ``omega_scale`` times PDLP's."""
    v, y = (form.initial_primal(d), form.initial_dual(d)) if start is None else start
    y = _tmap(lambda a: jnp.maximum(a, 0), y)
    kty = form.KT(d, y)
    err, _, _ = _kkt(form, d, v, y, kty)
    b = jnp.maximum(form.bound(d, y, kty), b0)
    zero = jnp.zeros((), jnp.int32)
    # PDLP's initial primal weight ‖c‖/‖q‖ (1 when either is 0).
    nc, nq = jnp.sqrt(_sq(form.cost(d))), jnp.sqrt(_sq(form.rhs(d)))
    omega = jnp.where((nc > 0) & (nq > 0), nc / jnp.where(nq > 0, nq, 1), 1.0) * omega_scale
    omega = jnp.clip(omega, OMEGA_MIN, OMEGA_MAX).astype(err.dtype)
    tau, sigma = _steps(form, d)
    sums = ((), ()) if halpern else (_tmap(jnp.zeros_like, v), _tmap(jnp.zeros_like, y))
    return PDHGState(v, y, tau, sigma, kty, v, y, kty, *sums, zero, err, err, omega, zero, zero, b, y, err,
                     jnp.asarray(jnp.inf, err.dtype), b, zero, jnp.asarray(STATUS_RUNNING, jnp.int32))


@dataclasses.dataclass(frozen=True)
class PDHG:
    """Restarted, preconditioned PDHG for a batch of LPs of one :class:`Formulation` (see the
    module docstring). Hashable: the object is the static part of its compiled programs.

    Attributes:
      form: the LP family's operators.
      check_every: iterations per step (between two checks).
      patience: checks without progress (with KKT error ≤ rtol) before an instance stops.
      halpern: the reflected restarted Halpern scheme (restart candidate ``T(z)``); False: plain
        PDHG steps with PDLP's averages (the restart candidate is the average or the current
        iterate). The threshold LP uses Halpern (about half the iterations on the real-trace
        instances); the assignment LP the averages (Halpern hit the iteration cap there).
      omega_scale: the initial primal weight ω₀ is this times PDLP's ``‖c‖/‖q‖`` (restarts then
        adapt it as before).
    """

    form: Formulation
    check_every: int = 64
    patience: int = 8
    halpern: bool = True
    omega_scale: float = 1.0

    def init(self, data, bound0: Float[Array, "B"], start=None) -> PDHGState:
        """The batched initial state; ``bound0`` [B] is a bound already known (−inf: none);
        ``start``: optional batched (v0, y0) (default: the formulation's starts)."""
        if start is None:
            return jax.vmap(partial(_init_one, self.form, self.halpern, self.omega_scale))(data, bound0)
        return jax.vmap(partial(_init_one, self.form, self.halpern, self.omega_scale))(data, bound0, start)

    def active(self, state: PDHGState, controls: Controls) -> Bool[Array, "B"]:
        """bool [B]: the instance still iterates (running and below its iteration cap)."""
        return (state.status == STATUS_RUNNING) & (state.iters < controls.max_iters)

    def terminate(self, state: PDHGState, controls: Controls) -> Bool[Array, "B"]:
        """bool [B]: the instance has stopped (a status other than running, or the cap)."""
        return ~self.active(state, controls)

    def step(self, data, state: PDHGState, controls: Controls) -> PDHGState:
        """One chunk of ``check_every`` iterations and the check, for every instance that has not
        terminated (the others are returned unchanged)."""
        B = state.iters.shape[0]
        upper = jnp.broadcast_to(jnp.asarray(controls.upper, controls.target.dtype), (B,))
        new = jax.vmap(partial(_chunk_one, self.form, self.check_every, self.patience, self.halpern, controls.rtol,
                               controls.stall_rtol, jnp.asarray(controls.gap_rtol, controls.target.dtype)),
                       in_axes=(0, 0, None, 0, 0))(controls.target, upper, controls.max_iters, data, state)
        return _select_batch(self.active(state, controls), state, new)

    def run(self, data, state: PDHGState, controls: Controls, n_checks: int) -> PDHGState:
        """Up to ``n_checks`` steps; ends early once every instance terminated."""

        def body(carry):
            k, s = carry
            return k + 1, self.step(data, s, controls)

        def cond(carry):
            k, s = carry
            return (k < n_checks) & self.active(s, controls).any()

        _, state = lax.while_loop(cond, body, (jnp.int32(0), state))
        return state


def _init_program(solver: PDHG, start_fn, data, bound0, x):
    start = None if start_fn is None else jax.vmap(start_fn)(data, x)
    return solver.init(data, bound0, start)


def _run_program(solver: PDHG, n_checks: int, data, state, controls):
    return solver.run(data, state, controls, n_checks)


#: the jitted entries, run through slimjax._compile.call (the solver object is static)
INIT_PROGRAM = jax.jit(_init_program, static_argnums=(0, 1))
RUN_PROGRAM = jax.jit(_run_program, static_argnums=(0, 1))


def _select_batch(run: Bool[Array, "B"], old, new):
    def sel(a, b):
        m = run.reshape(run.shape + (1,) * (a.ndim - 1))
        return jnp.where(m, b, a)

    return _tmap(sel, old, new)
