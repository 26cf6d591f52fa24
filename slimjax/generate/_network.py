"""Edge network and latency model, sampled in JAX from a PRNG key.

Nodes: each user's own device first, then the edge servers (``N = U + S``; ``N = 1 + S`` for a
single user). A cloud fallback holds every expert. For one decoded token and one expert:

* expert time on node n: ``max(expert_flops / compute[n], expert_bytes / bandwidth[n])``;
* link time user u -> node n: ``rtt[u, n] + 2 · hidden · act_bytes · 8 / rate[u, n]``
  (hidden state there and back; ``0`` on the user's own device, ``inf`` on another user's device
  or on a server out of range);
* ``latency[u, n, l, e] = link[u, n] + expert time on n`` (times a log-normal jitter if asked);
* ``fallback[u, l, e] = cloud_rtt[u] + 2 · hidden · act_bytes · 8 / cloud_rate[u]``
  ``+ max(expert_flops / cloud_compute, expert_bytes / cloud_bandwidth)``;
* ``base[u]``: the non-routed per-token work (attention + shared experts) on the
  user's device, ``max(dense_flops / compute, dense_bytes / bandwidth)``.
* with ``load`` set (the load model): ``service[n, l, e]`` = the expert time on node n, the part
  of the latency that queues (with ``jitter``, clipped to ``min_u latency[u, n, l, e]`` so that
  no link time is negative); the token rates are set by :func:`slimjax.generate.sample_fields`
  from the routing (see ``NetworkConfig.load``).

Output units: **seconds** for times, **bytes** for sizes and capacities. The configuration uses
human units (ms, Mbit/s, GB/s, TFLOP/s, GB; 1 GB = 1e9 bytes) which are converted on sampling.
Every ``(lo, hi)`` range is sampled **log-uniformly** (independently per instance, node and
link); pass a single number (or ``lo == hi``) for a constant.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from slimjax.generate._models import ModelPreset

__all__ = [
    "Network",
    "NetworkConfig",
    "as_network_config",
    "network_shapes",
    "pool_size",
    "sample_network",
    "shannon_rate",
    "uniform_pool",
]

Range = float | tuple[float, float] | list[float]  # (lo, hi) (a list from a config), or a number: a constant

_RANGE_FIELDS = (
    "device_tflops",
    "device_bandwidth_gbs",
    "device_storage_gb",
    "server_tflops",
    "server_bandwidth_gbs",
    "server_storage_gb",
    "link_rate_mbps",
    "rtt_ms",
    "cloud_rtt_ms",
    "cloud_rate_mbps",
)


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Parameters of the edge network (frozen and hashable: a static jit argument).

    Ranges ``(lo, hi)`` are sampled log-uniformly per instance; a number is a constant.

    Attributes:
      servers: number of edge servers ``S`` (>= 0).
      users: number of users ``U`` (>= 1); each has its own device (node ``u``).
      multi_user: geometry model: users and servers are dropped uniformly in a square of side
        ``area_m``; a user reaches the servers within ``range_m`` at the Shannon rate of the
        distance (path loss ``pathloss_db_at_1km + pathloss_exponent_db · log10(d / 1 km)``).
        Without it, every user reaches every server with a rate drawn from ``link_rate_mbps``.
      device_tflops: device compute, TFLOP/s.
      device_bandwidth_gbs: device memory bandwidth, GB/s.
      device_storage_gb: device storage for experts, GB.
      server_tflops: server compute, TFLOP/s.
      server_bandwidth_gbs: server memory bandwidth, GB/s.
      server_storage_gb: server memory, GB; the expert cache gets ``server_cache_share`` of it.
      server_cache_share: share of a server's memory given to this model's expert cache (the
        rest holds KV caches, activations and other tenants), in (0, 1].
      storage_fraction: if set, capacities are rescaled (keeping their sampled proportions) so
        that all edge nodes together hold this fraction of the model's total expert bytes.
      link_rate_mbps: user-server link rate, Mbit/s (ignored when ``multi_user``).
      rtt_ms: user-server round-trip time, ms.
      cloud_rtt_ms: user-cloud round-trip time, ms.
      cloud_rate_mbps: user-cloud link rate, Mbit/s.
      cloud_tflops: cloud compute, TFLOP/s.
      cloud_bandwidth_gbs: cloud memory bandwidth, GB/s.
      act_bytes: bytes per activation value sent over a link (2 = bf16).
      jitter: standard deviation of a log-normal multiplicative noise on every
        ``latency[u, n, l, e]`` (0 = none: a node's latency is the same for all experts).
      traffic_alpha: ``None`` = equal traffic per user; else user shares ~ Dirichlet(alpha).
      area_m: side of the square area (m), geometry model.
      range_m: radio range (m): farther servers are unreachable (``inf``), geometry model.
      bandwidth_mhz: radio bandwidth per link (MHz), geometry model.
      tx_power_dbm: transmit power (dBm), geometry model.
      noise_dbm_hz: noise power spectral density (dBm/Hz), geometry model.
      noise_figure_db: receiver noise figure (dB), geometry model.
      pathloss_db_at_1km: path loss at 1 km (dB), geometry model (3GPP urban macro: 128.1).
      pathloss_exponent_db: path-loss slope per decade of distance (dB), geometry model (37.6).
      min_distance_m: distances are clipped below at this (m), geometry model.
      load: ``None`` = no load model (no ``service``/``rate``). Else the instances get
        ``service`` (the expert time on each node) and ``rate = Λ · traffic`` (tokens/s), with
        ``Λ`` set so that the mean utilisation of the edge servers that carry load under the
        reference placement (per-node LFU, :func:`slimjax.queueing.reference_placement`, with the
        fastest-copy assignment) is ``load``, in [0, 1). Without such a server the mean is over
        every node that carries load; the devices' utilisation is whatever follows.
    """

    servers: int = 4
    users: int = 1
    multi_user: bool = False
    device_tflops: Range = (2.0, 20.0)
    device_bandwidth_gbs: Range = (50.0, 200.0)
    device_storage_gb: Range = (2.0, 8.0)
    server_tflops: Range = (50.0, 500.0)
    server_bandwidth_gbs: Range = (300.0, 2000.0)
    server_storage_gb: Range = (16.0, 80.0)
    server_cache_share: float = 0.25
    storage_fraction: float | None = None
    link_rate_mbps: Range = (50.0, 1000.0)
    rtt_ms: Range = (1.0, 10.0)
    cloud_rtt_ms: Range = (50.0, 100.0)
    cloud_rate_mbps: Range = (50.0, 1000.0)
    cloud_tflops: float = 1000.0
    cloud_bandwidth_gbs: float = 3350.0
    act_bytes: float = 2.0
    jitter: float = 0.0
    traffic_alpha: float | None = None
    area_m: float = 500.0
    range_m: float = 300.0
    bandwidth_mhz: float = 20.0
    tx_power_dbm: float = 23.0
    noise_dbm_hz: float = -174.0
    noise_figure_db: float = 9.0
    pathloss_db_at_1km: float = 128.1
    pathloss_exponent_db: float = 37.6
    min_distance_m: float = 10.0
    load: float | None = None

    def __post_init__(self):
        for f in _RANGE_FIELDS:
            v = getattr(self, f)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                v = (float(v), float(v))
            try:
                v = tuple(float(a) for a in v)
            except TypeError:
                raise ValueError(f"network.{f}: expected a number or a (lo, hi) pair, got {v!r}") from None
            if len(v) != 2 or not (0 < v[0] <= v[1] < math.inf):
                raise ValueError(f"network.{f}: expected 0 < lo <= hi < inf, got {v!r}")
            object.__setattr__(self, f, v)
        for f in ("servers", "users"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"network.{f}: must be an integer, got {v!r}")  # noqa: TRY004
        if self.servers < 0:
            raise ValueError(f"network.servers: must be >= 0, got {self.servers}")
        if self.users < 1:
            raise ValueError(f"network.users: must be >= 1, got {self.users}")
        if not 0 < self.server_cache_share <= 1:
            raise ValueError(f"network.server_cache_share: must be in (0, 1], got {self.server_cache_share}")
        if self.storage_fraction is not None and not self.storage_fraction >= 0:
            raise ValueError(f"network.storage_fraction: must be >= 0 or None, got {self.storage_fraction}")
        for f in (
            "cloud_tflops",
            "cloud_bandwidth_gbs",
            "act_bytes",
            "area_m",
            "range_m",
            "bandwidth_mhz",
            "min_distance_m",
        ):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and 0 < v < math.inf):
                raise ValueError(f"network.{f}: must be a finite number > 0, got {v!r}")
        if not self.jitter >= 0:
            raise ValueError(f"network.jitter: must be >= 0, got {self.jitter}")
        if self.traffic_alpha is not None and not self.traffic_alpha > 0:
            raise ValueError(f"network.traffic_alpha: must be > 0 or None, got {self.traffic_alpha}")
        if self.load is not None:
            if isinstance(self.load, bool) or not isinstance(self.load, (int, float)) or not 0 <= self.load < 1:
                raise ValueError(f"network.load: must be a target utilisation in [0, 1) or None, got {self.load!r}")
            object.__setattr__(self, "load", float(self.load))
        object.__setattr__(self, "multi_user", bool(self.multi_user))

    @property
    def nodes(self) -> int:
        """``N = users + servers``."""
        return self.users + self.servers

    def replace(self, **changes) -> NetworkConfig:
        return dataclasses.replace(self, **changes)


def as_network_config(network: NetworkConfig | Mapping[str, Any] | None) -> NetworkConfig:
    """``None`` -> defaults; a mapping (e.g. a Hydra config) -> :class:`NetworkConfig`."""
    if network is None:
        return NetworkConfig()
    if isinstance(network, NetworkConfig):
        return network
    if isinstance(network, Mapping):
        fields = {f.name for f in dataclasses.fields(NetworkConfig)}
        d = {k: (tuple(v) if isinstance(v, (list, tuple)) or _is_seq(v) else v) for k, v in dict(network).items()}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"network: unknown field(s) {unknown}; valid fields: {sorted(fields)}")
        return NetworkConfig(**d)
    raise ValueError(f"network: expected a NetworkConfig, a mapping or None, got {type(network).__name__}")


def _is_seq(v) -> bool:
    return hasattr(v, "__iter__") and hasattr(v, "__len__") and not isinstance(v, (str, bytes, Mapping))


class Network(NamedTuple):
    """The network part of an instance (one instance; no batch axis).

    latency: [U, N, L, E] seconds (``inf`` = unreachable).
    fallback: [U, L, E] seconds.
    size: [L, E] bytes.
    capacity: [N] bytes.
    traffic: [U] shares summing to 1.
    base: [U] seconds.
    service: [N, L, E] seconds, the queueing part of ``latency`` (``None`` without ``cfg.load``).
    """

    latency: Float[Array, "U N L E"]
    fallback: Float[Array, "U L E"]
    size: Float[Array, "L E"]
    capacity: Float[Array, " N"]
    traffic: Float[Array, " U"]
    base: Float[Array, " U"]
    service: Float[Array, "N L E"] | None = None


def pool_size(shapes: dict[str, tuple[int, ...]]) -> int:
    """Length of the one uniform draw behind :func:`uniform_pool` for these shapes."""
    return max(sum(math.prod(s) for s in shapes.values()), 1)


def uniform_pool(
    key: Array | None,
    shapes: dict[str, tuple[int, ...]],
    dtype,
    normal: tuple[str, ...] = (),
    uniform: Array | None = None,
) -> dict[str, Array]:
    """Random arrays of the given shapes from ONE ``jax.random.uniform`` call.

    Entries named in ``normal`` are standard normal (one inverse-CDF over their contiguous
    block), the others uniform in (0, 1). One draw compiles much faster than many (each draw
    inlines a threefry hash), which keeps the first call of a new configuration quick.
    ``uniform``: that draw, ``jax.random.uniform(key, (pool_size(shapes),), dtype)``, computed
    beforehand (then ``key`` is unused).
    """
    names = [n for n in shapes if n in normal] + [n for n in shapes if n not in normal]
    sizes = [math.prod(shapes[n]) for n in names]
    n_normal = sum(sz for n, sz in zip(names, sizes) if n in normal)
    finfo = jnp.finfo(dtype)
    if uniform is None:
        uniform = jax.random.uniform(key, (pool_size(shapes),), dtype)
    u = jnp.clip(uniform, finfo.tiny, 1 - finfo.epsneg)
    if n_normal:
        u = jnp.concatenate([jax.scipy.special.ndtri(u[:n_normal]), u[n_normal:]])
    out, start = {}, 0
    for name, n in zip(names, sizes):
        out[name] = u[start : start + n].reshape(shapes[name])
        start += n
    return out


def _log_uniform(u: Array, rng: Range) -> Array:
    lo, hi = rng
    if lo == hi:
        return jnp.full(u.shape, lo, u.dtype)
    return jnp.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))).astype(u.dtype)


def shannon_rate(distance_m: Array, cfg: NetworkConfig) -> Array:
    """Shannon rate (bit/s) at ``distance_m`` metres under the path-loss model of ``cfg``."""
    d_km = jnp.maximum(distance_m, cfg.min_distance_m) / 1000.0
    pathloss_db = cfg.pathloss_db_at_1km + cfg.pathloss_exponent_db * jnp.log10(d_km)
    bw_hz = cfg.bandwidth_mhz * 1e6
    noise_dbm = cfg.noise_dbm_hz + 10 * math.log10(bw_hz) + cfg.noise_figure_db
    snr_db = cfg.tx_power_dbm - pathloss_db - noise_dbm
    return bw_hz * jnp.log2(1 + 10 ** (snr_db / 10))


def _compute_time(flops, nbytes, tflops, gbs):
    return jnp.maximum(flops / (tflops * 1e12), nbytes / (gbs * 1e9))


def network_shapes(model: ModelPreset, cfg: NetworkConfig) -> dict[str, tuple[int, ...]]:
    """The named random arrays :func:`sample_network` draws (one :func:`uniform_pool`)."""
    U, S, L, E = cfg.users, cfg.servers, model.layers, model.experts
    shapes = {
        "dev_tf": (U,),
        "dev_bw": (U,),
        "dev_gb": (U,),
        "srv_tf": (S,),
        "srv_bw": (S,),
        "srv_gb": (S,),
        "rtt": (U, S),
        "rate": (U, S),
        "upos": (U, 2),
        "spos": (S, 2),
        "c_rtt": (U,),
        "c_rate": (U,),
    }
    if cfg.jitter > 0:
        shapes["jitter"] = (U, U + S, L, E)
    return shapes


def sample_network(
    key: Array | None, model: ModelPreset, cfg: NetworkConfig, dtype: Any = jnp.float32, *, uniform: Array | None = None
) -> Network:
    """Sample one network (latency, fallback, size, capacity, traffic, base) from ``key``.

    Args:
      key: a PRNG key.
      model: the model preset (sizes and FLOPs).
      cfg: the network configuration (static).
      dtype: float dtype of the outputs.
      uniform: the pool's uniform draw made beforehand (see :func:`uniform_pool`); then ``key``
        is used only for the traffic shares (``cfg.traffic_alpha``).

    Returns:
      a :class:`Network` with ``U = cfg.users``, ``N = cfg.users + cfg.servers``,
      ``L = model.layers``, ``E = model.experts``; times in seconds, sizes in bytes;
      ``service`` only when ``cfg.load`` is set.
    """
    U, S, L, E = cfg.users, cfg.servers, model.layers, model.experts
    N = U + S
    r = uniform_pool(key, network_shapes(model, cfg), dtype, normal=("jitter",), uniform=uniform)
    # -- nodes ---------------------------------------------------------------------------------
    dev_tf = _log_uniform(r["dev_tf"], cfg.device_tflops)
    dev_bw = _log_uniform(r["dev_bw"], cfg.device_bandwidth_gbs)
    dev_gb = _log_uniform(r["dev_gb"], cfg.device_storage_gb)
    srv_tf = _log_uniform(r["srv_tf"], cfg.server_tflops)
    srv_bw = _log_uniform(r["srv_bw"], cfg.server_bandwidth_gbs)
    srv_gb = _log_uniform(r["srv_gb"], cfg.server_storage_gb) * cfg.server_cache_share
    tflops = jnp.concatenate([dev_tf, srv_tf])  # [N]
    bw = jnp.concatenate([dev_bw, srv_bw])  # [N]
    capacity = jnp.concatenate([dev_gb, srv_gb]) * 1e9  # [N] bytes
    if cfg.storage_fraction is not None:
        total = capacity.sum()
        capacity = capacity * (cfg.storage_fraction * model.total_expert_bytes / jnp.maximum(total, 1e-30))
    compute = _compute_time(model.expert_flops, model.expert_bytes, tflops, bw)  # [N] s

    # -- links ---------------------------------------------------------------------------------
    bits = 2.0 * model.hidden * cfg.act_bytes * 8.0
    rtt = _log_uniform(r["rtt"], cfg.rtt_ms) * 1e-3
    if cfg.multi_user:
        upos = r["upos"] * cfg.area_m
        spos = r["spos"] * cfg.area_m
        dist = jnp.sqrt(((upos[:, None, :] - spos[None, :, :]) ** 2).sum(-1))  # [U, S]
        rate = shannon_rate(dist, cfg).astype(dtype)
        reach = dist <= cfg.range_m
    else:
        rate = _log_uniform(r["rate"], cfg.link_rate_mbps) * 1e6
        reach = jnp.ones((U, S), bool)
    srv_link = jnp.where(reach, rtt + bits / rate, jnp.inf)  # [U, S]
    own = jnp.where(jnp.eye(U, dtype=bool), 0.0, jnp.inf).astype(dtype)  # [U, U]
    link = jnp.concatenate([own, srv_link.astype(dtype)], axis=1)  # [U, N]
    node_time = link + compute[None, :]  # [U, N]
    latency = jnp.broadcast_to(node_time[:, :, None, None], (U, N, L, E))
    if cfg.jitter > 0:
        noise = jnp.exp(cfg.jitter * r["jitter"])
        latency = latency * noise  # inf stays inf, 0 stays 0

    # -- cloud fallback ------------------------------------------------------------------------
    c_rtt = _log_uniform(r["c_rtt"], cfg.cloud_rtt_ms) * 1e-3
    c_rate = _log_uniform(r["c_rate"], cfg.cloud_rate_mbps) * 1e6
    c_time = (
        c_rtt
        + bits / c_rate
        + _compute_time(model.expert_flops, model.expert_bytes, cfg.cloud_tflops, cfg.cloud_bandwidth_gbs)
    )
    fallback = jnp.broadcast_to(c_time[:, None, None], (U, L, E))

    # -- per user --------------------------------------------------------------------------------
    base = _compute_time(model.dense_flops, model.dense_bytes, dev_tf, dev_bw)  # [U]
    if cfg.traffic_alpha is None:
        traffic = jnp.full((U,), 1.0 / U, dtype)
    else:
        traffic = jax.random.dirichlet(jax.random.fold_in(key, 1), jnp.full((U,), cfg.traffic_alpha, dtype)).astype(
            dtype
        )
    size = jnp.full((L, E), model.expert_bytes, dtype)
    service = None
    if cfg.load is not None:
        service = jnp.broadcast_to(compute.astype(dtype)[:, None, None], (N, L, E))
        if cfg.jitter > 0:  # keep latency >= service: the link time latency - service is never negative
            service = jnp.minimum(service, latency.astype(dtype).min(axis=0))
    return Network(
        latency=latency.astype(dtype),
        fallback=fallback.astype(dtype),
        size=size,
        capacity=capacity.astype(dtype),
        traffic=traffic,
        base=base.astype(dtype),
        service=service,
    )
