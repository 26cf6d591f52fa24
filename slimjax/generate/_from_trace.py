"""Instances built from real routing traces (the ``trace`` routing).

The routing part (``patterns``, ``weight``) is the empirical distribution of the trace's tokens
(:func:`slimjax.traces.patterns`); the network part (``latency``, ``fallback``, ``size``,
``capacity``, ``base``) is sampled by the network model of :func:`slimjax.generate.sample_network` for a
model preset whose ``layers``/``experts``/``top_k`` are replaced by the trace's ``L``/``E``/``K``
(a trace often logs only some of the model's layers).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

__all__ = ["instance_from_trace", "model_for_trace"]


def _sample_network_jit(key, preset, cfg, dtype):
    """``sample_network`` compiled once per (model, network config, dtype)."""
    global _JIT
    if _JIT is None:
        from slimjax.generate._network import sample_network

        _JIT = jax.jit(sample_network, static_argnums=(1, 2, 3))
    return _JIT(key, preset, cfg, dtype)


_JIT = None


def model_for_trace(trace, model: Any = None):
    """The model preset for ``trace``: ``model`` (name, preset or mapping) with L/E/K set from the trace.

    With ``model=None`` the first preset with the trace's ``E`` and ``K`` is used.

    Raises:
      ValueError: no preset matches and none was given.
    """
    from slimjax.generate._models import MODELS, get_model

    T, L, K = trace.shape
    E = trace.num_experts
    if model is None:
        match = [m for m in MODELS.values() if m.experts == E and m.top_k == K]
        if not match:
            raise ValueError(
                f"model: no preset has E={E} and K={K}; pass model= (a preset name, whose hidden/ffn sizes "
                f"are used, or a mapping of ModelPreset fields)"
            )
        preset = match[0]
    else:
        preset = get_model(model)
    return preset.replace(layers=L, experts=E, top_k=K)


def instance_from_trace(
    trace,
    *,
    model: Any = None,
    network: Any = None,
    key: jax.Array | int = 0,
    tokens: Any = None,
    merge: bool = True,
    dtype: Any = None,
):
    """Build an :class:`~slimjax.Instance` whose routing is ``trace`` and whose network is sampled.

    With ``network.load`` set the instance also gets ``service`` and ``rate`` (the load model;
    the rates come from the trace's own routing, as in :func:`slimjax.generate.sample_fields`).

    Args:
      trace: a :class:`slimjax.traces.Trace` (or a path, loaded with :func:`slimjax.traces.load`).
      model: model preset (name / ``ModelPreset`` / mapping) for sizes and FLOPs; its L, E and K
        are replaced by the trace's. Default: the preset with the trace's E and K.
      network: :class:`~slimjax.generate._network.NetworkConfig` or mapping (``storage_fraction``
        is useful when the trace logs only a few layers). With ``users > 1`` the trace needs
        per-token ``user`` ids in ``[0, users)``; each user gets the patterns of its own tokens
        and ``traffic`` = its share of the tokens.
      key: PRNG key (or int seed) for the network.
      tokens: which tokens of the trace (indices, bool mask or slice; default all).
      merge: merge identical expert sets (see :func:`slimjax.traces.patterns`).
      dtype: float dtype (default float32).

    Returns:
      a single :class:`~slimjax.Instance` with ``U = network.users``, ``L, K`` of the trace,
      ``E = trace.num_experts``, ``M`` = distinct patterns (or tokens when ``merge=False``).
    """
    import jax.numpy as jnp

    from slimjax import traces as _traces
    from slimjax._instance import Instance
    from slimjax.generate._network import as_network_config
    if not isinstance(trace, _traces.Trace):
        trace = _traces.load(trace)
    preset = model_for_trace(trace, model)
    cfg = as_network_config(network)
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    dtype = jnp.float32 if dtype is None else dtype
    net = _sample_network_jit(key, preset, cfg, dtype)
    U = cfg.users
    traffic = net.traffic
    if U == 1:
        pats, w = _traces.patterns(trace, tokens=tokens, merge=merge)
        pats, w = pats[None], w[None]
    else:
        if trace.user is None:
            raise ValueError(f"network.users={U} but the trace has no per-token user ids")
        sel = trace.select(tokens)
        per = []
        share = np.zeros(U)
        for u in range(U):
            n_u = int((sel.user == u).sum())
            if n_u == 0:
                raise ValueError(f"trace: user {u} has no tokens (network.users={U})")
            share[u] = n_u
            per.append(_traces.patterns(sel, user=u, merge=merge))
        M = max(p.shape[1] for p, _ in per)
        L, K = trace.num_layers, trace.top_k
        pats = np.zeros((U, L, M, K), np.int32)
        w = np.zeros((U, L, M))
        for u, (p, ww) in enumerate(per):
            pats[u, :, : p.shape[1]] = p
            pats[u, :, p.shape[1] :] = p[:, :1]
            w[u, :, : p.shape[1]] = ww
        traffic = share / share.sum()
    inst = Instance(
        latency=net.latency,
        fallback=net.fallback,
        size=net.size,
        capacity=net.capacity,
        patterns=pats,
        weight=np.asarray(w, np.float32 if dtype == jnp.float32 else np.float64),
        traffic=np.asarray(traffic, np.float32 if dtype == jnp.float32 else np.float64),
        base=net.base,
        normalize=True,
    )
    if cfg.load is None:
        return inst
    from slimjax.queueing import rate_for_load

    servers = jnp.arange(inst.latency.shape[1]) >= U
    rate = rate_for_load(inst, cfg.load, net.service, nodes=servers)
    return inst.replace(service=net.service, rate=rate)
