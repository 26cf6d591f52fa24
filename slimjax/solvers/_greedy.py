"""Greedy over (node, expert) pairs — the paper's method for K = 1, method ``greedy``.

Two greedy rules are run from the same start and the better placement (lower J) is kept:

- **cost-benefit**: repeatedly add the pair ``(n, (l, e))`` that fits on node ``n`` and has the
  largest marginal gain per unit of size ``F(x + (n,l,e)) − F(x)) / size[l]``;
- **plain gain**: the same with the marginal gain itself.

With ``p > 0`` (partial enumeration) both rules are also started from every feasible set of at
most ``p`` pairs and the best of all runs is returned. ``p="auto"`` (default) picks the largest
``p ≤ 2`` whose number of starts stays within ``enum_budget`` (so tiny instances get p = 2 and
realistic ones p = 0).

Guarantees (stated for what they cover, not more): for K = 1 (or ``aggregation="sum"``) the gain
``F(x) = J(0) − J(x)`` is monotone submodular (facility-location form). For a *single* knapsack,
cost-benefit greedy with partial enumeration of depth 3 reaches ``1 − 1/e`` of the optimum
(Sviridenko 2004), and the better of cost-benefit and plain greedy without enumeration reaches
``(1 − 1/e)/2`` (Khuller, Moss & Naor 1999). With equal sizes the node capacities form a partition
matroid, where plain greedy reaches 1/2 (Fisher, Nemhauser & Wolsey 1978). Our constraint (one
knapsack per node, the general case) is covered by none of these with the 1 − 1/e constant; the
tests *measure* the ratio against brute force instead. For K ≥ 2 (``"max"``) F is not submodular
and greedy is a heuristic: when no single pair has a positive gain (co-activated experts are only
useful together), the pair with the best *surrogate* gain (per-expert activation probability ×
latency decrease) is added, so the partner of an expert becomes profitable at the next step.

Implementation: per instance a ``lax.while_loop`` bounded by ``N·L·E`` steps; each step is one
batched argmax over all pairs; the marginal gains of all pairs are kept in a table and only the
layer touched by the last addition is recomputed (the batched counterpart of lazy evaluation:
other layers' gains are unchanged because J separates per layer). Starts × rules are vmapped.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from functools import partial
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Int

from slimjax._instance import Instance
from slimjax.ops import add_gain_layer, expert_frequency, pattern_top
from slimjax.solvers._base import Prepared, Solver, check_int, document_options, option
__all__ = ["Greedy", "enumeration_starts", "greedy_batch", "greedy_instance"]

_NEG = -jnp.inf


def greedy_instance(
    inst: Instance,
    size_units: Int[ArrayLike, "L"],
    capacity_units: Int[ArrayLike, "N"],
    start: Bool[Array, "N L E"],
    ratio: Bool[Array, ""],
    *,
    aggregation: str = "max",
    surrogate: bool = False,
) -> tuple[Bool[Array, "N L E"], Array, Int[Array, ""]]:
    """Greedy completion of ``start`` on one instance.

    Args:
      inst: one (unbatched) instance.
      size_units: int32 [L]; capacity_units: int32 [N] (the storage grid).
      start: bool [N, L, E] initial pairs (a start that does not fit returns value ``inf``).
      ratio: bool scalar; True = gain per unit of size (cost-benefit), False = plain gain.
      aggregation: "max" or "sum" (static).
      surrogate: optimise the K = 1 surrogate Σ activation-probability · d (co-activation blind).

    Returns:
      (placement bool [N, L, E], value — the J (or surrogate) it reaches, steps int32).
    """
    U, N, L, E = inst.latency.shape
    su = jnp.asarray(size_units, jnp.int32)
    cu = jnp.asarray(capacity_units, jnp.int32)
    lat, fb, pat, w, tr = inst.latency, inst.fallback, inst.patterns, inst.weight, inst.traffic
    exact_max = aggregation == "max" and not surrogate
    # per-expert weights of the separable (sum / surrogate) gain
    freq = expert_frequency(pat, w, E, distinct=surrogate or aggregation == "max")  # [U, L, E]
    cost = jnp.where(ratio, su.astype(fb.dtype), jnp.ones_like(su, fb.dtype))  # [L]

    def layer_gains(d_l, l):
        lat_l = lat[:, :, l, :]
        sep = jnp.einsum("ue,une->ne", tr[:, None] * freq[:, l], d_l[:, None, :] - jnp.minimum(d_l[:, None, :], lat_l))
        if exact_max:
            top_v, top_ids, _ = pattern_top(d_l, pat[:, l], 2)
            g = add_gain_layer(lat_l, d_l, top_v, top_ids, w[:, l], tr)
            return g, sep
        return sep, jnp.zeros_like(sep)

    def value(d):
        if surrogate:
            return (tr[:, None, None] * freq * d).sum()
        member = jnp.take_along_axis(d[:, :, None, :], pat, axis=-1)
        pl = member.max(-1) if aggregation == "max" else member.sum(-1)
        return (tr[:, None, None] * w * pl).sum()

    x0 = jnp.asarray(start, bool)
    d0 = jnp.minimum(fb, jnp.where(x0[None], lat, jnp.inf).min(axis=1))  # [U, L, E]
    G0, S0 = jax.vmap(layer_gains, in_axes=(1, 0), out_axes=1)(d0, jnp.arange(L))  # [N, L, E]
    used0 = jnp.einsum("nle,l->n", x0.astype(jnp.int32), su)
    ok0 = (used0 <= cu).all()

    def cond(c):
        return ~c[-1] & (c[0] < N * L * E)

    def body(c):
        i, x, d, used, G, S, _ = c
        free = ~x & ((used[:, None] + su[None, :]) <= cu[:, None])[:, :, None]  # [N, L, E]
        prim = jnp.where(free & (G > 0), G / cost[None, :, None], _NEG).reshape(-1)
        sec = jnp.where(free & (S > 0), S / cost[None, :, None], _NEG).reshape(-1)
        use_prim = prim.max() > _NEG
        score = jnp.where(use_prim, prim, sec)
        flat = jnp.argmax(score)
        done = score[flat] == _NEG
        n, l, e = jnp.unravel_index(flat, (N, L, E))
        x_new = x.at[n, l, e].set(True)
        d_l = d[:, l].at[:, e].min(lat[:, n, l, e])
        g_l, s_l = layer_gains(d_l, l)
        keep = lambda new, old: jnp.where(done, old, new)  # noqa: E731
        return (
            i + 1,
            keep(x_new, x),
            keep(d.at[:, l].set(d_l), d),
            keep(used.at[n].add(su[l]), used),
            keep(G.at[:, l].set(g_l), G),
            keep(S.at[:, l].set(s_l), S),
            done,
        )

    init = (jnp.int32(0), x0, d0, used0, G0, S0, ~ok0)
    steps, x, d, _, _, _, _ = jax.lax.while_loop(cond, body, init)
    val = jnp.where(ok0, value(d), jnp.inf)
    return x, val, steps


@partial(jax.jit, static_argnames=("aggregation", "surrogate", "uniform"))
def greedy_batch(
    batch: Instance,
    size_units: Int[Array, "B L"],
    capacity_units: Int[Array, "B N"],
    starts: Bool[Array, "S N L E"],
    *,
    aggregation: str = "max",
    surrogate: bool = False,
    start: Bool[Array, "B N L E"] | None = None,
    uniform: bool = False,
):
    """Both greedy rules from every start, on every instance; the best run per instance.

    ``start`` (optional, per instance) is added to every start (the greedy completes it).
    ``uniform`` (static): every instance's size units are equal across layers and a power of
    two, so cost-benefit divides every gain by the same number, exactly, and makes the same
    choices as plain gain: only one run per start (reported as rule 0, which the better-of-two
    returns on equal values).

    Returns:
      placement bool [B, N, L, E], value [B], rule int32 [B] (0 cost-benefit, 1 plain),
      start int32 [B] (index into ``starts``), steps int32 [B].
    """

    def one(inst, su, cu, x0):
        def run(start, ratio):
            return greedy_instance(inst, su, cu, start, ratio, aggregation=aggregation, surrogate=surrogate)

        S = starts.shape[0]
        own = starts if x0 is None else starts | x0[None]
        if uniform:
            xs, vals, steps = jax.vmap(lambda s: run(s, jnp.bool_(False)))(own)
            b = jnp.argmin(vals)
            return xs[b], vals[b], jnp.int32(0), b.astype(jnp.int32), steps[b]
        st = jnp.concatenate([own, own])
        ratio = jnp.concatenate([jnp.ones(S, bool), jnp.zeros(S, bool)])
        xs, vals, steps = jax.vmap(run)(st, ratio)
        b = jnp.argmin(vals)
        return xs[b], vals[b], (b // S).astype(jnp.int32), (b % S).astype(jnp.int32), steps[b]

    if start is None:
        return jax.vmap(lambda i, su, cu: one(i, su, cu, None))(batch, size_units, capacity_units)
    return jax.vmap(one)(batch, size_units, capacity_units, start)


def enumeration_starts(N: int, L: int, E: int, p, budget: int) -> np.ndarray:
    """All sets of at most ``p`` pairs as start placements bool [S, N, L, E] (``p="auto"``: the
    largest p ≤ 2 with at most ``budget`` starts)."""
    n = N * L * E
    if p == "auto":
        p = 0
        for q in (1, 2):
            if sum(math.comb(n, i) for i in range(q + 1)) <= budget:
                p = q
    if not isinstance(p, (int, np.integer)) or isinstance(p, bool) or p < 0:
        raise ValueError(f"p: partial enumeration depth must be 'auto' or an int >= 0, got {p!r}")
    count = sum(math.comb(n, i) for i in range(int(p) + 1))
    if count > budget:
        raise ValueError(
            f"p: depth {p} needs {count} greedy starts on N·L·E = {n} pairs, more than enum_budget={budget}; "
            "lower p or raise enum_budget"
        )
    starts = np.zeros((count, n), bool)
    r = 0
    for size in range(int(p) + 1):
        for combo in itertools.combinations(range(n), size):
            starts[r, list(combo)] = True
            r += 1
    return starts.reshape(count, N, L, E)


def _greedy_bytes(shape, starts: int) -> float:
    U, N, L, E, M, K = shape
    n = N * L * E
    return 4.0 * 2 * starts * (8 * n + 6 * U * L * E + 4 * U * L * M * K + 2 * U * N * M * L)


def enumeration_count(N: int, L: int, E: int, p, budget: int) -> int:
    """Number of greedy starts of :func:`enumeration_starts` (without building them)."""
    n = N * L * E
    if p == "auto":
        p = 0
        for q in (1, 2):
            if sum(math.comb(n, i) for i in range(q + 1)) <= budget:
                p = q
    return sum(math.comb(n, i) for i in range(int(p) + 1))


@document_options
@dataclasses.dataclass(frozen=True)
class Greedy(Solver):
    """Cost-benefit and plain-gain greedy over (node, expert) pairs, the better of the two — the
    paper's method for K = 1 (see the module docstring for the guarantees it has and has not).

    As a later stage of a :func:`~slimjax.solvers.chain` it completes the previous placement.
    Cost: at most N·L·E steps, each one batched argmax over all pairs, times 2·starts.
    """

    name: ClassVar[str] = "greedy"
    refines: ClassVar[bool] = True
    p: Any = option("auto", "partial enumeration depth: every start of at most p pairs (int >= 0), or 'auto' = the "
                    "largest p <= 2 with at most enum_budget starts; cost x starts")
    enum_budget: int = option(256, "largest number of enumeration starts (int >= 1)")

    def validate(self) -> None:
        check_int("p", self.p, 0, auto=True)
        check_int("enum_budget", self.enum_budget, 1)

    def prepare(self, batch, grid, aggregation):
        N, L, E = batch.latency.shape[-3:]
        starts = enumeration_starts(N, L, E, self.p, int(self.enum_budget))
        su = np.asarray(grid.size_units)
        # equal sizes across layers, a power of two (so dividing by it is exact, ties included):
        # the two rules make the same choices, run one (greedy_batch's ``uniform``)
        uniform = bool((su == su[..., :1]).all() and (su > 0).all() and ((su & (su - 1)) == 0).all())
        return Prepared(static=(aggregation, len(starts), uniform), shared=jnp.asarray(starts))

    def chunk(self, static, shared, batch, size_units, capacity_units, per_instance, keys, start):
        aggregation, _, uniform = static
        x, val, rule, st, steps = greedy_batch(batch, size_units, capacity_units, shared, aggregation=aggregation,
                                               start=start, uniform=uniform)
        return x, {"rule": rule, "start": st, "steps": steps}

    def bytes_per_instance(self, shape, static) -> float:
        return _greedy_bytes(shape, static[1])
