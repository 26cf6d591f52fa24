"""Routing generators, sampled in JAX from a PRNG key.

Each generator draws ``tokens`` routed tokens per user and turns them into the routing
distribution of the instance: ``patterns [U, L, M, K]`` (the K expert ids of each token at each
MoE layer, router order: best first) and ``weight [U, L, M]`` with ``M = tokens`` and equal
weights ``1 / M`` (the empirical distribution; identical patterns are not merged, so shapes stay
static). Kinds:

* ``latent`` (default): a synthetic router. Per layer a router ``W_l ∈ R^{r×E}`` (random unit-norm
  columns, one direction per expert) and a bias ``b_l ~ N(0, skew²)`` whose spread sets how skewed expert popularity
  is. ``clusters`` task centres ``c_j ~ N(0, I_r)``; each user has a task mix
  ``π_u ~ Dirichlet(task_alpha)``; a token draws a task ``j ~ π_u`` and a latent
  ``z = c_j + cluster_spread · ε`` (shared by all layers of the token, so routing is correlated
  across layers). The token's experts at layer l are ``top_K(z W_l + b_l + temperature · G)``
  with ``G`` standard Gumbel noise (``temperature = 0``: a deterministic router; ``> 0``: a
  Plackett–Luce sample from ``softmax((z W_l + b_l) / temperature)``). Co-activation comes from
  geometry: tokens of one task share experts.
* ``zipf``: per layer a random ranking of the experts with popularity ``p ∝ rank^-zipf_exponent``;
  each token's K experts are a Plackett–Luce sample without replacement from ``p``
  (independent across tokens and layers; the ranking is shared by all users).
* ``uniform``: every K-set equally likely (a uniformly random ordered K-subset).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from slimjax.generate._network import uniform_pool

__all__ = ["ROUTING_KINDS", "RoutingConfig", "as_routing_config", "gumbel", "latent_logits", "routing_shapes", "sample_routing", "top_k_indices"]

ROUTING_KINDS = ("latent", "zipf", "uniform")


@dataclasses.dataclass(frozen=True)
class RoutingConfig:
    """Parameters of the routing generator (frozen and hashable: a static jit argument).

    Attributes:
      kind: ``"latent"`` (default), ``"zipf"`` or ``"uniform"``.
      tokens: sampled tokens per user; the number of patterns ``M``.
      latent_dim: ``r``, dimension of the token latent (latent).
      clusters: number of task clusters ``C`` (latent).
      cluster_spread: standard deviation of a token's latent around its task centre (latent;
        larger = more diverse tokens within a task, fewer repeated patterns).
      skew: standard deviation of the router bias ``b_l`` (latent; 0 = no popularity skew
        beyond what the clusters give, larger = more skewed expert popularity).
      temperature: Gumbel noise scale of the router (latent; 0 = deterministic top-K).
      task_spread: standard deviation of the log task weights of each user's task mix
        (latent; 0 = all tasks equally likely, large = each user works on few tasks).
      zipf_exponent: Zipf exponent ``s`` of expert popularity (zipf; 0 = uniform).
    """

    kind: str = "latent"
    tokens: int = 256
    latent_dim: int = 16
    clusters: int = 64
    cluster_spread: float = 0.6
    skew: float = 0.1
    temperature: float = 0.0
    task_spread: float = 0.5
    zipf_exponent: float = 1.0

    def __post_init__(self):
        if self.kind not in ROUTING_KINDS:
            raise ValueError(f"routing.kind: must be one of {ROUTING_KINDS}, got {self.kind!r}")
        for f in ("tokens", "latent_dim", "clusters"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"routing.{f}: must be an integer >= 1, got {v!r}")
        for f in ("cluster_spread", "skew", "temperature", "task_spread", "zipf_exponent"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and 0 <= v < math.inf):
                raise ValueError(f"routing.{f}: must be a finite number >= 0, got {v!r}")

    def replace(self, **changes) -> RoutingConfig:
        return dataclasses.replace(self, **changes)


def as_routing_config(routing: RoutingConfig | Mapping[str, Any] | str | None) -> RoutingConfig:
    """``None`` -> defaults; a kind name -> that kind with defaults; a mapping -> its fields."""
    if routing is None:
        return RoutingConfig()
    if isinstance(routing, RoutingConfig):
        return routing
    if isinstance(routing, str):
        return RoutingConfig(kind=routing)
    if isinstance(routing, Mapping):
        fields = {f.name for f in dataclasses.fields(RoutingConfig)}
        d = dict(routing)
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"routing: unknown field(s) {unknown}; valid fields: {sorted(fields)}")
        return RoutingConfig(**d)
    raise ValueError(f"routing: expected a RoutingConfig, a kind name, a mapping or None, got {type(routing).__name__}")


def gumbel(u: Array) -> Array:
    return -jnp.log(-jnp.log(u))


def _latent_router(r: dict, skew: Any, task_spread: Any, C: int) -> tuple[Array, Array, Array]:
    """The latent router's parts from the pool ``r``: ``(W, b, task)`` with ``W`` the routers'
    unit columns as one ``[r, L·E]`` matrix, ``b`` the bias ``[L, E]`` and ``task`` the task of
    each (user, token) ``[U, M]`` (inverse CDF of the user's task mix). Shared with the
    locality generator (same draws, same arithmetic)."""
    L, rd, E = r["W"].shape
    W = r["W"] / jnp.linalg.norm(r["W"], axis=1, keepdims=True)  # [L, r, E] unit columns
    b = skew * r["b"]  # [L, E]
    logmix = task_spread * r["mix"]  # [U, C] log task weights
    cdf = jnp.cumsum(jax.nn.softmax(logmix, axis=-1), axis=-1)  # [U, C]
    task = jnp.minimum((r["task"][:, :, None] > cdf[:, None, :]).sum(-1), C - 1)  # [U, M] inverse CDF
    return W.transpose(1, 0, 2).reshape(rd, L * E), b, task


def latent_logits(r: dict, cfg: RoutingConfig, U: int, L: int, E: int) -> Array:
    W, b, task = _latent_router(r, cfg.skew, cfg.task_spread, cfg.clusters)
    z = r["centres"][task] + cfg.cluster_spread * r["z"]  # [U, M, r]
    M = z.shape[1]
    zw = (z.reshape(U * M, cfg.latent_dim) @ W).reshape(U, M, L, E)  # one GEMM
    return zw.transpose(0, 2, 1, 3) + b[None, :, None, :]  # [U, L, M, E]


def _zipf_logits(r: dict, cfg: RoutingConfig, U: int, L: int, E: int) -> Array:
    dtype = r["perm"].dtype
    logp = -cfg.zipf_exponent * jnp.log(jnp.arange(1, E + 1, dtype=dtype))  # [E] by rank
    rank = jnp.argsort(jnp.argsort(r["perm"], axis=-1), axis=-1)  # [L, E] a random rank per expert
    logp_expert = logp[rank]  # [L, E]
    return jnp.broadcast_to(logp_expert[None, :, None, :], (U, L, cfg.tokens, E))


def top_k_indices(x: Array, k: int) -> Array:
    """Indices of the k largest entries along the last axis, largest first.

    For small k, k masked argmax passes (several times faster than ``lax.top_k`` on CPU);
    ``lax.top_k`` otherwise. Ties go to the lower index in both.
    """
    if k > 8:
        return jax.lax.top_k(x, k)[1]
    E = x.shape[-1]
    out = []
    for _ in range(k):
        i = jnp.argmax(x, axis=-1)
        out.append(i)
        x = jnp.where(jnp.arange(E) == i[..., None], -jnp.inf, x)
    return jnp.stack(out, axis=-1)


def routing_shapes(cfg: RoutingConfig, layers: int, experts: int, users: int = 1) -> dict[str, tuple[int, ...]]:
    """The named random arrays :func:`sample_routing` draws (one uniform pool)."""
    U, L, E, M = users, layers, experts, cfg.tokens
    if cfg.kind == "latent":
        rd, C = cfg.latent_dim, cfg.clusters
        shapes = {"W": (L, rd, E), "b": (L, E), "centres": (C, rd), "mix": (U, C), "task": (U, M), "z": (U, M, rd)}
    elif cfg.kind == "zipf":
        shapes = {"perm": (L, E)}
    else:
        shapes = {}
    noise_scale = cfg.temperature if cfg.kind == "latent" else 1.0
    if noise_scale > 0:
        shapes["gumbel"] = (U, L, M, E)
    return shapes


def sample_routing(
    key: Array | None,
    cfg: RoutingConfig,
    layers: int,
    experts: int,
    top_k: int,
    users: int = 1,
    dtype: Any = jnp.float32,
    *,
    uniform: Array | None = None,
) -> tuple[Int[Array, "U L M K"], Float[Array, "U L M"]]:
    """Sample routing patterns for one instance.

    Args:
      key: a PRNG key.
      cfg: the routing configuration (static).
      layers: ``L``, the model's MoE layers.
      experts: ``E``, routed experts per layer.
      top_k: ``K``, experts per token and layer.
      users: ``U``.
      dtype: float dtype of ``weight``.
      uniform: the pool's uniform draw made beforehand (see
        :func:`~slimjax.generate._network.uniform_pool`); then ``key`` is unused.

    Returns:
      ``(patterns, weight)``: int32 ``[U, L, M, K]`` (distinct ids within a pattern) and
      ``[U, L, M]`` equal to ``1 / M`` with ``M = cfg.tokens``.
    """
    if top_k > experts:
        raise ValueError(f"top_k: must be <= experts={experts}, got {top_k}")
    U, L, E, M = users, layers, experts, cfg.tokens
    noise_scale = cfg.temperature if cfg.kind == "latent" else 1.0
    shapes = routing_shapes(cfg, L, E, U)
    r = uniform_pool(key, shapes, dtype, normal=("W", "b", "centres", "mix", "z"), uniform=uniform)
    if cfg.kind == "latent":
        logits = latent_logits(r, cfg, U, L, E)
    elif cfg.kind == "zipf":
        logits = _zipf_logits(r, cfg, U, L, E)
    else:  # uniform
        logits = jnp.zeros((U, L, M, E), dtype)
    if noise_scale > 0:
        logits = logits + noise_scale * gumbel(r["gumbel"])
    patterns = top_k_indices(logits, top_k)
    weight = jnp.full((U, L, M), 1.0 / M, dtype)
    return patterns.astype(jnp.int32), weight
