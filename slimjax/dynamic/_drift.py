"""A drifting synthetic workload: latent routing whose task mix moves between clusters over time.

Per timeline (from its own key): one network (:func:`slimjax.generate.sample_network`), one
latent router per layer and ``clusters`` task centres, exactly as the ``latent`` routing generator
(:mod:`slimjax.generate.routing`) draws them; what drifts is each user's *task mix*. The windows
are split into phases of ``period`` windows; phase p has its own log task weights
``task_spread · a_p`` with ``a_p ~ N(0, I)``:

- ``mode="piecewise"``: every window of phase p uses phase p's mix (abrupt shifts: a user switches
  from one kind of work to another);
- ``mode="smooth"``: the log weights move linearly from ``a_p`` to ``a_{p+1}`` across the phase.

Window t draws ``routing.tokens`` tokens per user from its mix (task, latent around the task's
centre, top-K of the router), so consecutive windows of one phase differ only by sampling noise.
The tokens are kept (``Timeline.tokens``): the patterns are those tokens, each weighing 1/tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slimjax._instance import Instance
from slimjax._keys import as_key
from slimjax.dynamic._timeline import Timeline
from slimjax.generate import (
    RoutingConfig,
    gumbel,
    latent_logits,
    resolve,
    resolve_dtype,
    sample_network,
    top_k_indices,
    uniform_pool,
)

__all__ = ["DRIFT_MODES", "DRIFT_ROUTING", "drift"]

DRIFT_MODES = ("piecewise", "smooth")
#: Routing defaults of :func:`drift`: few, well separated task clusters and concentrated task mixes,
#: so that a phase change moves the popular experts.
DRIFT_ROUTING = {"kind": "latent", "tokens": 256, "clusters": 8, "task_spread": 2.0}


def _one(key, smooth, T: int, period: int, model, net_cfg, rc: RoutingConfig, dtype):
    knet, krout, kwin = jax.random.split(key, 3)
    net = sample_network(knet, model, net_cfg, dtype)
    U, L, E, K = net_cfg.users, model.layers, model.experts, model.top_k
    rd, C, Mtok = rc.latent_dim, rc.clusters, rc.tokens
    P = -(-T // period)
    # one draw for the router, the task centres and the phases' log task weights (compiles fast)
    fixed = uniform_pool(krout, {"W": (L, rd, E), "b": (L, E), "centres": (C, rd), "anchors": (P + 1, U, C)},
                         dtype, normal=("W", "b", "centres", "anchors"))
    t = jnp.arange(T)
    p = t // period
    anchors = fixed.pop("anchors")
    # piecewise (smooth = 0): phase p's weights; smooth (1): linear from phase p's to phase p+1's
    frac = smooth * ((t % period) / period).astype(dtype)[:, None, None]
    mix = (1 - frac) * anchors[p] + frac * anchors[p + 1]  # [T, U, C]

    shapes = {"task": (U, Mtok), "z": (U, Mtok, rd)}
    if rc.temperature > 0:
        shapes["gumbel"] = (U, L, Mtok, E)

    def window(k, m):
        r = uniform_pool(k, shapes, dtype, normal=("z",))
        logits = latent_logits(dict(fixed, mix=m, task=r["task"], z=r["z"]), rc, U, L, E)  # [U, L, M, E]
        if rc.temperature > 0:
            logits = logits + rc.temperature * gumbel(r["gumbel"])
        return top_k_indices(logits, K).astype(jnp.int32)

    pats = jax.vmap(window)(jax.random.split(kwin, T), mix)  # [T, U, L, M, K]
    return net, pats, mix


@partial(jax.jit, static_argnames=("T", "period", "model", "net_cfg", "rc", "dtype"))
def _generate(keys, smooth, T, period, model, net_cfg, rc, dtype):
    return jax.vmap(lambda k: _one(k, smooth, T, period, model, net_cfg, rc, dtype))(keys)


def drift(
    key: Any,
    timelines: int,
    windows: int,
    model: Any = "mixtral_8x7b",
    network: Any = None,
    routing: RoutingConfig | Mapping[str, Any] | None = None,
    *,
    mode: str = "piecewise",
    period: int = 4,
    dtype: Any = jnp.float32,
) -> Timeline:
    """Draw ``timelines`` drifting timelines of ``windows`` windows each (one compiled call).

    Args:
      key: a PRNG key or an int seed; timeline b depends only on ``key`` and b.
      timelines: B >= 1.
      windows: T >= 2.
      model: a model preset name, as in :func:`slimjax.generate.instances`.
      network: the network configuration, as in :func:`slimjax.generate.instances`.
      routing: the latent routing configuration (``kind`` must be ``"latent"``); unset fields take
        :data:`DRIFT_ROUTING` (a mapping is merged over it). ``tokens`` = tokens per user and window.
      mode: ``"piecewise"`` or ``"smooth"`` (see the module docstring).
      period: windows per phase (>= 1).
      dtype: float32 or float64.

    Returns:
      a :class:`Timeline` ``[B, T, ...]`` with tokens (``W = users · tokens`` per window).

    Raises:
      ValueError: naming the argument and the rule.
    """
    for name, v, lo in (("timelines", timelines, 1), ("windows", windows, 2), ("period", period, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name}: must be an integer >= {lo}, got {v!r}")
    if mode not in DRIFT_MODES:
        raise ValueError(f"mode: must be one of {DRIFT_MODES}, got {mode!r}")
    if routing is None or isinstance(routing, Mapping):
        merged = dict(DRIFT_ROUTING, **dict(routing or {}))
    elif isinstance(routing, RoutingConfig):
        merged = routing
    else:
        raise ValueError(f"routing: expected a RoutingConfig, a mapping or None, got {type(routing).__name__}")
    m, net_cfg, rc = resolve(model, network, merged)
    if rc.kind != "latent":
        raise ValueError(f"routing.kind: the drift generator moves a latent task mix, so kind must be 'latent', got {rc.kind!r}")
    dt = resolve_dtype(dtype)
    B, T = int(timelines), int(windows)
    keys = jax.random.split(as_key(key), B)
    smooth = jnp.asarray(1.0 if mode == "smooth" else 0.0, dt)  # traced: both modes share one program
    net, pats, _ = _generate(keys, smooth, T, int(period), m, net_cfg, rc, dt)
    U, Mtok, L, K = net_cfg.users, rc.tokens, m.layers, m.top_k
    rep = lambda a: jnp.broadcast_to(a[:, None], (B, T) + a.shape[1:])  # noqa: E731
    windows_inst = Instance(
        latency=rep(net.latency), fallback=rep(net.fallback), size=rep(net.size), capacity=rep(net.capacity),
        patterns=pats, weight=jnp.full((B, T, U, L, Mtok), 1.0 / Mtok, dt), traffic=rep(net.traffic),
        base=rep(net.base), validate=False,
    )
    tokens = jnp.moveaxis(pats, 4, 3).reshape(B, T, U * Mtok, L, K)  # [B, T, U·M, L, K]
    user = jnp.broadcast_to(jnp.repeat(jnp.arange(U, dtype=jnp.int32), Mtok), (B, T, U * Mtok))
    tw = jnp.broadcast_to(jnp.repeat(net.traffic / Mtok, Mtok, axis=-1)[:, None], (B, T, U * Mtok))
    return Timeline(windows_inst, tokens, user, tw.astype(dt))
