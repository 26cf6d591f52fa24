r"""The threshold formulation of J and its Lagrangian dual (the default bound).

Pattern latency as an integral over thresholds. For one user u, layer l and pattern m with
members e_1..e_K, let ``t_0 < t_1 < … < t_D`` be the distinct values among the members' node
latencies (clipped to the fallback) and fallbacks. Every expert latency ``d_e`` is one of them, so

    max_k d_{e_k} = t_D − Σ_{i<D} Δ_i · [d_{e_k} ≤ t_i for every k],   Δ_i = t_{i+1} − t_i,

and ``[d_e ≤ t_i] ≤ Σ_{n ∈ A(e, t_i)} x[n, l, e]`` with ``A(e, t) = {n : latency[u,n,l,e] ≤ t}``
(the bracket is 1 without any node when ``fallback ≤ t``). With ``z_p ∈ [0, 1]`` for every
pattern-interval ``p = (u, l, m, i)`` this gives the LP

    min  J0 − Σ_p c_p z_p    s.t.  z_p ≤ Σ_{n∈A(e_k,t_i)} x[n,l,e_k]  (each member k),
                                   Σ_{l,e} ŝ_l x[n,l,e] ≤ Q̂_n,   0 ≤ x ≤ 1,

``c_p = traffic·weight·Δ_i``, ``J0 = J(nothing cached)``. Every placement gives a feasible point
with objective J, so its optimum is a lower bound on J*. The storage rows are the Chvátal–Gomory
roundings of the real constraints: with a unit ``u`` (the coarsest one of which every layer's size
is a multiple), ``ŝ_l = ⌊size_l/u⌋`` and ``Q̂_n = ⌊capacity_n/u⌋`` are valid for every integer
placement; they remove the fractional expert that the plain LP can squeeze into every node.

Dual. For multipliers ``μ ≥ 0`` on the member rows, eliminating z and keeping x integral, the
Lagrangian is separable per node:

    g(μ) = J0 − Σ_p max(0, c_p − Σ_k μ_pk) − Σ_n KNAP_n(r_n(μ)),
    r[n,l,e] = Σ_{(p,k): e_k = e, n ∈ A(e_k, t_i)} μ_pk,

where ``KNAP_n`` is the 0/1 knapsack over the values ``r[n]`` with sizes ``ŝ`` and capacity
``Q̂_n``. ``g(μ) ≤ J*`` for every ``μ ≥ 0``; :func:`dual_value64` evaluates it in float64 (exact
knapsack: top-⌊Q̂/ŝ⌋ values when all ``ŝ`` are equal, a DP over the integer grid otherwise, or the
fractional knapsack, an upper bound on it, when the grid is too large). Scaling ``μ_p`` down to
``Σ_k μ_pk ≤ c_p`` never lowers g, so it is applied first. For one user this LP is, layer by
layer, a network (difference-constraint) matrix, so its value equals the Lagrangian dual of the
storage rows with the exact per-layer problem inside; the remaining gap to J* comes from the
storage knapsacks alone.

With ``aggregation="sum"`` every member is its own pattern (J separates per expert).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, Int

from slimjax._kernels import repeated_member
from slimjax._storage import storage_cut
from slimjax.bounds._pdhg import Formulation

__all__ = ["ThresholdData", "build", "bytes_per_instance", "to_device", "FORMULATION", "dual_value64", "initial_dual",
           "initial_primal"]

#: Largest Σ_n Q̂_n·L·E for which the float64 evaluation runs the exact knapsack DP.
DP_MAX_WORK = 5e7


class ThresholdData(NamedTuple):
    """Per-instance arrays of the threshold LP (batched: a leading axis B).

    fidx: int32 [U, L, M, K, I] flat index (u, l, e_k, rank) into [U, L, E, N+1]; inactive rows
      hold the spare index U·L·E·(N+1) (where ``_F`` reads 1 and ``_r``'s scatter lands apart).
    act: float [U, L, M, K, I] 1 where the member row ``z_p ≤ F_pk(x)`` exists.
    slot: int32 [U, L, M, K] flat index (u, l, e_k) into [U, L, E] (the spare index U·L·E for a
      repeated member) where the LP is *regular* — every row with c_p > 0 of a distinct member has
      speed rank i + 1 at interval i (node-wise latencies, e.g. every generated or trace-built
      instance with one network), else [U, L, M, 0]. On the device a regular LP keeps ``slot`` and
      an empty fidx [U, L, M, K, 0]: the gather of F and the scatter of Kᵀμ then move a row of I
      values per member (one index each) instead of one value per row.
    c: float [U, L, M, I] gain weight of each pattern-interval.
    xgather: int32 [U, L, E, N] flat index into x [N·L·E] of the node at each speed rank.
    rgather: int32 [U, N, L, E] flat index into [U, L, E, N] of each node's speed rank.
    s_hat: float [L] integer expert sizes on the grid; q_hat: float [N] integer capacities.
    j0: float [] J with nothing cached.
    """

    fidx: Int[Array, "U L M K I"]
    act: Float[Array, "U L M K I"]
    c: Float[Array, "U L M I"]
    xgather: Int[Array, "U L E N"]
    rgather: Int[Array, "U N L E"]
    s_hat: Float[Array, "L"]
    q_hat: Float[Array, "N"]
    j0: Float[Array, ""]
    slot: Int[Array, "U L M K"]


def _sum_patterns(patterns: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``aggregation="sum"``: every member its own pattern of one expert (weights repeated)."""
    B, U, L, M, K = patterns.shape
    p = patterns.reshape(B, U, L, M * K, 1)
    w = np.repeat(weight[..., None], K, axis=-1).reshape(B, U, L, M * K)
    return p, w


def _interval_count(n: int) -> int:
    """The interval axis for ``n`` intervals: the smallest ``2^k`` or ``3·2^k`` that is ≥ n (few
    distinct shapes, so nearby data share a compiled program, with at most 1/3 of it padding: every
    padded interval costs as much per PDHG step as a real one)."""
    p = 1 << max(0, n - 1).bit_length()  # the power of two ≥ n
    return 3 * p // 4 if p >= 4 and 3 * p // 4 >= n else p


def host_fields(batch, aggregation: str = "max") -> tuple[np.ndarray, ...]:
    """``(latency, fallback, patterns, weight, traffic)`` of a batch as host float64 (int64
    patterns), the patterns split into one-expert patterns for ``aggregation="sum"``: what every
    bound's ``build`` starts from."""
    lat = np.asarray(batch.latency, np.float64)
    fb = np.asarray(batch.fallback, np.float64)
    pat = np.asarray(batch.patterns).astype(np.int64)
    w = np.asarray(batch.weight, np.float64)
    tr = np.asarray(batch.traffic, np.float64)
    if aggregation == "sum":
        pat, w = _sum_patterns(pat, w)
    return lat, fb, pat, w, tr


def build(batch, aggregation: str = "max") -> dict:
    """The threshold LP of every instance of ``batch`` (host NumPy, float64).

    ``batch``: a batch (Instance or the float64 host copy of ``lower_bound``, with patterns
    merged in float64); zero-weight patterns are inactive. Returns a dict of NumPy arrays with the fields of :class:`ThresholdData` (leading
    axis B); the interval axis I is the largest number of intervals over the batch rounded up to a power of
    two or three times one (the extra intervals have Δ = 0 and no rows), so that nearby data share a compiled
    program.
    """
    lat, fb, pat, w, tr = host_fields(batch, aggregation)
    B, U, N, L, E = lat.shape
    M, K = pat.shape[-2:]
    N1 = N + 1
    v = np.minimum(lat, fb[:, :, None])  # [B, U, N, L, E]; unreachable -> fallback
    vals = np.concatenate([np.moveaxis(v, 2, -1), fb[..., None]], axis=-1)  # [B, U, L, E, N+1]
    perm = np.argsort(vals, axis=-1, kind="stable")  # the fallback (index N) is last among ties
    s = np.take_along_axis(vals, perm, axis=-1)
    pos = np.argsort(perm, axis=-1, kind="stable")[..., :N]  # [B, U, L, E, N] speed rank of node n
    bi = np.arange(B)[:, None, None, None, None]
    ui = np.arange(U)[None, :, None, None, None]
    li = np.arange(L)[None, None, :, None, None]
    s_mem = s[bi, ui, li, pat]  # [B, U, L, M, K, N+1]
    dup = repeated_member(np.asarray(pat))  # [B, U, L, M, K]
    T = np.sort(s_mem.reshape(B, U, L, M, K * N1), axis=-1)
    new = np.concatenate([np.ones(T.shape[:-1] + (1,), bool), T[..., 1:] > T[..., :-1]], axis=-1)
    D = new.sum(-1)
    I0 = max(int(D.max()) - 1, 1)
    I = _interval_count(I0)  # nearby data share one compiled program
    tc = np.sort(np.where(new, T, np.inf), axis=-1)[..., : I0 + 1]
    tc = np.where(np.isfinite(tc), tc, T[..., -1:])  # pad with the largest value (Δ = 0)
    tc = np.concatenate([tc, np.repeat(tc[..., -1:], I - I0, axis=-1)], axis=-1)  # inactive intervals
    t = tc[..., :I]
    delta = tc[..., 1:] - tc[..., :-1]  # [B, U, L, M, I]
    rank = np.zeros((B, U, L, M, K, I), np.int64)
    for j in range(N1):  # rank = how many of the member's sorted values are <= t_i
        rank += s_mem[..., j, None] <= t[..., None, :]
    ok = (~dup & (w > 0)[..., None])[..., None]  # [B, U, L, M, K, 1]
    forced0 = (ok & (rank == 0)).any(-2)  # some member cannot be <= t_i at all: z_p = 0
    c = np.where(forced0, 0.0, tr[:, :, None, None, None] * w[..., None] * delta)
    act = ok & (rank < N1) & (c > 0)[..., None, :]
    j0 = (tr[:, :, None, None] * w * tc[..., -1]).sum(axis=(1, 2, 3))
    rk = np.minimum(rank, N)
    ue = ((np.arange(U)[:, None, None] * L + np.arange(L)[None, :, None]) * E)  # [U, L, 1]
    fidx = ((ue[None, :, :, :, None, None] + pat[..., None]) * N1 + rk)  # [B, U, L, M, K, I]
    fidx = np.where(act, fidx, U * L * E * N1)  # inactive rows: the spare slot (see _F, _r)
    nodes = perm[..., :N]  # [B, U, L, E, N]
    xgather = (nodes * L + np.arange(L)[None, None, :, None, None]) * E + np.arange(E)[None, None, None, :, None]
    rg = (ue[..., None] + np.arange(E)[None, None, :, None]) * N + pos  # [B, U, L, E, N]
    rgather = np.moveaxis(rg, -1, 2)  # [B, U, N, L, E]
    s_hat, q_hat = storage_cut(batch.size, batch.capacity)  # valid for every placement slimjax.feasible accepts
    if U * L * E * N1 >= 2**31 or N * L * E >= 2**31:
        raise ValueError("instance: too large for int32 indices of the threshold LP")
    live = ~dup[..., None] & (w > 0)[..., None, None] & (c > 0)[..., None, :]  # [B, U, L, M, K, I]
    regular = bool(np.all((rank == np.arange(1, I + 1)) | ~live))
    if regular:
        slot = np.where(dup, U * L * E, (ue[None, :, :, :, None] + pat)).astype(np.int32)
    else:
        slot = np.zeros((B, U, L, M, 0), np.int32)
    return dict(fidx=fidx.astype(np.int32), act=act.astype(np.float64), c=c, xgather=xgather.astype(np.int32),
                rgather=rgather.astype(np.int32), s_hat=s_hat, q_hat=q_hat, j0=j0, slot=slot)


def to_device(data: dict, dtype) -> ThresholdData:
    """The float fields cast to ``dtype`` (the iteration precision) as JAX arrays; a regular LP
    (``slot`` not empty) leaves ``fidx`` empty (see :class:`ThresholdData`)."""
    data = dict(data)
    if data["slot"].shape[-1]:
        data["fidx"] = np.zeros(data["fidx"].shape[:-1] + (0,), np.int32)
    return ThresholdData(**{k: jnp.asarray(v, jnp.int32 if k in ("fidx", "xgather", "rgather", "slot") else dtype)
                            for k, v in data.items()})


def _regular(d: ThresholdData) -> bool:
    return d.fidx.shape[-1] == 0


# -- operators (one instance) ------------------------------------------------------------------


def _sum_k(a):
    """Σ over the member axis (axis 3) of a [U, L, M, K, I] array as K slice additions: XLA CPU's
    reduction over that non-minor axis of 3.4 M rows took 45-170 ms where this takes ~2 ms
    (measured on the real-trace deepseek_v2_lite LP, 2 cores)."""
    out = a[:, :, :, 0, :]
    for k in range(1, a.shape[3]):
        out = out + a[:, :, :, k, :]
    return out


def _min_k(a):
    """min over the member axis (axis 3), as :func:`_sum_k`."""
    out = a[:, :, :, 0, :]
    for k in range(1, a.shape[3]):
        out = jnp.minimum(out, a[:, :, :, k, :])
    return out


def _F(d: ThresholdData, x):
    """F[u,l,m,k,i] = Σ of x over the nodes of A(e_k, t_i) (prefix sums in speed order)."""
    U, L, E, N = d.xgather.shape
    xs = x.reshape(-1)[d.xgather]  # [U, L, E, N]
    cum = jnp.concatenate([jnp.zeros(xs.shape[:-1] + (1,), xs.dtype), jnp.cumsum(xs, axis=-1)], axis=-1)
    if _regular(d):  # interval i reads rank i + 1 of the member's row of prefix sums
        I = d.c.shape[-1]
        tab = cum.reshape(U * L * E, N + 1)[:, 1:]
        tab = jnp.concatenate([tab, jnp.ones((U * L * E, max(I - N, 0)), xs.dtype)], axis=1)[:, :I]
        tab = jnp.concatenate([tab, jnp.ones((1, I), xs.dtype)])  # the spare slot (repeated members)
        return tab[d.slot]  # [U, L, M, K, I]
    one = jnp.ones((1,), xs.dtype)  # the spare slot of the inactive rows: F = 1 ≥ z, never binding
    return jnp.concatenate([cum.reshape(-1), one])[d.fidx]


def _r(d: ThresholdData, mu):
    """r[n,l,e] = Σ of μ over the member rows whose node set contains n."""
    U, L, E, N = d.xgather.shape
    if _regular(d):  # interval i is rank i + 1: one scatter of a row of I values per member
        I = mu.shape[-1]
        H2 = jnp.zeros((U * L * E + 1, I), mu.dtype).at[d.slot.reshape(-1)].add(mu.reshape(-1, I))
        H2 = jnp.concatenate([H2[:-1, :N], jnp.zeros((U * L * E, max(N - I, 0)), mu.dtype)], axis=1)
        H = jnp.concatenate([jnp.zeros((U * L * E, 1), mu.dtype), H2], axis=1).reshape(U, L, E, N + 1)
    else:
        S = U * L * E * (N + 1)
        H = jnp.zeros((S + 1,), mu.dtype).at[d.fidx.reshape(-1)].add(mu.reshape(-1))
        H = H[:S].reshape(U, L, E, N + 1)  # the spare slot (inactive rows) dropped
    tail = jnp.cumsum(H[..., ::-1], axis=-1)[..., ::-1]  # Σ_{r ≥ j}
    R = tail[..., 1:]  # Σ_{r > j}: the rows whose node set holds the node of rank j
    return R.reshape(-1)[d.rgather].sum(0)  # [N, L, E]


def _K(d: ThresholdData, v):
    """The member rows ``z_p − F_pk(x)`` and the storage rows. An inactive row reads F = 1 (the
    spare slot), so it is ``z_p − 1 ≤ 0``, redundant with ``z ≤ 1``; its step σ is 0 (``_Kabs``
    has no entry there), so its multiplier stays at its start, 0 (no mask pass per step)."""
    x, z = v
    mu_rows = z[:, :, :, None, :] - _F(d, x)
    lam_rows = jnp.einsum("nle,l->n", x, d.s_hat)
    return mu_rows, lam_rows


def _KT(d: ThresholdData, y):
    """Kᵀy for a y that is 0 on the inactive rows (every iterate: they start at 0 and σ = 0 there);
    their scatter lands in the spare slot in any case."""
    mu, lam = y
    zc = _sum_k(mu)
    xc = -_r(d, mu) + lam[:, None, None] * d.s_hat[None, :, None]
    return xc, zc


def _Kabs(d, v):
    x, z = v
    mu_rows = d.act * (z[:, :, :, None, :] + _F(d, x))
    return mu_rows, jnp.einsum("nle,l->n", x, d.s_hat)


def _KTabs(d, y):
    mu, lam = y
    mua = d.act * mu
    return _r(d, mua) + lam[:, None, None] * d.s_hat[None, :, None], _sum_k(mua)


def _cost(d: ThresholdData):
    U, L, E, N = d.xgather.shape
    return jnp.zeros((N, L, E), d.c.dtype), -d.c


def _rhs(d: ThresholdData):
    return jnp.zeros_like(d.act), d.q_hat


def _upper(d: ThresholdData):
    U, L, E, N = d.xgather.shape
    return jnp.ones((N, L, E), d.c.dtype), jnp.ones_like(d.c)


def _frac_knap(r, s_hat, q_hat, iters: int = 40):
    """An upper bound on the knapsack of every node, ``min_λ≥0 λ·Q̂ + Σ max(0, r − λ·ŝ)`` (the LP
    dual of the fractional knapsack), minimized by bisection on λ with a fixed number of steps:
    every λ gives an upper bound, the minimizer gives the fractional knapsack. r [N, L, E] >= 0,
    ŝ [L], Q̂ [N] -> [N]."""
    s = s_hat[None, :, None]

    def phi(lam):
        return lam * q_hat + jnp.maximum(r - lam[:, None, None] * s, 0).sum(axis=(1, 2))

    def slope(lam):  # Q̂ − Σ_{r > λ ŝ} ŝ, non-decreasing in λ
        return q_hat - jnp.where(r > lam[:, None, None] * s, s, 0).sum(axis=(1, 2))

    hi = jnp.max(r / s, axis=(1, 2))
    lo = jnp.zeros_like(hi)

    def step(_, b):
        a, c = b
        m = 0.5 * (a + c)
        up = slope(m) >= 0
        return jnp.where(up, a, m), jnp.where(up, m, c)

    lo, hi = lax.fori_loop(0, iters, step, (lo, hi))
    return jnp.minimum(phi(lo), phi(hi))


def _bound(d: ThresholdData, y, kty=None):
    """g(μ) with the fractional-knapsack upper bound (≈ the LP's λ-optimal value), in the data's dtype."""
    mu, _ = y
    mu = jnp.maximum(mu, 0) * d.act
    tot = _sum_k(mu)
    scale = jnp.where(tot > d.c, d.c / jnp.where(tot > 0, tot, 1), 1.0)
    zterm = jnp.maximum(d.c - tot, 0).sum()  # Σ_p (c_p − Σ_k of the scaled μ_pk)
    r = jnp.maximum(_r(d, mu * scale[:, :, :, None, :]), 0)
    return d.j0 - zterm - _frac_knap(r, d.s_hat, d.q_hat).sum()


def _primal(d: ThresholdData, v):
    """J0 − Σ c·z at a feasible point repaired from v: x clipped to [0, 1] and scaled per node to
    fit the storage row, z = min(1, min over member rows of F(x))."""
    x, _ = v
    x = jnp.clip(x, 0, 1)
    used = jnp.einsum("nle,l->n", x, d.s_hat)
    x = x * jnp.where(used > d.q_hat, d.q_hat / jnp.where(used > 0, used, 1), 1.0)[:, None, None]
    F = _min_k(jnp.where(d.act > 0, _F(d, x), jnp.inf))
    z = jnp.clip(F, 0, 1)
    return d.j0 - (d.c * z).sum()


def initial_dual(d: ThresholdData):
    """A start for the dual: each pattern-interval's weight split equally over its member rows
    (the bound of replacing max by the mean of the members), λ = 0."""
    n = _sum_k(d.act)[:, :, :, None, :]
    mu = d.act * (d.c[:, :, :, None, :] / jnp.where(n > 0, n, 1))
    return mu, jnp.zeros_like(d.q_hat)


def initial_primal(d: ThresholdData):
    U, L, E, N = d.xgather.shape
    return jnp.zeros((N, L, E), d.c.dtype), jnp.zeros_like(d.c)


def start_from(d: ThresholdData, x):
    """A primal-dual start from a known placement x [N, L, E] (e.g. the solution being certified):
    v = (x, z(x)) with z = min(1, min_k F_pk(x)), and each pattern-interval's weight c_p split over
    the member rows that bind at x (F_pk = z_p: the members that keep the pattern from being
    faster than t_i), the complementary-slackness guess; λ = 0."""
    x = jnp.clip(x.astype(d.c.dtype), 0, 1)
    F = jnp.where(d.act > 0, _F(d, x), jnp.inf)
    z = jnp.clip(_min_k(F), 0, 1)  # [U, L, M, I]
    bind = (d.act > 0) & (F <= z[:, :, :, None, :])
    n = _sum_k(bind.astype(d.c.dtype))[:, :, :, None, :]
    mu = jnp.where(bind, d.c[:, :, :, None, :] / jnp.maximum(n, 1), 0.0).astype(d.c.dtype)
    return (x, jnp.where(d.c > 0, z, 0.0)), (mu, jnp.zeros_like(d.q_hat))


def given_start(d: ThresholdData, s):
    """The start ``s`` = ((x, z), (μ, λ)) as given (built by :func:`coarse_start`)."""
    return s


def coarse_batch(host, keep: int):
    """The coarse copy of a host batch for the warm start (``ThresholdLP.coarse_patterns``): the
    ``keep`` heaviest patterns of every (instance, user, layer), their weights scaled to the
    layer's total. Returns ``(coarse host batch, top [B, U, L, keep] the kept pattern indices,
    scale [B, U, L] the weight factor)``."""
    w = host.weight
    top = np.argsort(-w, axis=-1, kind="stable")[..., :keep]
    wt = np.take_along_axis(w, top, -1)
    tot = wt.sum(-1)
    scale = np.where(tot > 0, w.sum(-1) / np.where(tot > 0, tot, 1), 1.0)
    pat = np.take_along_axis(host.patterns, top[..., None], -2)
    return host._replace(patterns=pat, weight=wt * scale[..., None]), top, scale


def coarse_start(d: ThresholdData, act: np.ndarray, x, coarse_mu, lam, top: np.ndarray, scale: np.ndarray):
    """The full LP's start from a solved coarse LP (batched): the coarse primal ``x``
    [B, N, L, E], ``z = min(1, min_k F(x))``, on the kept patterns the coarse multipliers divided
    by the weight scale (μ/c as in the coarse LP; 0 on rows the full LP lacks), elsewhere the
    complementary-slackness guess at x (:func:`start_from`), and the coarse storage prices λ."""
    (x, z), (mu, _) = jax.vmap(start_from)(d, x)
    mu = np.array(mu)
    muc = np.asarray(coarse_mu, mu.dtype)
    n = min(mu.shape[-1], muc.shape[-1])
    src = np.zeros(muc.shape[:-1] + (mu.shape[-1],), mu.dtype)
    src[..., :n] = muc[..., :n] / scale[..., None, None, None].astype(mu.dtype)
    idx = top[..., None, None]
    src = src * np.take_along_axis(act, idx, axis=3).astype(mu.dtype)
    np.put_along_axis(mu, np.broadcast_to(idx, src.shape), src, axis=3)
    return (x, z), (jnp.asarray(mu), lam)


FORMULATION = Formulation(_K, _KT, _Kabs, _KTabs, _cost, _rhs, _upper, _bound, _primal, initial_primal,
                          initial_dual)
#: PDHG scheme (:class:`slimjax.bounds._pdhg.PDHG`): reflected restarted Halpern (on the real-trace
#: deepseek_v2_lite instance 1,792 iterations against 3,712 for the averaged scheme)
HALPERN = True
#: initial primal weight: this times PDLP's ‖c‖/‖q‖ (:attr:`slimjax.bounds._pdhg.PDHG.omega_scale`).
#: Left at 1: ×100 cut the real-trace deepseek_v2_lite certificate from 1,792 to 1,280 iterations
#: but needed more on 5 of the 6 other instances measured (experiments/certificates/README.md)
OMEGA_SCALE = 1.0


# -- the certified value (host, float64) -------------------------------------------------------


def _knapsack64(r: np.ndarray, s_hat: np.ndarray, q_hat: np.ndarray) -> np.ndarray:
    """max Σ r·x s.t. Σ ŝ_l x ≤ Q̂, x ∈ {0,1}, per (instance, node): r [B, N, L, E] >= 0,
    ŝ [B, L], Q̂ [B, N] (whole numbers) -> [B, N]. Exact (top-k when a instance's sizes are equal,
    else the DP over the integer grid) or, when the DP table would be too large, the fractional
    knapsack (an upper bound on it). Vectorised over instances and nodes; the DP steps over
    layers (a sequential recurrence), each step over every count at once."""
    B, N, L, E = r.shape
    out = np.empty((B, N))
    equal = np.all(s_hat == s_hat[:, :1], axis=-1)  # [B]
    qmax = int(np.max(q_hat)) if q_hat.size else 0
    dp = ~equal & ((qmax + 1) * L * (E + 1) * N <= DP_MAX_WORK)
    frac = ~equal & ~dp
    if equal.any():
        b = np.flatnonzero(equal)
        k = np.floor(q_hat[b] / s_hat[b, :1]).astype(np.int64)  # [b, N]
        allv = -np.sort(-r[b].reshape(len(b), N, -1), axis=-1)
        cs = np.concatenate([np.zeros((len(b), N, 1)), np.cumsum(allv, axis=-1)], axis=-1)
        out[b] = np.take_along_axis(cs, np.minimum(k, L * E)[..., None], axis=-1)[..., 0]
    if dp.any():
        b = np.flatnonzero(dp)
        srt = -np.sort(-r[b], axis=-1)  # [b, N, L, E] descending per layer
        curves = np.concatenate([np.zeros((len(b), N, L, 1)), np.cumsum(srt, axis=-1)], axis=-1)  # [b, N, L, E+1]
        Q = int(q_hat[b].max())
        q = np.arange(Q + 1)
        cnt = np.arange(E + 1)
        G = np.zeros((len(b), N, Q + 1))
        for l in range(L):  # the DP over layers: G_l[q] = max_c G_{l-1}[q − c·ŝ_l] + curve_l[c]
            src = q[None, None, :] - cnt[None, :, None] * s_hat[b, l].astype(np.int64)[:, None, None]  # [b, E+1, Q+1]
            ok = src >= 0
            prev = np.take_along_axis(G[:, :, None, :], np.where(ok, src, 0)[:, None], axis=-1)  # [b, N, E+1, Q+1]
            cand = np.where(ok[:, None], prev + curves[:, :, l, :, None], -np.inf)
            G = cand.max(axis=2)
        out[b] = np.take_along_axis(G, q_hat[b].astype(np.int64)[..., None], axis=-1)[..., 0]
    if frac.any():
        b = np.flatnonzero(frac)
        size = np.broadcast_to(s_hat[b][:, None, :, None], (len(b), N, L, E)).reshape(len(b), N, -1)
        val = r[b].reshape(len(b), N, -1)
        order = np.argsort(-val / size, axis=-1, kind="stable")
        v = np.take_along_axis(val, order, -1)
        sz = np.take_along_axis(size, order, -1)
        cs = np.cumsum(sz, -1)
        room = q_hat[b][..., None] - (cs - sz)
        out[b] = np.where(cs <= q_hat[b][..., None], v, np.clip(room / sz, 0, 1) * v).sum(-1)
    return out


def bytes_per_instance(data: dict, itemsize: int) -> float:
    """Working set of one instance in the PDHG programs (bytes): its data (float fields in the
    iteration dtype, indices int32) and the state — v- and y-shaped arrays (iterate, steps, sums,
    restart point, best point; y = the member rows [U, L, M, K, I]) — plus the temporaries of a
    chunk of steps (the loop carry, Kᵀy's scatter over [U, L, E, N+1], the pair of candidates the
    check evaluates): 24 arrays of each shape in all, calibrated against XLA's ``memory_analysis``
    of the compiled loop (olmoe_1b_7b, 4 users: ~1.5× the 12 copies first counted)."""
    one = sum((4 if v.dtype.kind in "iu" else itemsize) * (v[0].size if v.ndim else 1) for v in data.values())
    act = data["act"][0].size
    U, L, E, N = data["xgather"].shape[1:]
    v = N * L * E + data["c"][0].size
    return float(one + itemsize * (24 * act + 24 * v + 8 * U * L * E * (N + 1)))


def dual_value64(data: dict, dual) -> np.ndarray:
    """The certified bound g(μ) of every instance in float64 (see the module docstring).

    Args:
      data: :func:`build`'s dict (float64); dual: (μ, λ) with μ [B, U, L, M, K, I] any real
        multipliers (negative entries and inactive rows are set to 0, each pattern-interval is
        scaled to Σ_k μ ≤ c); λ is not used (the knapsacks are solved exactly instead).

    Returns:
      float64 [B], each ≤ J* of its instance. A rounding margin of 1e-9 times the sum of the
      magnitudes entering the value is subtracted (far above float64 summation error).
    """
    mu = dual[0]
    act, c = data["act"], data["c"]
    B, U, L, M, K, I = act.shape
    N = data["q_hat"].shape[-1]
    E = data["xgather"].shape[3]
    mu = np.maximum(np.asarray(mu, np.float64), 0) * act
    tot = mu.sum(4)
    scale = np.where(tot > c, c / np.where(tot > 0, tot, 1), 1.0)
    mu = mu * scale[:, :, :, :, None, :]
    mu = np.minimum(mu, c[:, :, :, :, None, :])  # guards the scaling's rounding
    zterm = np.maximum(c - mu.sum(4), 0).sum(axis=(1, 2, 3, 4))
    size_h = U * L * E * (N + 1)
    fidx = np.minimum(data["fidx"].reshape(B, -1).astype(np.int64), size_h - 1)  # spare slot: μ = 0 there
    flat = fidx + (np.arange(B) * size_h)[:, None]
    H = np.bincount(flat.reshape(-1), weights=mu.reshape(-1), minlength=B * size_h).reshape(B, U, L, E, N + 1)
    R = np.cumsum(H[..., ::-1], axis=-1)[..., ::-1][..., 1:].reshape(B, -1)  # [B, U·L·E·N]
    r = np.take_along_axis(R, data["rgather"].reshape(B, -1).astype(np.int64), axis=1).reshape(B, U, N, L, E).sum(1)
    knap = _knapsack64(np.maximum(r, 0), data["s_hat"], data["q_hat"]).sum(-1)
    j0 = data["j0"]
    g = j0 - zterm - knap
    margin = 1e-9 * (np.abs(j0) + c.sum(axis=(1, 2, 3, 4)) + np.abs(r).sum(axis=(1, 2, 3)))
    return g - margin
