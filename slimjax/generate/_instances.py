"""Random SlimCaching instances: a model preset + a sampled network + sampled routing.

``instances(key, batch)`` draws a whole batch on the accelerator in one compiled call
(``jax.jit(jax.vmap(...))`` over ``jax.random.split(key, batch)``; batches larger than
``chunk_size`` are drawn in equal chunks to bound memory, compiled once) and returns a validated
:class:`~slimjax.Instance` with a leading batch axis. Small batches (up to ``SMALL_BATCH``) take
their uniform random pools from the host instead (JAX's threefry bits, computed in NumPy, see
:mod:`slimjax.generate._threefry`), so their program compiles no hashing loop. The
``i``-th instance depends only on ``key`` and ``i``: ``instances(key, 8)[:4]`` equals
``instances(key, 4)``, and ``instance(key)`` equals ``instances(key, 1)[0]``.

Units: latency, fallback and base in seconds; size and capacity in bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from slimjax._cache import ensure_cache
from slimjax._instance import Instance
from slimjax._keys import as_key
from slimjax.generate import _threefry as threefry
from slimjax.generate._models import ModelPreset, get_model
from slimjax.generate._network import NetworkConfig, as_network_config, network_shapes, pool_size, sample_network
from slimjax.generate._routing import RoutingConfig, as_routing_config, routing_shapes, sample_routing
from slimjax.generate._threefry import host_draws_match_jax

__all__ = ["instance", "instances", "load_rates", "resolve", "resolve_dtype", "sample_fields"]

# Instances drawn per vmapped chunk; larger batches are scanned over chunks to bound memory.
GEN_CHUNK = 1024


def resolve(
    model: str | ModelPreset | Mapping[str, Any] = "mixtral_8x7b",
    network: NetworkConfig | Mapping[str, Any] | None = None,
    routing: RoutingConfig | Mapping[str, Any] | str | None = None,
) -> tuple[ModelPreset, NetworkConfig, RoutingConfig]:
    """Turn names / mappings / ``None`` into the three frozen configurations."""
    return get_model(model), as_network_config(network), as_routing_config(routing)


def sample_fields(key: Array, model: ModelPreset, network: NetworkConfig, routing: RoutingConfig, dtype=jnp.float32):
    """The fields of one instance as a dict of arrays (pure JAX; vmappable and jittable).

    Returns:
      dict with ``latency [U, N, L, E]``, ``fallback [U, L, E]``, ``size [L, E]``,
      ``capacity [N]``, ``patterns [U, L, M, K]`` (int32), ``weight [U, L, M]``,
      ``traffic [U]``, ``base [U]``, and ``service [N, L, E]``, ``rate [U]`` (``None`` unless
      ``network.load`` is set: then ``rate`` puts the mean utilisation of the servers under the
      reference placement at ``network.load``, see :func:`slimjax.queueing.rate_for_load`).
    """
    knet, krout = jax.random.split(key)
    return _fields(knet, krout, model, network, routing, dtype)


def _fields(knet, krout, model, network, routing, dtype, u_net=None, u_rout=None) -> dict:
    """:func:`sample_fields` from the two subkeys, or from the two uniform pools drawn
    beforehand (``u_net``, ``u_rout``: the same values, see :func:`_host_pools`)."""
    net = sample_network(knet, model, network, dtype, uniform=u_net)
    patterns, weight = sample_routing(
        krout, routing, model.layers, model.experts, model.top_k, network.users, dtype, uniform=u_rout
    )
    fields = dict(net._asdict(), patterns=patterns, weight=weight, rate=None)
    if network.load is not None:
        fields["rate"] = load_rates(fields, network)
    return fields


def load_rates(fields: Mapping[str, Any], network: NetworkConfig) -> Array:
    """``rate = Λ · traffic`` for ``network.load`` (one instance's fields with ``service``): the
    mean utilisation of the servers (nodes ``U..N-1``) that carry load under the reference
    placement is ``network.load``. Pure JAX."""
    from slimjax.queueing import rate_for_load

    inst = Instance(**{k: v for k, v in fields.items() if k not in ("service", "rate")}, validate=False)
    N = inst.latency.shape[-3]
    servers = jnp.arange(N) >= network.users
    return rate_for_load(inst, network.load, fields["service"], nodes=servers)


@partial(jax.jit, static_argnames=("model", "network", "routing", "dtype"))
def _generate(keys, model: ModelPreset, network: NetworkConfig, routing: RoutingConfig, dtype):
    """``sample_fields`` vmapped over a vector of keys, compiled once per configuration and size."""
    return jax.vmap(partial(sample_fields, model=model, network=network, routing=routing, dtype=dtype))(keys)


#: batches up to this size are drawn by one program that also splits the key (and, for
#: :func:`instance`, drops the batch axis): one compilation instead of three. Their random bits
#: are drawn on the host when that gives jax.random's values (:func:`_host_pools`): XLA then
#: compiles no threefry loop, ~40 % of this program's compile time. (Not compiled with
#: the solvers' fast-compile options: those change the last bit of some transcendental
#: functions, and instance i must not depend on the batch it is drawn in.)
SMALL_BATCH = 8


def _small_fn(n: int, one: bool, model, network, routing, dtype, key):
    out = _generate.__wrapped__(jax.random.split(key, n), model, network, routing, dtype)
    return jax.tree_util.tree_map(lambda a: a[0], out) if one else out


_SMALL = jax.jit(_small_fn, static_argnums=(0, 1, 2, 3, 4, 5))

#: most uniforms per call that a small batch draws on the host (NumPy threefry, ~0.1 s per 10^6)
#: instead of in the compiled program; mixtral_8x7b needs ~10^4 per instance, deepseek_v3 ~3·10^5.
HOST_DRAWS_MAX = 1 << 21


def _host_pools(key, batch: int, model, network, routing, dtype):
    """The two uniform pools of each instance (``[batch, P_net]``, ``[batch, P_rout]``), drawn on
    the host with the same bits ``jax.random`` gives (:mod:`slimjax.generate._threefry`), or
    None where that does not apply (another PRNG, traffic shares, too many draws)."""
    if network.traffic_alpha is not None or not host_draws_match_jax(key):
        return None
    p_net = pool_size(network_shapes(model, network))
    p_rout = pool_size(routing_shapes(routing, model.layers, model.experts, network.users))
    if batch * (p_net + p_rout) > HOST_DRAWS_MAX:
        return None
    raw = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key)
    sub = threefry.split(threefry.split(raw, batch), 2)  # [batch, 2, 2]: (knet, krout) of instance i
    dt = np.dtype(dtype)
    return threefry.uniform(sub[:, 0], p_net, dt), threefry.uniform(sub[:, 1], p_rout, dt)


def _small_from_pools_fn(one: bool, model, network, routing, dtype, u_net, u_rout):
    one_fields = partial(_fields, None, None, model, network, routing, dtype)
    out = jax.vmap(one_fields)(u_net, u_rout)
    return jax.tree_util.tree_map(lambda a: a[0], out) if one else out


_SMALL_FROM_POOLS = jax.jit(_small_from_pools_fn, static_argnums=(0, 1, 2, 3, 4))


def _generate_batch(key, batch: int, model, network, routing, dtype, chunk: int, one: bool = False) -> dict:
    if batch <= min(SMALL_BATCH, chunk):
        pools = _host_pools(key, batch, model, network, routing, dtype)
        if pools is not None:
            return _SMALL_FROM_POOLS(one, model, network, routing, dtype, *pools)
        return _SMALL(batch, one, model, network, routing, dtype, key)
    if batch <= chunk:
        out = _generate(jax.random.split(key, batch), model, network, routing, dtype)
    else:
        # Whole chunks of one static size (one compilation); split(key, n)[:batch] == split(key, batch).
        n_chunks = -(-batch // chunk)
        keys = jax.random.split(key, n_chunks * chunk)
        parts = [_generate(keys[i * chunk : (i + 1) * chunk], model, network, routing, dtype) for i in range(n_chunks)]
        out = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a)[:batch], *parts)
    return jax.tree_util.tree_map(lambda a: a[0], out) if one else out


def resolve_dtype(dtype) -> Any:
    dt = jnp.dtype(jnp.float32 if dtype is None else dtype)
    if dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise ValueError(f"dtype: must be float32 or float64, got {dt}")
    if dt == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype: float64 needs jax_enable_x64 (jax.config.update('jax_enable_x64', True))")
    return dt.type


def instances(
    key: Array | int,
    batch: int,
    model: str | ModelPreset | Mapping[str, Any] = "mixtral_8x7b",
    network: NetworkConfig | Mapping[str, Any] | None = None,
    routing: RoutingConfig | Mapping[str, Any] | str | None = None,
    dtype: Any = jnp.float32,
    *,
    validate: bool = True,
    chunk_size: int = GEN_CHUNK,
) -> Instance:
    """Draw ``batch`` random instances in one compiled call.

    Args:
      key: a PRNG key (``jax.random.key(0)``) or an int seed.
      batch: number of instances (>= 1).
      model: a preset name (see ``slimjax.generate.MODELS``), a :class:`ModelPreset` or a mapping.
      network: a :class:`NetworkConfig`, a mapping of its fields, or ``None`` (defaults:
        1 device + 4 servers).
      routing: a :class:`RoutingConfig`, a mapping, a kind name (``"latent"``, ``"zipf"``,
        ``"uniform"``) or ``None`` (latent, 256 tokens).
      dtype: float32 (default) or float64 (needs x64).
      validate: check the result on the host (the rules of :class:`~slimjax.Instance`).
      chunk_size: instances drawn per vmapped chunk (bounds memory; the result does not
        depend on it).

    Returns:
      an :class:`~slimjax.Instance` with a leading batch axis ``[batch, ...]``; shapes
      ``U = network.users``, ``N = users + servers``, ``L, E, K`` of the model,
      ``M = routing.tokens``. Seconds and bytes.

    Examples:
      >>> import jax, slimjax
      >>> batch = slimjax.generate.instances(jax.random.key(0), 16)
      >>> batch.latency.shape
      (16, 1, 5, 32, 8)
    """
    if not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch: must be an integer >= 1, got {batch!r}")
    m, net, rout = resolve(model, network, routing)
    dt = resolve_dtype(dtype)
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size: must be an integer >= 1, got {chunk_size!r}")
    return _draw(key, int(batch), m, net, rout, dt, int(chunk_size), validate, one=False)


def _draw(key, batch: int, m, net, rout, dt, chunk_size: int, validate: bool, one: bool) -> Instance:
    ensure_cache()  # the persistent compilation cache, as on the first solve
    fields = _generate_batch(as_key(key), batch, m, net, rout, dt, chunk_size, one)
    return Instance(**fields, validate=validate)


def instance(
    key: Array | int,
    model: str | ModelPreset | Mapping[str, Any] = "mixtral_8x7b",
    network: NetworkConfig | Mapping[str, Any] | None = None,
    routing: RoutingConfig | Mapping[str, Any] | str | None = None,
    dtype: Any = jnp.float32,
    *,
    validate: bool = True,
) -> Instance:
    """One random instance (no batch axis); equals ``instances(key, 1, ...)[0]``."""
    m, net, rout = resolve(model, network, routing)
    return _draw(key, 1, m, net, rout, resolve_dtype(dtype), GEN_CHUNK, validate, one=True)
