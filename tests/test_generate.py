"""Tests of the instance generators (slimjax.generate): presets, network model, routing, batches."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slimjax
from slimjax.generate import (
    MODELS,
    NetworkConfig,
    RoutingConfig,
    get_model,
    instance,
    instances,
    sample_network,
    sample_routing,
    shannon_rate,
)

KEY = jax.random.key(0)
SMALL = RoutingConfig(tokens=16)  # keeps the default tests quick


@pytest.fixture(scope="module")
def default_batch():
    return instances(KEY, 8, routing=SMALL)


# -- models ----------------------------------------------------------------------------------------


def test_model_table_and_sizes():
    m = get_model("mixtral_8x7b")
    assert (m.layers, m.experts, m.top_k, m.hidden, m.ffn) == (32, 8, 2, 4096, 14336)
    assert m.expert_bytes == 3 * 4096 * 14336 * 2
    assert m.expert_flops == 6 * 4096 * 14336
    assert m.total_expert_bytes == 32 * 8 * 3 * 4096 * 14336 * 2
    assert get_model("deepseek_v3").shared_experts == 1 and get_model("qwen1_5_moe_a2_7b").shared_experts == 4
    assert len(MODELS) == 10
    for p in MODELS.values():
        assert p.expert_bytes == 3 * p.hidden * p.ffn * p.bytes_per_weight
        assert p.top_k <= p.experts
    # shared experts make base larger (they run on the device)
    q = get_model("qwen1_5_moe_a2_7b")
    assert q.dense_bytes > q.replace(shared_experts=0).dense_bytes


def test_get_model_errors_and_overrides():
    with pytest.raises(ValueError, match="valid names: mixtral_8x7b"):
        get_model("mixtral_9x7b")
    assert get_model({"name": "olmoe_1b_7b", "bytes_per_weight": 1}).expert_bytes == 3 * 2048 * 1024
    with pytest.raises(ValueError, match="unknown field"):
        get_model({"name": "olmoe_1b_7b", "nope": 1})
    with pytest.raises(ValueError, match="top_k"):
        get_model({"name": "tiny", "layers": 2, "experts": 2, "top_k": 3, "hidden": 4, "ffn": 4})


# -- default batch ---------------------------------------------------------------------------------


def test_default_batch_shapes_and_units(default_batch):
    b = default_batch
    assert isinstance(b, slimjax.Instance)
    assert b.batch_shape == (8,)
    assert b.shape == (1, 5, 32, 8, 16, 2)
    assert b.latency.dtype == jnp.float32 and b.patterns.dtype == jnp.int32
    np.testing.assert_allclose(np.asarray(b.size), 3 * 4096 * 14336 * 2)  # bytes
    np.testing.assert_allclose(np.asarray(b.weight).sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(b.traffic), 1.0)
    lat = np.asarray(b.latency)
    assert np.isfinite(lat).all()
    # seconds: device 1.76..7.05 ms (memory bound), servers a few ms, cloud 50..~103 ms
    assert (lat[:, 0, 0] > 1.7e-3).all() and (lat[:, 0, 0] < 7.1e-3).all()
    assert (lat[:, 0, 1:] > 1e-3).all() and (lat[:, 0, 1:] < 20e-3).all()
    fb = np.asarray(b.fallback)
    assert (fb > 0.05).all() and (fb < 0.105).all()
    assert (fb[:, :, :, :, None] > lat.max(axis=2)[..., None]).all()  # the edge is faster than the cloud
    # nodes differ (node choice matters)
    assert (np.ptp(lat[:, 0, :, 0, 0], axis=1) > 1e-4).all()
    # device storage 2..8 GB, server caches 0.25 * 16..80 GB
    cap = np.asarray(b.capacity)
    assert ((cap[:, 0] >= 2e9 * 0.999) & (cap[:, 0] <= 8e9 * 1.001)).all()
    assert ((cap[:, 1:] >= 4e9 * 0.999) & (cap[:, 1:] <= 20e9 * 1.001)).all()


def test_default_storage_fraction_is_interesting():
    # network statistics need no routing: sample the network of 256 default instances
    m = get_model("mixtral_8x7b")
    keys = jax.random.split(jax.random.key(7), 256)
    net = jax.jit(jax.vmap(lambda k: sample_network(k, m, NetworkConfig())))(keys)
    frac = np.asarray(net.capacity).sum(-1) / m.total_expert_bytes
    assert 0.35 < np.median(frac) < 0.6
    assert (frac < 1).mean() > 0.95  # almost never can the edge hold every expert


def test_deterministic_and_keys_differ(default_batch):
    again = instances(KEY, 8, routing=SMALL)
    for a, c in zip(jax.tree_util.tree_leaves(default_batch), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    from slimjax.generate._instances import _generate

    compiled = _generate._cache_size()
    other = instances(jax.random.key(1), 8, routing=SMALL)
    assert _generate._cache_size() == compiled  # a new key does not recompile
    assert not np.array_equal(np.asarray(other.latency), np.asarray(default_batch.latency))
    assert not np.array_equal(np.asarray(other.patterns), np.asarray(default_batch.patterns))
    # instances within a batch differ
    assert len({np.asarray(default_batch.capacity)[i].tobytes() for i in range(8)}) == 8


def test_prefix_single_seed_and_chunking(default_batch):
    first = instances(KEY, 4, routing=SMALL)
    np.testing.assert_array_equal(np.asarray(first.latency), np.asarray(default_batch.latency[:4]))
    np.testing.assert_array_equal(np.asarray(first.patterns), np.asarray(default_batch.patterns[:4]))
    one = instance(KEY, routing=SMALL)
    assert one.batch_shape == ()
    np.testing.assert_array_equal(np.asarray(one.patterns), np.asarray(default_batch.patterns[0]))
    seeded = instances(0, 4, routing=SMALL)  # int seed == jax.random.key(seed)
    np.testing.assert_array_equal(np.asarray(seeded.capacity), np.asarray(first.capacity))
    chunked = instances(KEY, 7, routing=SMALL, chunk_size=4)  # two chunks of 4, same result
    assert chunked.batch_shape == (7,)
    np.testing.assert_array_equal(np.asarray(chunked.latency), np.asarray(default_batch.latency[:7]))
    np.testing.assert_array_equal(np.asarray(chunked.patterns), np.asarray(default_batch.patterns[:7]))


@pytest.mark.parametrize("network,routing", [
    (None, SMALL),
    # load model, Gumbel router noise, the multi-user geometry and jitter: every transcendental
    # the generator uses (the multi-user latencies are where the fast XLA options changed a bit)
    ({"users": 3, "servers": 2, "multi_user": True, "jitter": 0.2, "load": 0.6},
     RoutingConfig(kind="latent", tokens=24, temperature=0.7)),
    # the other routing kinds: under --slow (the default run keeps the plain case and the one above,
    # which holds every transcendental and the case that broke once)
    pytest.param({"servers": 2}, RoutingConfig(kind="zipf", tokens=12), marks=pytest.mark.slow),
    pytest.param({"users": 2, "traffic_alpha": 0.5}, RoutingConfig(kind="uniform", tokens=12),  # keys drawn in JAX
                 marks=pytest.mark.slow),
])
def test_small_program_draws_the_batched_programs_bits(network, routing):
    """Batches up to SMALL_BATCH come from one program that also splits the key, larger ones from
    the batched program. Every field of instance i must be bitwise the same in both, so that no
    instance depends on the batch it is drawn in. (Compiling the small program with the solvers'
    fast XLA options broke this: 1-ulp latencies with the multi-user geometry.)"""
    from slimjax.generate._instances import SMALL_BATCH

    small = instances(KEY, 3, network=network, routing=routing)
    large = instances(KEY, SMALL_BATCH + 4, network=network, routing=routing)
    one = instance(KEY, network=network, routing=routing)
    for f in ("latency", "fallback", "size", "capacity", "patterns", "weight", "traffic", "base", "service", "rate"):
        a, b = getattr(small, f), getattr(large, f)
        if a is None:
            assert b is None and f in ("service", "rate")
            continue
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[:3], err_msg=f)
        np.testing.assert_array_equal(np.asarray(getattr(one, f)), np.asarray(b)[0], err_msg=f)


def test_objective_extremes_follow_the_latency_model(default_batch):
    """J(no cache) = L * cloud time; J(all on device) = L * device time; the edge in between."""
    b = default_batch
    L = 32
    fb = np.asarray(b.fallback)[:, 0, 0, 0]
    dev = np.asarray(b.latency)[:, 0, 0, 0, 0]
    none = np.zeros((8, 5, 32, 8), bool)
    np.testing.assert_allclose(np.asarray(slimjax.objective(b, none)), L * fb, rtol=1e-5)
    on_device = none.copy()
    on_device[:, 0] = True
    np.testing.assert_allclose(np.asarray(slimjax.objective(b, on_device)), L * dev, rtol=1e-5)
    everywhere = np.ones_like(none)
    best = np.asarray(b.latency)[:, 0, :, 0, 0].min(-1)
    np.testing.assert_allclose(np.asarray(slimjax.objective(b, everywhere)), L * best, rtol=1e-5)


# -- the latency model against hand formulas -------------------------------------------------------


def test_latency_formulas_with_constant_parameters():
    m = get_model("mixtral_8x7b")
    cfg = NetworkConfig(
        servers=2,
        device_tflops=10.0,
        device_bandwidth_gbs=100.0,
        device_storage_gb=4.0,
        server_tflops=100.0,
        server_bandwidth_gbs=1000.0,
        server_storage_gb=40.0,
        link_rate_mbps=100.0,
        rtt_ms=5.0,
        cloud_rtt_ms=80.0,
        cloud_rate_mbps=200.0,
    )
    cfg2 = cfg.replace(storage_fraction=0.3)
    net, net2 = jax.jit(lambda k: (sample_network(k, m, cfg), sample_network(k, m, cfg2)))(KEY)
    dev = max(m.expert_flops / 10e12, m.expert_bytes / 100e9)
    srv = 5e-3 + 2 * 4096 * 2 * 8 / 100e6 + max(m.expert_flops / 100e12, m.expert_bytes / 1000e9)
    cloud = 80e-3 + 2 * 4096 * 2 * 8 / 200e6 + max(m.expert_flops / 1000e12, m.expert_bytes / 3350e9)
    np.testing.assert_allclose(np.asarray(net.latency[0, :, 3, 5]), [dev, srv, srv], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(net.fallback), cloud, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(net.capacity), [4e9, 10e9, 10e9], rtol=1e-6)
    base = max(m.dense_flops / 10e12, m.dense_bytes / 100e9)
    np.testing.assert_allclose(np.asarray(net.base), [base], rtol=1e-5)
    # storage_fraction rescales the capacities to a share of all experts, keeping proportions
    np.testing.assert_allclose(float(net2.capacity.sum()), 0.3 * m.total_expert_bytes, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(net2.capacity / net2.capacity[0]), [1, 2.5, 2.5], rtol=1e-5)


def test_shannon_rate_model():
    cfg = NetworkConfig()
    d = jnp.array([10.0, 100.0, 300.0, 1000.0])
    r = np.asarray(shannon_rate(d, cfg))
    assert (np.diff(r) < 0).all()
    # hand computation at 100 m: PL = 128.1 - 37.6 = 90.5 dB, noise = -174 + 73.01 + 9 dB
    snr = 10 ** ((23 - 90.5 - (-174 + 10 * math.log10(20e6) + 9)) / 10)
    np.testing.assert_allclose(r[1], 20e6 * math.log2(1 + snr), rtol=1e-4)
    assert 40e6 < r[2] < 60e6 and 300e6 < r[0] < 1000e6


# -- multi-user ------------------------------------------------------------------------------------


@pytest.mark.parametrize("multi_user", [True, False])
def test_multi_user_foreign_devices_unreachable(multi_user):
    net = {"users": 3, "servers": 4, "multi_user": multi_user, "traffic_alpha": 1.0 if multi_user else None}
    b = instances(KEY, 4, model="moe_llava_phi2", network=net, routing=RoutingConfig(tokens=8))
    U, N, L, E, M, K = b.shape
    assert (U, N, L, E, M, K) == (3, 7, 16, 4, 8, 2)
    lat = np.asarray(b.latency)
    for u, v in itertools.product(range(3), range(3)):
        assert np.isfinite(lat[:, u, v]).all() == (u == v)
        assert np.isinf(lat[:, u, v]).all() == (u != v)
    np.testing.assert_allclose(np.asarray(b.traffic).sum(-1), 1, rtol=1e-5)
    if multi_user:
        assert len(np.unique(np.asarray(b.traffic))) > 3  # Dirichlet traffic
    else:
        np.testing.assert_allclose(np.asarray(b.traffic), 1 / 3, rtol=1e-6)
    assert np.isfinite(np.asarray(b.fallback)).all()
    if not multi_user:
        assert np.isfinite(lat[:, :, 3:]).all()


def test_geometry_range_controls_reachability():
    m = get_model("moe_llava_phi2")
    geo = NetworkConfig(users=2, servers=3, multi_user=True)
    far, near = geo.replace(range_m=1.0), geo.replace(range_m=1000.0)  # none / all within sqrt(2)*500

    @jax.jit
    @jax.vmap
    def sample(k):
        return [sample_network(k, m, c).latency[:, 2:, 0, 0] for c in (far, near, geo)]

    lat_far, lat_near, lat_mid = (np.asarray(a) for a in sample(jax.random.split(KEY, 64)))
    assert np.isinf(lat_far).all()
    assert np.isfinite(lat_near).all()
    reach = np.isfinite(lat_mid)  # default 300 m in a 500 m square: some of each
    assert 0.2 < reach.mean() < 0.95
    # a reachable server is at most range_m away: its rate is at least the rate at range_m
    bits = 2 * m.hidden * 2 * 8
    slowest_link = np.where(reach, lat_mid, 0).max()
    assert slowest_link < 10e-3 + bits / float(shannon_rate(jnp.array(300.0), geo)) + 1e-3


# -- every preset, every routing kind --------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_every_preset_generates(name):
    m = get_model(name)
    b = instances(KEY, 2, model=name, routing=RoutingConfig("uniform", tokens=4))
    assert b.shape == (1, 5, m.layers, m.experts, 4, m.top_k)
    np.testing.assert_allclose(np.asarray(b.size), m.expert_bytes, rtol=1e-6)
    assert (np.asarray(b.base) > 0).all()


@pytest.mark.parametrize("kind", ["latent", "zipf", "uniform"])
def test_every_routing_kind_through_instances(kind):
    b = instances(KEY, 2, model="phi3_5_moe", routing={"kind": kind, "tokens": 32})
    p = np.asarray(b.patterns)
    assert p.shape == (2, 1, 32, 32, 2) and p.min() >= 0 and p.max() < 16
    assert (p[..., 0] != p[..., 1]).all()  # distinct ids within a pattern
    np.testing.assert_allclose(np.asarray(b.weight), 1 / 32)
    assert slimjax.generate.as_routing_config(kind) == RoutingConfig(kind=kind)  # a name = defaults


def _freq(patterns, E):
    """Share of tokens that use each expert, per (user, layer): [U, L, E]."""
    onehot = np.zeros(patterns.shape[:-1] + (E,))
    np.put_along_axis(onehot, patterns, 1.0, axis=-1)
    return onehot.mean(axis=-2)


def _routing(cfg, L=4, E=16, K=2, U=1):
    return jax.jit(lambda k: sample_routing(k, cfg, L, E, K, U))(KEY)


def test_uniform_routing_is_flat():
    patterns, weight = _routing(RoutingConfig("uniform", tokens=4000))
    p = np.asarray(patterns)
    np.testing.assert_allclose(_freq(p, 16), 2 / 16, atol=0.025)  # sd ~ 0.005
    pairs = np.sort(p, -1)
    counts = np.zeros((16, 16))
    np.add.at(counts, (pairs[0, 0, :, 0], pairs[0, 0, :, 1]), 1)
    iu = np.triu_indices(16, 1)
    assert (counts[iu] > 0).all()  # every pair appears (expected 33 each)
    assert counts[iu].max() < 70
    np.testing.assert_allclose(np.asarray(weight).sum(-1), 1, rtol=1e-5)


def test_zipf_matches_plackett_luce():
    s, E = 1.0, 16
    p = np.arange(1, E + 1) ** -s
    p /= p.sum()
    # K = 1: the frequency of the rank-r expert is p_r
    patterns, _ = _routing(RoutingConfig("zipf", tokens=4000, zipf_exponent=s), E=E, K=1)
    f = np.sort(_freq(np.asarray(patterns), E), axis=-1)[..., ::-1]
    np.testing.assert_allclose(f.mean((0, 1)), p, atol=0.012)
    # K = 2: inclusion probability p_e + sum_{f != e} p_f p_e / (1 - p_f), decreasing with rank
    incl = p + np.array([sum(p[j] * p[i] / (1 - p[j]) for j in range(E) if j != i) for i in range(E)])
    patterns, _ = _routing(RoutingConfig("zipf", tokens=4000, zipf_exponent=s), E=E, K=2)
    f2 = np.sort(_freq(np.asarray(patterns), E), axis=-1)[..., ::-1].mean((0, 1))
    np.testing.assert_allclose(f2, incl, atol=0.015)
    assert f2[0] > 2 * f2[-1]
    # the popular experts differ between layers (a random ranking per layer)
    top = _freq(np.asarray(patterns), E)[0].argmax(-1)
    assert len(set(top.tolist())) > 1


def _top_pairs_share(p, n=10):
    """Share of tokens covered by the n most frequent expert sets, per layer: [L]."""
    out = []
    for layer in p:
        _, counts = np.unique(np.sort(layer, -1), axis=0, return_counts=True)
        out.append(np.sort(counts)[::-1][:n].sum() / len(layer))
    return np.array(out)


def test_latent_routing_is_skewed_and_clustered():
    E, K = 16, 2
    p = np.asarray(_routing(RoutingConfig("latent", tokens=2000), L=8, E=E, K=K)[0])[0]  # [L, M, K]
    f = _freq(p, E)  # [L, E]
    assert f.max(-1).mean() > 1.3 * K / E  # top expert share above uniform (calibrated: mild skew)
    assert f.min(-1).mean() < 0.8 * K / E
    # co-activation: the 10 most frequent pairs cover far more than under uniform routing (~0.09)
    top10 = _top_pairs_share(p)
    assert top10.mean() > 0.2
    # more skew -> more concentrated popularity
    p2 = np.asarray(_routing(RoutingConfig("latent", tokens=2000, skew=1.0), L=8, E=E, K=K)[0])[0]
    assert _freq(p2, E).max(-1).mean() > f.max(-1).mean() + 0.1
    # temperature > 0 adds per-token randomness: patterns repeat less
    p3 = np.asarray(_routing(RoutingConfig("latent", tokens=2000, temperature=1.0), L=8, E=E, K=K)[0])[0]
    assert _top_pairs_share(p3).mean() < top10.mean() - 0.05
    # no spread, no noise: a token's pattern is its task's, so at most `clusters` patterns per layer
    p4 = np.asarray(_routing(RoutingConfig("latent", tokens=500, clusters=5, cluster_spread=0.0), L=8, E=E, K=K)[0])
    assert max(len(np.unique(np.sort(layer, -1), axis=0)) for layer in p4[0]) <= 5


def test_latent_users_have_different_task_mixes():
    patterns, _ = _routing(RoutingConfig("latent", tokens=2000, task_spread=3.0), L=2, E=16, K=2, U=2)
    f = _freq(np.asarray(patterns), 16)
    assert np.abs(f[0] - f[1]).max() > 0.1


# -- dtypes and bad input --------------------------------------------------------------------------


def test_float64(x64):
    b = instances(KEY, 2, routing=RoutingConfig(tokens=4), dtype=jnp.float64)
    assert b.latency.dtype == jnp.float64 and b.weight.dtype == jnp.float64
    assert b.patterns.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(b.size), 3 * 4096 * 14336 * 2)
    # the small batch (random bits drawn on the host) equals the batched program's first two
    large = instances(KEY, 12, network={"jitter": 0.3}, routing=RoutingConfig(tokens=4, temperature=0.5),
                      dtype=jnp.float64)
    small = instances(KEY, 2, network={"jitter": 0.3}, routing=RoutingConfig(tokens=4, temperature=0.5),
                      dtype=jnp.float64)
    for f in ("latency", "capacity", "patterns", "base", "fallback"):
        np.testing.assert_array_equal(np.asarray(getattr(small, f)), np.asarray(getattr(large, f))[:2], err_msg=f)


def test_float64_without_x64_is_refused():
    if jax.config.jax_enable_x64:
        pytest.skip("x64 is on globally")
    with pytest.raises(ValueError, match="dtype"):
        instances(KEY, 2, dtype=jnp.float64)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"network": {"servres": 4}}, "unknown field"),
        ({"network": {"servers": -1}}, "network.servers"),
        ({"network": {"users": 0}}, "network.users"),
        ({"network": {"rtt_ms": (10.0, 1.0)}}, "network.rtt_ms"),
        ({"network": {"server_cache_share": 0.0}}, "server_cache_share"),
        ({"routing": "softmax"}, "routing.kind"),
        ({"routing": {"tokens": 0}}, "routing.tokens"),
        ({"routing": {"skew": -1.0}}, "routing.skew"),
        ({"model": "gpt5"}, "valid names"),
        ({"batch": 0}, "batch"),
        ({"dtype": jnp.int32}, "dtype"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"key": KEY, "batch": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        instances(**args)


def test_configs_are_hashable_static_args():
    a = NetworkConfig(rtt_ms=[1, 10])  # lists become tuples
    assert a == NetworkConfig() and hash(a) == hash(NetworkConfig())
    assert NetworkConfig(rtt_ms=3).rtt_ms == (3.0, 3.0)
    assert hash(RoutingConfig()) == hash(RoutingConfig("latent"))
    assert hash(get_model("mixtral_8x7b"))
