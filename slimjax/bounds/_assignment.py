r"""The LP relaxation of the MILP (the exact `milp` solver's model) in PDHG form — the same LP that HiGHS solves.

Variables: ``x[n,l,e] ∈ [0, 1]`` (0 where no user gains from the copy), the assignment
``a[u,n,l,e] ∈ [0, 1]`` (0 where useless), the pattern latency ``y[u,l,m] ∈ [0, ymax]`` with
``ymax`` = the largest fallback among its members (implied by the rows; it makes every box
finite). Rows (all ``≤``):

    a[u,n,l,e] − x[n,l,e] ≤ 0                                      (α ≥ 0)
    Σ_n a[u,n,l,e] ≤ 1                                             (β ≥ 0)
    −y[u,l,m] − Σ_n saving[u,n,l,e_k] a[u,n,l,e_k] ≤ −fallback[u,l,e_k]  for each member (γ ≥ 0)
    Σ_{l,e} size[l,e] x[n,l,e] ≤ relaxed_limit[n]                   (λ ≥ 0, both sides / min size)

minimizing ``Σ traffic·weight·y`` (patterns merged as sets, zero weights inactive;
``aggregation="sum"`` uses one-member patterns). The storage rows are the contract's limit raised
by float64 rounding (:func:`slimjax._storage.relaxed_limit`), so every placement
:func:`slimjax.feasible` accepts is a feasible point; the ``"highs"`` bound solves this same LP on
HiGHS and evaluates the same Lagrangian at HiGHS's duals. The certified value is the Lagrangian
``−q·(α,β,γ,λ) + Σ hi·min(0, c + Kᵀ(α,β,γ,λ))`` at the projected dual point, in float64
(:func:`dual_value64`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from slimjax._kernels import repeated_member
from slimjax._storage import relaxed_limit
from slimjax.bounds._pdhg import Formulation, lagrangian
from slimjax.bounds._threshold import host_fields

__all__ = ["AssignmentData", "build", "bytes_per_instance", "to_device", "FORMULATION", "dual_value64", "initial_primal", "initial_dual"]



class AssignmentData(NamedTuple):
    """Per-instance arrays (batched: leading axis B).

    useful: float [U, N, L, E] 1 where a exists; saving: float [U, N, L, E] fallback − latency there;
    hasx: float [N, L, E] 1 where x exists; anyu: float [U, L, E] 1 where the β row exists;
    gidx: int32 [U, L, M, K] flat index (u, l, e_k) into [U, L, E]; gm: float [U, L, M, K] 1 where the
    γ row exists; fbm: float [U, L, M, K] the member's fallback; cy: float [U, L, M] traffic·weight;
    ymax: float [U, L, M]; size: float [L, E]; qcap: float [N].
    """

    useful: Float[Array, "U N L E"]
    saving: Float[Array, "U N L E"]
    hasx: Float[Array, "N L E"]
    anyu: Float[Array, "U L E"]
    gidx: Int[Array, "U L M K"]
    gm: Float[Array, "U L M K"]
    fbm: Float[Array, "U L M K"]
    cy: Float[Array, "U L M"]
    ymax: Float[Array, "U L M"]
    size: Float[Array, "L E"]
    qcap: Float[Array, "N"]


def build(batch, aggregation: str = "max") -> dict:
    """The LP of every instance of ``batch`` (an Instance or the float64 host copy of
    ``lower_bound``, patterns merged in float64) as NumPy float64 arrays (leading axis B)."""
    lat, fb, pat, w, tr = host_fields(batch, aggregation)
    B, U, N, L, E = lat.shape
    M, K = pat.shape[-2:]
    dup = repeated_member(np.asarray(pat))
    gm = ~dup & (w > 0)[..., None]
    act = np.zeros((B, U, L, E))
    bi = np.arange(B)[:, None, None, None, None]
    ui = np.arange(U)[None, :, None, None, None]
    li = np.arange(L)[None, None, :, None, None]
    np.add.at(act, (np.broadcast_to(bi, pat.shape), np.broadcast_to(ui, pat.shape), np.broadcast_to(li, pat.shape),
                    pat), np.where(gm, 1.0, 0.0))
    useful = (lat < fb[:, :, None]) & (act[:, :, None] > 0)  # [B, U, N, L, E]
    saving = np.where(useful, fb[:, :, None] - np.where(np.isfinite(lat), lat, 0.0), 0.0)
    fbm = fb[bi, ui, li, pat]  # [B, U, L, M, K]
    gidx = (np.arange(U)[:, None, None, None] * L + np.arange(L)[None, :, None, None]) * E + pat
    ymax = np.where(gm, fbm, 0.0).max(-1)
    # Storage rows divided by the smallest expert size (the same LP; well-scaled for PDHG).
    size = np.asarray(batch.size, np.float64)
    unit = size.min(axis=(1, 2))
    cap = relaxed_limit(size, batch.capacity) / unit[:, None]  # every accepted placement fits (slimjax._storage)
    return dict(useful=useful.astype(np.float64), saving=saving, hasx=useful.any(1).astype(np.float64),
                anyu=useful.any(2).astype(np.float64), gidx=gidx.astype(np.int32), gm=gm.astype(np.float64),
                fbm=np.where(gm, fbm, 0.0), cy=tr[:, :, None, None] * w, ymax=ymax,
                size=size / unit[:, None, None], qcap=cap)


def bytes_per_instance(data: dict, itemsize: int) -> float:
    """Working set of one instance in the PDHG programs (bytes): its data and the state (v and
    the dual, each ~24 copies with the step temporaries and the check's pair of candidates, as
    calibrated for the threshold LP's loop)."""
    one = sum((4 if v.dtype.kind in "iu" else itemsize) * (v[0].size if v.ndim else 1) for v in data.values())
    U, N, L, E = data["useful"].shape[1:]
    M, K = data["gm"].shape[3:]
    v = N * L * E + U * N * L * E + U * L * M
    y = U * N * L * E + U * L * E + U * L * M * K + N
    return float(one + itemsize * 24 * (v + y))


def to_device(data: dict, dtype) -> AssignmentData:
    return AssignmentData(**{k: jnp.asarray(v, jnp.int32 if k == "gidx" else dtype) for k, v in data.items()})


def _gather(S, gidx):
    return S.reshape(-1)[gidx]


def _scatter(vals, gidx, shape):
    return jnp.zeros((int(np.prod(shape)),), vals.dtype).at[gidx.reshape(-1)].add(vals.reshape(-1)).reshape(shape)


def _K(d: AssignmentData, v, sign=-1.0):
    x, a, y = v
    alpha = d.useful * (a + sign * x[None])
    beta = d.anyu * a.sum(1)
    S = (d.saving * a).sum(1)  # [U, L, E]
    gamma = d.gm * (sign * y[..., None] + sign * _gather(S, d.gidx))
    lam = (d.size[None] * x).sum(axis=(1, 2))
    return alpha, beta, gamma, lam


def _KT(d: AssignmentData, dual, sign=-1.0):
    alpha, beta, gamma, lam = dual
    ga = d.gm * gamma
    G = _scatter(ga, d.gidx, d.anyu.shape)  # [U, L, E]
    xc = sign * (d.useful * alpha).sum(0) + lam[:, None, None] * d.size[None]
    ac = d.useful * alpha + d.anyu[:, None] * beta[:, None] + sign * d.saving * G[:, None]
    yc = sign * ga.sum(-1)
    return xc, ac, yc


def _Kabs(d, v):
    return _K(d, v, 1.0)


def _KTabs(d, y):
    return _KT(d, y, 1.0)


def _cost(d: AssignmentData):
    return jnp.zeros_like(d.hasx), jnp.zeros_like(d.useful), d.cy


def _rhs(d: AssignmentData):
    return jnp.zeros_like(d.useful), d.anyu, -d.fbm * d.gm, d.qcap


def _upper(d: AssignmentData):
    return d.hasx, d.useful, d.ymax


def _bound(d: AssignmentData, dual, kty=None):
    """The Lagrangian at y ≥ 0 (iterates are already projected; ``kty`` = Kᵀy when known)."""
    return lagrangian(FORMULATION, d, dual, kty)


def _primal(d: AssignmentData, v):
    """Σ traffic·weight·y at a feasible point repaired from v: x clipped and scaled per node to
    fit, a ≤ x and scaled to Σ_n a ≤ 1, y the largest member latency it implies."""
    x, a, _ = v
    x = jnp.clip(x, 0, d.hasx)
    used = (d.size[None] * x).sum(axis=(1, 2))
    x = x * jnp.where(used > d.qcap, d.qcap / jnp.where(used > 0, used, 1), 1.0)[:, None, None]
    a = jnp.minimum(jnp.clip(a, 0, d.useful), x[None])
    tot = a.sum(1)
    a = a * jnp.where(tot > 1, 1 / jnp.where(tot > 0, tot, 1), 1.0)[:, None]
    S = (d.saving * a).sum(1)
    y = jnp.where(d.gm > 0, d.fbm - _gather(S, d.gidx), 0).max(-1)
    return (d.cy * jnp.maximum(y, 0)).sum()


def initial_primal(d: AssignmentData):
    return jnp.zeros_like(d.hasx), jnp.zeros_like(d.useful), jnp.zeros_like(d.cy)


def initial_dual(d: AssignmentData):
    """γ = the pattern weight split equally over its members (y's reduced cost 0), the rest 0."""
    n = d.gm.sum(-1, keepdims=True)
    gamma = d.gm * d.cy[..., None] / jnp.where(n > 0, n, 1)
    return jnp.zeros_like(d.useful), jnp.zeros_like(d.anyu), gamma, jnp.zeros_like(d.qcap)


FORMULATION = Formulation(_K, _KT, _Kabs, _KTabs, _cost, _rhs, _upper, _bound, _primal, initial_primal,
                          initial_dual)


def dual_value64(data: dict, dual) -> np.ndarray:
    """The Lagrangian at the projected dual point (float64, a rounding margin of 1e-9 times the
    magnitudes is subtracted). Args: ``data`` from :func:`build`, ``dual`` = (α, β, γ, λ) batched."""
    alpha, beta, gamma, lam = (np.maximum(np.asarray(t, np.float64), 0) for t in dual)
    useful, saving, anyu, gm = data["useful"], data["saving"], data["anyu"], data["gm"]
    B, U, N, L, E = useful.shape
    alpha, beta, gamma = alpha * useful, beta * anyu, gamma * gm
    flat = data["gidx"].reshape(B, -1).astype(np.int64) + (np.arange(B) * U * L * E)[:, None]
    G = np.bincount(flat.reshape(-1), weights=gamma.reshape(-1), minlength=B * U * L * E).reshape(B, U, L, E)
    xc = -alpha.sum(1) + lam[:, :, None, None] * data["size"][:, None]
    ac = alpha + beta[:, :, None] - saving * G[:, :, None]
    yc = data["cy"] - gamma.sum(-1)
    lo = ((data["hasx"] * np.minimum(xc, 0)).sum(axis=(1, 2, 3)) + (useful * np.minimum(ac, 0)).sum(axis=(1, 2, 3, 4))
          + (data["ymax"] * np.minimum(yc, 0)).sum(axis=(1, 2, 3)))
    q = -beta.sum(axis=(1, 2, 3)) + (gamma * data["fbm"]).sum(axis=(1, 2, 3, 4)) - (lam * data["qcap"]).sum(-1)
    g = lo + q
    mag = (np.abs(data["hasx"] * xc).sum(axis=(1, 2, 3)) + np.abs(useful * ac).sum(axis=(1, 2, 3, 4))
           + np.abs(data["ymax"] * yc).sum(axis=(1, 2, 3)) + beta.sum(axis=(1, 2, 3))
           + (gamma * data["fbm"]).sum(axis=(1, 2, 3, 4)) + (lam * data["qcap"]).sum(-1))
    return g - 1e-9 * mag
