r"""The level-decomposition bound: one exact knapsack per latency level (small E).

For one user, take a grid ``t_0 < t_1 < … < t_G`` with ``t_0`` ≤ every latency (the grid of
all distinct node latencies and fallbacks, or a coarser subset of it). For any ``a ≥ t_0``,
``a ≥ t_0 + Σ_i Δ_i [a ≥ t_{i+1}]`` (``Δ_i = t_{i+1} − t_i``; equality on the full grid). Applied to
a pattern's latency ``max_k d_{e_k}`` and with ``S_i = {e : d_e < t_{i+1}}``,

    J_u(x) ≥ Σ_{l,m} w·t_G − Σ_i Δ_i · W_i(S_i),    W_i(S) = Σ_{l,m} w·[pattern m ⊆ S].

``S_i`` holds the *free* experts (fallback < t_{i+1}) and experts cached on a node that serves
them faster than t_{i+1}; the latter all lie on the nodes that serve something faster than
t_{i+1}, so ``Σ_l ŝ_l·|S_{i,l} ∖ free| ≤ C_i := Σ_{such n} Q̂_n`` (whole-expert storage rows, see
:func:`slimjax._storage.storage_cut`, valid for every placement :func:`slimjax.feasible` accepts). Dropping the nesting ``S_i ⊆ S_{i+1}`` and which
node holds what leaves, per level, ``OPT_i = max W_i(S)`` under that one knapsack, which is solved
exactly: per layer the best covered weight with ``c`` paid experts for every ``c`` by enumerating
all 2^E expert sets (a zeta transform of the pattern weights), then the dense (max,+) capacity DP
over layers. Hence

    J* ≥ Σ_u traffic_u · (Σ_{l,m} w·t_G − Σ_i Δ_i · OPT_{u,i}).

Several users: each user's J_u(x) is bounded alone (the bound of the sum is the sum of the
bounds), which is valid but ignores that users share copies. The values ``OPT`` come from JAX in
the iteration dtype; they are inflated by ``1 + (M + E + L + 8)·ε`` (ε its unit roundoff: the
error bound of the nonnegative sums behind them) before the float64 combination on the host.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from slimjax._storage import storage_cut
from slimjax.bounds._threshold import host_fields
from slimjax.ops import bucket_units, capacity_dp, masks_by_size

__all__ = ["LEVELS_MAX_E", "LEVEL_PROGRAM", "build", "bytes_per_instance", "level_opt", "value64"]

#: Largest E the level bound enumerates (2^E expert sets per layer).
LEVELS_MAX_E = 16


def build(batch, aggregation: str = "max", max_levels: int = 32) -> dict:
    """Host data of the level bound (NumPy; leading axis B).

    Returns a dict: ``masks`` int32 [B, U, L, M] (member bit masks), ``w`` [B, U, L, M],
    ``free`` / ``elig`` int32 [B, U, G, L] (bit masks of the free and of the payable experts per
    level), ``cap`` int32 [B, U, G] (pooled whole-expert capacity ``C_i``), ``delta`` [B, U, G],
    ``s_hat`` int32 [B, L], ``top`` [B, U] (Σ_{l,m} w·t_G), ``traffic`` [B, U], ``qmax`` (int, the
    static DP size).
    """
    lat, fb, pat, w, tr = host_fields(batch, aggregation)
    B, U, N, L, E = lat.shape
    if E > LEVELS_MAX_E:
        raise ValueError(f"method: 'levels' enumerates 2^E expert sets and needs E <= {LEVELS_MAX_E}, got E={E}")
    useful = np.isfinite(lat) & (lat < fb[:, :, None])
    ul = np.where(useful, lat, np.inf)  # [B, U, N, L, E]
    grid = _grids(ul, fb, max_levels)  # [B, U, G + 1]
    tau = grid[..., 1:]  # [B, U, G]
    delta = grid[..., 1:] - grid[..., :-1]
    bits = (1 << np.arange(E)).astype(np.int64)
    is_free = fb[:, :, None] < tau[..., None, None]  # [B, U, G, L, E]
    best = ul.min(axis=2)  # [B, U, L, E] fastest useful node
    payable = (best[:, :, None] < tau[..., None, None]) & ~is_free
    free = (is_free * bits).sum(-1)
    elig = (payable * bits).sum(-1)
    s_hat, q_hat = storage_cut(batch.size, batch.capacity)  # valid for every placement slimjax.feasible accepts
    node_best = ul.min(axis=(3, 4))  # [B, U, N]
    node_ok = node_best[:, :, None, :] < tau[..., None]  # [B, U, G, N]
    cap = (node_ok * q_hat[:, None, None, :]).sum(-1)
    full = (s_hat * E).sum(-1)  # storage that holds every expert of every layer
    cap = np.minimum(cap, full[:, None, None])
    masks = np.zeros(pat.shape[:-1], np.int64)
    for k in range(pat.shape[-1]):
        masks |= 1 << pat[..., k]
    top = w.sum(axis=(2, 3)) * grid[..., -1]
    qmax = bucket_units(max(int(cap.max()) if cap.size else 0, 8))  # ≥ 8: one program for all small capacities
    return dict(masks=masks.astype(np.int32), w=w, free=free.astype(np.int32), elig=elig.astype(np.int32),
                cap=cap.astype(np.int32), delta=delta, s_hat=s_hat.astype(np.int32), top=top, traffic=tr, qmax=qmax)


def _grids(ul: np.ndarray, fb: np.ndarray, max_levels: int) -> np.ndarray:
    """The level grid of every (instance, user): its distinct useful latencies and fallbacks,
    ascending, or ``max_levels + 1`` of them evenly spaced by rank (``np.linspace`` rounded, as a
    coarser but still valid grid) when there are more; padded with the last value to ``G + 1``
    entries, G a power of two ≥ 8 (extra levels have Δ = 0: fewer compiled shapes). Vectorised
    over instances and users (a sort per row)."""
    B, U = fb.shape[:2]
    vals = np.sort(np.concatenate([ul.reshape(B, U, -1), fb.reshape(B, U, -1)], axis=-1), axis=-1)
    fin = np.isfinite(vals)
    new = fin & np.concatenate([np.ones((B, U, 1), bool), vals[..., 1:] > vals[..., :-1]], axis=-1)
    D = new.sum(-1)  # distinct values per row (>= 1: the fallbacks are finite)
    distinct = np.take_along_axis(vals, np.argsort(~new, axis=-1, kind="stable"), axis=-1)  # distinct first
    n = np.minimum(D - 1, max_levels) + 1  # grid points per row
    G0 = max(1, int(n.max()) - 1)
    G = max(8, 1 << (G0 - 1).bit_length())
    j = np.arange(G + 1)
    coarse = (D - 1 > max_levels)[..., None]
    # np.linspace(0, D - 1, max_levels + 1): arange · step, the last point exactly D − 1
    step = ((D - 1) / max_levels)[..., None]
    lin = np.where(j == max_levels, (D - 1)[..., None], j * step)
    pick = np.where(coarse, np.round(lin).astype(np.int64), j)
    pick = np.minimum(np.where(j < n[..., None], pick, (D - 1)[..., None]), (D - 1)[..., None])
    return np.take_along_axis(distinct, pick, axis=-1)


def _opt_one(masks, w, free, elig, cap, s_hat, *, E: int, qmax: int):
    """OPT [U, G] of one instance (see the module docstring). The zeta transform W [U, L, 2^E] is
    built once; the U·G levels run one after another (``lax.map``), each reading its user's row
    of W, so the level axis is never materialised next to the 2^E axis."""
    U, L, M = masks.shape
    P = 1 << E
    uu = jnp.broadcast_to(jnp.arange(U)[:, None, None], masks.shape)
    ll = jnp.broadcast_to(jnp.arange(L)[None, :, None], masks.shape)
    H = jnp.zeros((U, L, P), w.dtype).at[uu, ll, masks].add(w)
    for i in range(E):  # zeta transform: W[S] = Σ_{T ⊆ S} H[T]
        H = H.reshape(U, L, P >> (i + 1), 2, 1 << i)
        H = jnp.stack([H[:, :, :, 0], H[:, :, :, 1] + H[:, :, :, 0]], axis=3)
    W = H.reshape(U, L, P)
    by_size = jnp.asarray(masks_by_size(E))  # [E+1, Wc], padded with P
    Wc = by_size.shape[1]

    def level(args):
        u, fr, el, c = args  # [], [L], [L], []
        Wu = W[u]  # [L, P]
        T = by_size[None]  # [1, E+1, Wc]
        ok = (T < P) & ((T & ~el[:, None, None]) == 0)
        idx = jnp.where(T < P, T | fr[:, None, None], 0)  # [L, E+1, Wc]
        vals = jnp.take_along_axis(Wu, idx.reshape(L, -1), axis=1).reshape(L, E + 1, Wc)
        g = jnp.where(ok, vals, -jnp.inf).max(-1)  # [L, E+1]
        g = lax.cummax(g, axis=1)
        g0 = g[:, :1]
        r = capacity_dp(g - g0, s_hat, c, Qmax=qmax, backend="dense")
        return r.value + g0.sum()

    G = free.shape[1]
    users = jnp.repeat(jnp.arange(U), G)
    out = lax.map(level, (users, free.reshape(U * G, L), elig.reshape(U * G, L), cap.reshape(U * G)))
    return out.reshape(U, G)


def _level_program(E: int, qmax: int, masks, w, free, elig, cap, s_hat):
    """OPT [b, U, G] of a chunk of instances (vectorised over the chunk: the chunk size is what
    bounds the memory, see :func:`bytes_per_instance`)."""
    return jax.vmap(partial(_opt_one, E=E, qmax=qmax))(masks, w, free, elig, cap, s_hat)


#: the compiled entry (E and the DP size static), run through slimjax._compile.call
LEVEL_PROGRAM = jax.jit(_level_program, static_argnums=(0, 1))


def level_opt(masks, w, free, elig, cap, s_hat, *, E: int, qmax: int):
    """OPT [B, U, G] for a batch (eager entry for tests; ``lower_bound`` runs :data:`LEVEL_PROGRAM`
    in chunks through the compile cache)."""
    return LEVEL_PROGRAM(E, qmax, masks, w, free, elig, cap, s_hat)


def bytes_per_instance(data: dict, E: int, itemsize: int) -> float:
    """Working set of one instance in :data:`LEVEL_PROGRAM` (bytes): its arguments (pattern masks
    and weights [U, L, M], the level masks [U, G, L]) and output, plus the one instance in flight:
    the scatter and zeta transform over [U, L, 2^E] (input, stacked copy and result), one level's
    [L, E+1, Wc] gathers (indices, masks and values) and its capacity DP [L, qmax+1, E+1]. The
    level axis G multiplies only the small per-level arrays, never 2^E. A chunk of b instances
    (vectorised) needs b times this."""
    _, U, L, M = data["masks"].shape
    G = data["free"].shape[2]
    Wc = masks_by_size(E).shape[1]
    qmax = int(data["qmax"])
    args = 4 * U * L * M + itemsize * U * L * M + 4 * 2 * U * G * L + 4 * (U * G + L) + 8 * U * G
    zeta = itemsize * U * L * (1 << E) * 4
    level = (4 + 4 + itemsize) * L * (E + 1) * Wc * 2 + itemsize * L * (qmax + 1) * (E + 2) * 4
    return float(args + zeta + level)


def value64(data: dict, opt: np.ndarray, dtype) -> np.ndarray:
    """The certified bound [B] in float64 from ``opt`` [B, U, G] computed in ``dtype``."""
    B, U, L, M = data["masks"].shape
    eps = np.finfo(np.dtype(dtype)).eps / 2
    kappa = (M + LEVELS_MAX_E + L + 8) * eps
    opt = np.maximum(np.asarray(opt, np.float64), 0) * (1 + kappa)
    per_user = data["top"] - (data["delta"] * opt).sum(-1)
    return (data["traffic"] * per_user).sum(-1)
