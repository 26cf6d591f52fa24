"""Per-token routing with temporal locality: traces where a per-token cache can win.

Real chat-decode traces reuse few experts from one token to the next (measured on the shared
GSM8K traces: 10-13 % of a Qwen1.5-MoE token's experts were routed for the previous token, 24 %
for OLMoE, against 7 % and 18 % for the same tokens shuffled; see ``docs/caching.md``), so a
planned placement beats a cache there. This generator adds two knobs to the ``latent`` router
(:mod:`slimjax.generate.routing`) to make traces with more reuse, in one token stream:

* **locality** ``ρ``: at each token and layer, one *source* token is picked uniformly among the
  last ``window`` tokens, and each of the token's K slots independently (probability ``ρ``)
  re-uses the expert in the same slot of the source token. The remaining slots are the token's
  own latent router's best experts among those not re-used. ``ρ = 0``: the ``latent`` router;
  ``ρ = 1``: every token repeats an expert set of the last ``window`` tokens exactly.
* **drift** ``δ``: the hot set moves. The stream works on one task (a cluster of the latent
  router) and at each token redraws it from its task mix with probability ``δ`` (token 0 always
  draws). ``δ = 1``: tasks are independent per token, as in ``latent``; ``δ = 0``: one task for
  the whole trace; in between the task persists ``1/δ`` tokens on average, so the experts a
  fresh token picks drift from one task's set to another's.

With ``ρ = 0`` and ``δ = 1`` the tokens are exactly those of
:func:`~slimjax.generate.sample_routing` (``kind="latent"``, ``tokens = T``, one user) with the
same key: the latent part draws the same pool, and the locality draws come from
``jax.random.fold_in(key, 1)``.

The core (:func:`locality_tokens`) is jitted: a ``lax.scan`` over tokens with the last ``window``
expert sets as the carry; ``locality``, ``drift`` and the latent router's spreads are traced,
so a sweep over them compiles once per shape. :func:`locality_trace` wraps it into a
:class:`slimjax.traces.Trace` (with the task of each token as ``task``), so the result flows
through :func:`slimjax.traces.patterns`, :func:`slimjax.replay` and
:func:`slimjax.dynamic.timeline_from_trace`. :func:`reuse_rates` is the statistic it is
calibrated with; :data:`LOCALITY_PRESETS` the configurations calibrated on the shared traces.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from slimjax.generate._models import ModelPreset, get_model
from slimjax.generate._network import uniform_pool
from slimjax.generate._routing import RoutingConfig, _latent_router, gumbel, routing_shapes, top_k_indices
from slimjax.traces import Trace

__all__ = [
    "LOCALITY_PRESETS",
    "LocalityConfig",
    "as_locality_config",
    "locality_tokens",
    "locality_trace",
    "reuse_rates",
]

_INT_FIELDS = ("tokens", "window", "latent_dim", "clusters")
_UNIT_FIELDS = ("locality", "drift")
_NONNEG_FIELDS = ("cluster_spread", "skew", "temperature", "task_spread")


@dataclasses.dataclass(frozen=True)
class LocalityConfig:
    """Parameters of the locality generator (frozen, hashable).

    Attributes:
      tokens: ``T``, tokens in the stream.
      locality: ``ρ`` in [0, 1], the probability that a slot of a token (per layer) re-uses the
        expert of a recent token (0 = the ``latent`` router, 1 = every token repeats a recent set).
      window: how many recent tokens a token may re-use from (the source is uniform among the
        last ``window``; 1 = the previous token).
      drift: ``δ`` in [0, 1], the per-token probability that the stream's task (the hot set) is
        redrawn from its task mix (1 = independent tasks per token as in ``latent``, 0 = one
        task for the whole stream).
      latent_dim, clusters, cluster_spread, skew, temperature, task_spread: the ``latent``
        router's parameters (:class:`~slimjax.generate.RoutingConfig`; ``task_spread`` shapes
        the stream's task mix).

    Raises:
      ValueError: naming the field and the rule, for a value out of range.
    """

    tokens: int = 4096
    locality: float = 0.0
    window: int = 1
    drift: float = 1.0
    latent_dim: int = 16
    clusters: int = 64
    cluster_spread: float = 0.6
    skew: float = 0.1
    temperature: float = 0.0
    task_spread: float = 0.5

    def __post_init__(self):
        for f in _INT_FIELDS:
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"locality.{f}: must be an integer >= 1, got {v!r}")
            object.__setattr__(self, f, int(v))
        for f in _UNIT_FIELDS:
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not 0 <= v <= 1:
                raise ValueError(f"locality.{f}: must be a number in [0, 1], got {v!r}")
            object.__setattr__(self, f, float(v))
        for f in _NONNEG_FIELDS:
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not 0 <= v < math.inf:
                raise ValueError(f"locality.{f}: must be a finite number >= 0, got {v!r}")
            object.__setattr__(self, f, float(v))

    def replace(self, **changes) -> LocalityConfig:
        return dataclasses.replace(self, **changes)

    def routing(self) -> RoutingConfig:
        """The ``latent`` :class:`~slimjax.generate.RoutingConfig` of the fresh (non-re-used) experts."""
        return RoutingConfig(
            kind="latent",
            tokens=self.tokens,
            latent_dim=self.latent_dim,
            clusters=self.clusters,
            cluster_spread=self.cluster_spread,
            skew=self.skew,
            temperature=self.temperature,
            task_spread=self.task_spread,
        )


LOCALITY_PRESETS: dict[str, dict[str, Any]] = {
    # Qwen1.5-MoE-A2.7B-Chat, 3 layers (weiran0129__vLLM-MoE-Logger): reuse w=1/4/16/64 0.115/0.300/0.704/0.974
    "qwen1_5_moe_a2_7b": {"drift": 0.7, "skew": 0.2, "cluster_spread": 1.5, "task_spread": 2.0},
    # OLMoE-1B-7B, layer 0 (KaxitPandya__cerebras-assesment2): 0.243/0.526/0.875/0.993
    "olmoe_1b_7b": {"drift": 0.3, "skew": 0.5, "cluster_spread": 1.5, "task_spread": 0.5},
}
"""Latent and drift parameters calibrated on the shared per-token GSM8K traces at ``locality = 0``,
by model preset: the point of the grid of ``experiments/caching/run.py --calibrate`` closest to
the traces' reuse rates at windows 1, 4, 16, 64 (each within 0.01; the measured rates are in the
handbook's "Placement or caching?" page). Use with the model's ``layers``/``experts``/``top_k``
and set ``locality`` (and ``window``) on top: ``as_locality_config({"preset": name, "locality": 0.9})``."""


def as_locality_config(locality: LocalityConfig | Mapping[str, Any] | str | None) -> LocalityConfig:
    """``None`` -> defaults; a preset name (:data:`LOCALITY_PRESETS`) -> its calibrated config;
    a mapping -> its fields (``preset`` names a preset to start from)."""
    if locality is None:
        return LocalityConfig()
    if isinstance(locality, LocalityConfig):
        return locality
    if isinstance(locality, str):
        if locality not in LOCALITY_PRESETS:
            raise ValueError(f"locality: unknown preset {locality!r}; presets: {sorted(LOCALITY_PRESETS)}")
        return LocalityConfig(**LOCALITY_PRESETS[locality])
    if isinstance(locality, Mapping):
        d = dict(locality)
        base: dict[str, Any] = {}
        if d.get("preset") is not None:
            base = dict(as_locality_config(str(d["preset"])).__dict__)
        d.pop("preset", None)
        fields = {f.name for f in dataclasses.fields(LocalityConfig)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"locality: unknown field(s) {unknown}; valid fields: {sorted(fields | {'preset'})}")
        return LocalityConfig(**{**base, **d})
    raise ValueError(
        f"locality: expected a LocalityConfig, a preset name, a mapping or None, got {type(locality).__name__}"
    )


def _dims(model: Any, layers: int | None, experts: int | None, top_k: int | None) -> tuple[int, int, int]:
    preset = get_model(model) if model is not None else None
    out = []
    for name, v in (("layers", layers), ("experts", experts), ("top_k", top_k)):
        if v is None:
            if preset is None:
                raise ValueError(f"{name}: give it or a model preset")
            v = getattr(preset, name)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
        out.append(int(v))
    L, E, K = out
    if K > E:
        raise ValueError(f"top_k: must be <= experts={E}, got {K}")
    return L, E, K


@partial(jax.jit, static_argnames=("T", "w", "L", "E", "K", "rd", "C", "noisy", "dtype"))
def _core(key, params, *, T, w, L, E, K, rd, C, noisy, dtype):
    shapes = routing_shapes(
        RoutingConfig(kind="latent", tokens=T, latent_dim=rd, clusters=C, temperature=1.0 if noisy else 0.0), L, E, 1
    )
    r = uniform_pool(key, shapes, dtype, normal=("W", "b", "centres", "mix", "z"))
    x = uniform_pool(jax.random.fold_in(key, 1), {"switch": (T,), "src": (T, L), "slot": (T, L, K)}, dtype)
    # the latent router (as routing.latent_logits, with the task chain of the drift)
    W, b, fresh = _latent_router(r, params["skew"], params["task_spread"], C)  # [r, L·E], [L, E], [1, T]
    fresh = fresh[0]  # [T] a task per token
    t_idx = jnp.arange(T)
    switch = (x["switch"] < params["drift"]) | (t_idx == 0)
    task = fresh[jax.lax.cummax(jnp.where(switch, t_idx, 0))]  # the task drawn at the last switch
    z = r["centres"][task] + params["cluster_spread"] * r["z"][0]  # [T, r]
    logits = (z @ W).reshape(T, L, E) + b[None]
    if noisy:
        logits = logits + params["temperature"] * gumbel(r["gumbel"][0].transpose(1, 0, 2))
    rank = (K - jnp.arange(K)).astype(dtype)  # slot 0 of the source stays first

    def step(carry, inp):
        hist, n = carry  # [w, L, K] most recent first; n = valid entries
        lg, u_src, u_slot = inp
        j = jnp.minimum((u_src * n).astype(jnp.int32), jnp.maximum(n - 1, 0))  # [L]
        src = jnp.take_along_axis(hist, j[None, :, None], axis=0)[0]  # [L, K]
        reuse = (u_slot < params["locality"]) & (n > 0)  # [L, K]
        top = jnp.max(lg, axis=-1, keepdims=True)  # [L, 1]
        boost = jnp.where(
            reuse[..., None] & (src[..., None] == jnp.arange(E)), top[..., None] + 1 + rank[:, None], -jnp.inf
        )
        score = jnp.maximum(lg, boost.max(axis=1))  # re-used experts above every fresh one, in source order
        ids = top_k_indices(score, K).astype(jnp.int32)
        hist = jnp.concatenate([ids[None], hist[:-1]], axis=0)
        return (hist, jnp.minimum(n + 1, w)), ids

    init = (jnp.zeros((w, L, K), jnp.int32), jnp.int32(0))
    _, ids = jax.lax.scan(step, init, (logits, x["src"], x["slot"]))
    return ids, task.astype(jnp.int32)


def locality_tokens(
    key: Array,
    cfg: LocalityConfig | Mapping[str, Any] | str | None = None,
    *,
    model: str | ModelPreset | Mapping[str, Any] | None = None,
    layers: int | None = None,
    experts: int | None = None,
    top_k: int | None = None,
    dtype: Any = jnp.float32,
) -> tuple[Int[Array, "T L K"], Int[Array, " T"]]:
    """One token stream's routing with temporal locality (jitted; see the module docstring).

    Args:
      key: a PRNG key.
      cfg: a :class:`LocalityConfig`, a mapping of its fields, a preset name or ``None``.
      model: a model preset for ``layers``, ``experts`` and ``top_k`` (those given override it).
      layers: ``L``, MoE layers.
      experts: ``E``, routed experts per layer.
      top_k: ``K``, experts per token and layer.
      dtype: float dtype of the router.

    Returns:
      ``(expert_ids, task)``: int32 ``[T, L, K]`` (distinct ids per token and layer, router
      order) and the task of each token int32 ``[T]``.

    Raises:
      ValueError: an invalid field (named), ``top_k > experts``.
    """
    cfg = as_locality_config(cfg)
    L, E, K = _dims(model, layers, experts, top_k)
    params = {
        f: jnp.asarray(getattr(cfg, f), dtype)
        for f in ("locality", "drift", "cluster_spread", "skew", "temperature", "task_spread")
    }
    return _core(
        key,
        params,
        T=cfg.tokens,
        w=cfg.window,
        L=L,
        E=E,
        K=K,
        rd=cfg.latent_dim,
        C=cfg.clusters,
        noisy=cfg.temperature > 0,
        dtype=dtype,
    )


def locality_trace(
    key: Array,
    cfg: LocalityConfig | Mapping[str, Any] | str | None = None,
    *,
    model: str | ModelPreset | Mapping[str, Any] | None = None,
    layers: int | None = None,
    experts: int | None = None,
    top_k: int | None = None,
) -> Trace:
    """:func:`locality_tokens` as a :class:`slimjax.traces.Trace` (``task`` = each token's task).

    Args:
      key: a PRNG key.
      cfg: a :class:`LocalityConfig`, a mapping of its fields, a preset name or ``None``.
      model: a model preset for ``layers``, ``experts`` and ``top_k`` (those given override it).
      layers: ``L``, MoE layers.
      experts: ``E``, routed experts per layer.
      top_k: ``K``, experts per token and layer.

    Returns:
      a :class:`slimjax.traces.Trace` of ``cfg.tokens`` tokens.
    """
    cfg = as_locality_config(cfg)
    L, E, K = _dims(model, layers, experts, top_k)
    ids, task = locality_tokens(key, cfg, layers=L, experts=E, top_k=K)
    src = f"locality(locality={cfg.locality:g}, window={cfg.window}, drift={cfg.drift:g})"
    return Trace(np.asarray(ids), E, task=np.asarray(task), source=src)


def reuse_rates(
    trace: Trace | Int[np.ndarray, "T L K"],
    windows: tuple[int, ...] | list[int] = (1, 4, 16, 64),
    num_experts: int | None = None,
) -> Float[np.ndarray, "W L"]:
    """Temporal reuse of a trace: for each window ``w`` and layer, the mean over tokens ``t >= w``
    of the fraction of token t's experts that were routed for at least one of tokens t-w..t-1.

    A per-token cache of the experts of the last ``w`` tokens would hit that fraction; ``w = 1``
    is the previous-token reuse. Computed in NumPy (a cumulative count of one-hot ids).

    Args:
      trace: a :class:`slimjax.traces.Trace` or expert ids ``[T, L, K]``.
      windows: the windows ``w >= 1`` (each < T).
      num_experts: ``E`` for a bare array (default: largest id + 1).

    Returns:
      float64 ``[len(windows), L]``.

    Raises:
      ValueError: a window < 1 or >= T.
    """
    if isinstance(trace, Trace):
        ids, E = trace.expert_ids, trace.num_experts
    else:
        ids = np.asarray(trace)
        if ids.ndim != 3:
            raise ValueError(f"trace: expected expert ids [T, L, K], got shape {ids.shape}")
        E = int(ids.max()) + 1 if num_experts is None else int(num_experts)
    T, L, _ = ids.shape
    onehot = np.zeros((T, L, E), np.int32)
    np.put_along_axis(onehot, ids.astype(np.int64), 1, axis=2)
    cs = np.concatenate([np.zeros((1, L, E), np.int64), np.cumsum(onehot, axis=0)])  # cs[t] = sum of tokens < t
    out = np.zeros((len(windows), L))
    for i, w in enumerate(windows):
        if not isinstance(w, (int, np.integer)) or isinstance(w, bool) or not 1 <= w < T:
            raise ValueError(f"windows: each must be an integer in [1, T={T}), got {w!r}")
        seen = (cs[w:T] - cs[0 : T - w]) > 0  # [T-w, L, E]: routed in tokens t-w..t-1, for t = w..T-1
        hit = np.take_along_axis(seen, ids[w:].astype(np.int64), axis=2)  # [T-w, L, K]
        out[i] = hit.mean(axis=(0, 2))
    return out
