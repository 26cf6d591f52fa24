"""The two HiGHS bounds (``ThresholdHighs``, ``HighsLP``): the threshold LP and the MILP's LP
built as HiGHS models (:mod:`slimjax._highs`), one instance at a time on the CPU, each valued at
HiGHS's row duals in the same float64 dual function as its PDHG twin (never HiGHS's primal
objective), so the value is a valid bound whatever HiGHS's tolerances or status."""

from __future__ import annotations

import numpy as np

from slimjax import _highs
from slimjax.bounds import _assignment, _threshold
from slimjax.bounds._methods import BoundStatus

__all__ = ["threshold_highs_one", "assignment_highs_one"]


def _run_lp(mdl, offset: float, time_limit, threads):
    """Solve an LP model on HiGHS (quiet, with the time limit and threads): (Highs, status name)."""
    h = _highs.new_highs(time_limit, threads)
    return h, _highs.run(h, mdl, True, offset)


def threshold_highs_one(data64: dict, b: int, time_limit, threads):
    """The threshold LP of instance b on HiGHS: (g(μ) at HiGHS's row duals, status, HiGHS's LP objective)."""
    act, c, fidx = data64["act"][b], data64["c"][b], data64["fidx"][b]
    xg = data64["xgather"][b]
    U, L, M, K, I = act.shape
    N = data64["q_hat"].shape[-1]
    E = xg.shape[2]
    N1 = N + 1
    mdl = _highs.Model()
    xcol = mdl.cols(N * L * E)
    zmask = c > 0
    zcol = np.full(c.shape, -1, np.int64)
    zcol[zmask] = mdl.cols(int(zmask.sum()), cost=-c[zmask])
    rows_on = act > 0
    uu, ll, mm, kk, ii = np.nonzero(rows_on)
    nrow = len(uu)
    r = mdl.rows(nrow, -np.inf, 0.0)
    mdl.coef(r, zcol[uu, ll, mm, ii], 1.0)
    f = fidx[uu, ll, mm, kk, ii].astype(np.int64)
    rank = f % N1
    e = (f // N1) % E
    j = np.arange(N)[None, :]
    on = j < rank[:, None]
    rr = np.broadcast_to(r[:, None], on.shape)[on]
    cc = xcol[xg[uu, ll, e][:, :N]][on]
    mdl.coef(rr, cc, -1.0)
    store = mdl.rows(N, -np.inf, data64["q_hat"][b])
    nn = np.repeat(np.arange(N), L * E)
    mdl.coef(store[nn], xcol, np.tile(np.repeat(data64["s_hat"][b], E), N))
    h, status = _run_lp(mdl, float(data64["j0"][b]), time_limit, threads)
    mu = np.zeros((1,) + act.shape)
    sol = h.getSolution()
    if sol.dual_valid:
        rd = np.asarray(sol.row_dual)[:nrow]
        mu[0, uu, ll, mm, kk, ii] = np.maximum(-rd, 0.0)
    one = {k: v[b : b + 1] for k, v in data64.items()}
    objective = float(h.getInfo().objective_function_value) if status == "Optimal" else np.nan
    ok = BoundStatus.OPTIMAL if status == "Optimal" else BoundStatus.TIME_LIMIT
    return (float(_threshold.dual_value64(one, (mu, None))[0]), ok,
            objective)


def assignment_highs_one(data64: dict, b: int, time_limit, threads):
    """The LP of the MILP (:mod:`._assignment`'s, over every accepted placement) of instance b on
    HiGHS: (the Lagrangian at HiGHS's row duals in float64, status)."""
    useful, hasx, anyu, gm = (data64[k][b] > 0 for k in ("useful", "hasx", "anyu", "gm"))
    U, N, L, E = useful.shape
    M, K = gm.shape[2:]
    mdl = _highs.Model()
    xcol = np.full((N, L, E), -1, np.int64)
    xcol[hasx] = mdl.cols(int(hasx.sum()))
    acol = np.full((U, N, L, E), -1, np.int64)
    acol[useful] = mdl.cols(int(useful.sum()))
    ycol = mdl.cols(U * L * M, cost=data64["cy"][b].reshape(-1), hi=data64["ymax"][b].reshape(-1)).reshape(U, L, M)
    uu, nn, ll, ee = np.nonzero(useful)
    ra = mdl.rows(len(uu), -np.inf, 0.0)  # α: a − x ≤ 0
    mdl.coef(ra, acol[uu, nn, ll, ee], 1.0)
    mdl.coef(ra, xcol[nn, ll, ee], -1.0)
    rbeta = np.full((U, L, E), -1, np.int64)
    rbeta[anyu] = mdl.rows(int(anyu.sum()), -np.inf, 1.0)  # β: Σ_n a ≤ 1
    mdl.coef(rbeta[uu, ll, ee], acol[uu, nn, ll, ee], 1.0)
    gu, gl, gmm, gk = np.nonzero(gm)  # γ: −y − Σ_n saving·a ≤ −fallback, per member
    rg = mdl.rows(len(gu), -np.inf, -data64["fbm"][b][gu, gl, gmm, gk])
    mdl.coef(rg, ycol[gu, gl, gmm], -1.0)
    e_of = data64["gidx"][b][gu, gl, gmm, gk].astype(np.int64) % E
    on = useful[gu, :, gl, e_of]  # [rows, N]
    r_i, n_i = np.nonzero(on)
    uo, lo, eo = gu[r_i], gl[r_i], e_of[r_i]
    mdl.coef(rg[r_i], acol[uo, n_i, lo, eo], -data64["saving"][b][uo, n_i, lo, eo])
    rl = mdl.rows(N, -np.inf, data64["qcap"][b])  # λ: storage over the accepted placements
    xn, xl, xe = np.nonzero(hasx)
    mdl.coef(rl[xn], xcol[xn, xl, xe], data64["size"][b][xl, xe])
    h, status = _run_lp(mdl, 0.0, time_limit, threads)
    sol = h.getSolution()
    alpha, beta = np.zeros((1, U, N, L, E)), np.zeros((1, U, L, E))
    gamma, lam = np.zeros((1, U, L, M, K)), np.zeros((1, N))
    if sol.dual_valid:
        rd = -np.asarray(sol.row_dual)  # ≤ rows of a minimisation: multiplier = −(row dual) ≥ 0
        alpha[0, uu, nn, ll, ee] = rd[ra]
        beta[0][anyu] = rd[rbeta[anyu]]
        gamma[0, gu, gl, gmm, gk] = rd[rg]
        lam[0] = rd[rl]
    one = {k: v[b : b + 1] for k, v in data64.items()}
    value = float(_assignment.dual_value64(one, (alpha, beta, gamma, lam))[0])
    return value, (BoundStatus.OPTIMAL if status == "Optimal" else BoundStatus.TIME_LIMIT)
