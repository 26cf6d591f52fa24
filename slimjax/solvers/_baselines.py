"""Baselines: ``random``, ``popularity``, ``layer-uniform``, ``coactivation-blind``.

All are pure JAX, vmapped over the batch and jitted, on the integer storage grid:

- ``random``: every node is filled with experts in a random order (each instance's own key), each one taken when it still fits.
- ``popularity`` (LFU, what a plain cache does): nodes from the fastest (traffic-weighted mean
  latency over the users that reach them) to the slowest; each is filled with the most frequently
  activated experts first (activation probability Σ_u traffic·P(e in the token's top-K)), skipping
  copies that cannot help (no user that activates the expert gets it faster than it already does).
- ``layer-uniform``: like ``popularity`` but round-robin over layers (every layer's most popular
  helpful expert, then every layer's second, ...), i.e. equal slots per layer while they fit.
- ``coactivation-blind``: the ``greedy`` solver on the K = 1 surrogate (per-expert activation
  probabilities, Σ instead of max), which isolates the value of modelling co-activation.
- ``eplb``: the idea of DeepSeek's expert-parallel load balancer, the placement serving stacks use.
  Hot experts are replicated, and the replicas are packed so that the nodes' loads are balanced.
  The load of an expert is its activation probability. Replicas are taken greedily by load per
  replica (expert e's k-th copy has load pop_e / k, k ≤ the usable nodes) while the total storage
  holds them. Then, by decreasing per-replica load, each goes to the least-loaded usable node
  (ties: the fastest) that has room and does not hold that expert yet. It ignores latencies by
  design: it balances work, it does not minimise J. A usable node is one some user reaches.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from slimjax._instance import Instance
from slimjax.ops import expert_frequency, node_orders, priority_fill
from slimjax.solvers._base import Solver
from slimjax.solvers._greedy import greedy_batch

__all__ = ["Random", "Popularity", "LayerUniform", "EPLB", "CoactivationBlind", "baseline_batch", "eplb_instance", "popularity_instance", "random_instance"]

_NEG = -jnp.inf


def popularity_instance(inst: Instance, size_units, capacity_units, *, layer_uniform: bool = False):
    """LFU (``layer_uniform=False``) or layer-uniform placement of one instance, bool [N, L, E]."""
    U, N, L, E = inst.latency.shape
    act = inst.traffic[:, None, None] * expert_frequency(inst.patterns, inst.weight, E, distinct=True)  # [U, L, E]
    pop = act.sum(0)  # [L, E]
    cu = jnp.asarray(capacity_units, jnp.int32)
    su = jnp.asarray(size_units, jnp.int32)

    def node(d, n):
        lat_n = inst.latency[:, n]  # [U, L, E]
        helpful = (act * jnp.maximum(d - lat_n, 0)).sum(0) > 0  # [L, E]
        if layer_uniform:
            masked = jnp.where(helpful, pop, _NEG)
            rank = jnp.argsort(jnp.argsort(-masked, axis=1, stable=True), axis=1)  # 0 = most popular
            prio = -rank.astype(pop.dtype) + 0.5 * pop / jnp.maximum(pop.max(), 1e-30)
        else:
            prio = pop
        take = priority_fill(jnp.where(helpful, prio, _NEG), su, cu[n])
        d = jnp.where(take[None], jnp.minimum(d, lat_n), d)
        return d, take

    order = node_orders(inst.latency, inst.traffic, capacity_units)["fastest-first"]
    _, takes = jax.lax.scan(node, inst.fallback, order)  # [N (in order), L, E]
    return jnp.zeros((N, L, E), bool).at[order].set(takes)


def random_instance(inst: Instance, size_units, capacity_units, key) -> Bool[Array, "N L E"]:
    """Each node filled with experts in a uniformly random order while they fit."""
    U, N, L, E = inst.latency.shape
    prio = jax.random.uniform(key, (N, L, E))
    su = jnp.asarray(size_units, jnp.int32)
    return jax.vmap(lambda p, c: priority_fill(p, su, c))(prio, jnp.asarray(capacity_units, jnp.int32))


def eplb_instance(inst: Instance, size_units, capacity_units) -> Bool[Array, "N L E"]:
    """EPLB-style replicate-and-balance placement of one instance (see the module docstring)."""
    U, N, L, E = inst.latency.shape
    pop = (inst.traffic[:, None, None] * expert_frequency(inst.patterns, inst.weight, E, distinct=True)).sum(0)
    su = jnp.asarray(size_units, jnp.int32)
    order = node_orders(inst.latency, inst.traffic, capacity_units)["fastest-first"]  # pack in speed order, so that load ties go to the fastest node
    usable = (jnp.isfinite(inst.latency).any(axis=(2, 3)) & (inst.traffic[:, None] > 0)).any(0)[order]  # [N]
    cap = jnp.where(usable, jnp.asarray(capacity_units, jnp.int32)[order], 0)
    # 1. replicas: the k-th copy of (l, e) carries pop / k; take the largest while the storage holds them
    k = jnp.arange(1, N + 1, dtype=pop.dtype)
    share = (pop[..., None] / k).reshape(-1)  # [L·E·N], item = (l·E + e)·N + (k − 1)
    item_size = jnp.repeat(su, E * N)
    valid = (jnp.repeat(pop.reshape(-1), N) > 0) & (jnp.tile(jnp.arange(N), L * E) < usable.sum())
    by_share = jnp.argsort(jnp.where(valid, -share, jnp.inf), stable=True)
    fits = jnp.cumsum(jnp.where(valid, item_size, 0)[by_share]) <= cap.sum()
    chosen = jnp.zeros(L * E * N, bool).at[by_share].set(valid[by_share] & fits)
    copies = chosen.reshape(L * E, N).sum(-1)  # replicas per expert
    load = pop.reshape(-1) / jnp.maximum(copies, 1)  # per replica
    # 2. packing, by decreasing per-replica load: least-loaded node with room that lacks the expert
    expert = jnp.repeat(jnp.arange(L * E), N)
    pack = jnp.argsort(jnp.where(chosen, -load[expert], jnp.inf), stable=True)

    def place(carry, i):
        node_load, rem, x = carry
        e = expert[i]
        ok = chosen[i] & (rem >= item_size[i]) & ~x[:, e]
        n = jnp.argmin(jnp.where(ok, node_load, jnp.inf))
        go = ok.any()
        node_load = node_load.at[n].add(jnp.where(go, load[e], 0))
        rem = rem.at[n].add(jnp.where(go, -item_size[i], 0))
        return (node_load, rem, x.at[n, e].set(x[n, e] | go)), None

    init = (jnp.zeros(N, pop.dtype), cap, jnp.zeros((N, L * E), bool))
    (_, _, x), _ = jax.lax.scan(place, init, pack)
    return jnp.zeros((N, L, E), bool).at[order].set(x.reshape(N, L, E))


@partial(jax.jit, static_argnames=("kind",))
def baseline_batch(batch, size_units, capacity_units, keys, *, kind: str):
    """One baseline (``kind``: random, popularity, layer-uniform, eplb) vmapped over a batch."""
    if kind == "eplb":
        return jax.vmap(eplb_instance)(batch, size_units, capacity_units)
    if kind == "random":
        return jax.vmap(random_instance)(batch, size_units, capacity_units, keys)
    lu = kind == "layer-uniform"
    return jax.vmap(lambda i, s, c: popularity_instance(i, s, c, layer_uniform=lu))(batch, size_units, capacity_units)


class _Baseline(Solver):
    def chunk(self, static, shared, batch, size_units, capacity_units, per_instance, keys, start):
        return baseline_batch(batch, size_units, capacity_units, keys, kind=self.name), {}


@dataclasses.dataclass(frozen=True)
class Random(_Baseline):
    """Each node filled with experts in a uniformly random order (the instance's key) while they fit."""

    name: ClassVar[str] = "random"


@dataclasses.dataclass(frozen=True)
class Popularity(_Baseline):
    """LFU, what a plain cache does: most frequently activated experts first, fastest node first,
    skipping copies that help no user."""

    name: ClassVar[str] = "popularity"


@dataclasses.dataclass(frozen=True)
class LayerUniform(_Baseline):
    """Equal slots per layer (round-robin over layers), most popular first, fastest node first."""

    name: ClassVar[str] = "layer-uniform"


@dataclasses.dataclass(frozen=True)
class EPLB(_Baseline):
    """The idea of DeepSeek's expert-parallel load balancer: replicate hot experts and pack the
    replicas for balanced node load, ignoring latency (see the module docstring)."""

    name: ClassVar[str] = "eplb"


@dataclasses.dataclass(frozen=True)
class CoactivationBlind(Solver):
    """Greedy on the K = 1 surrogate (per-expert activation probabilities, sum instead of max):
    isolates the value of modelling co-activation."""

    name: ClassVar[str] = "coactivation-blind"

    def chunk(self, static, shared, batch, size_units, capacity_units, per_instance, keys, start):
        N, L, E = batch.latency.shape[-3:]
        x, _, rule, _, steps = greedy_batch(
            batch, size_units, capacity_units, jnp.zeros((1, N, L, E), bool), aggregation="sum", surrogate=True
        )
        return x, {"rule": rule, "steps": steps}
