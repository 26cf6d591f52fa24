"""The load model: Instance fields, utilisation and J_load against the NumPy reference, batching,
jit/vmap/grad, the generators' load level, and the SimPy simulation against J_load."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slimjax
import slimjax.queueing as ld
from slimjax._instance import ALL_FIELDS, FIELDS
from slimjax._objective import expert_latency_from, objective_from_d
from slimjax.ops import merge_patterns
from tests.reference_load import (
    activation_ref,
    assignment_ref,
    loaded_d_ref,
    loaded_objective_ref,
    random_load_instance,
    utilization_ref,
)

# float32 JAX vs float64 NumPy: rho is a sum of O(L·E·U) positive float32 products (relative error
# ~1e-7 each); J_load amplifies rho's error by at most 1/(1 − rho) ≤ 10 below rho = 0.9.
RTOL32 = 2e-5


def unloaded_J(inst, x, aggregation="max"):
    """J of DESIGN §2, from the objective's building blocks."""
    d = expert_latency_from(inst.latency, inst.fallback, jnp.asarray(x))
    return float(objective_from_d(inst, d, aggregation))


def placements(inst, seed):
    N, L, E = inst.latency.shape[-3:]
    rng = np.random.default_rng(seed)
    return [np.ones((N, L, E), bool), rng.random((N, L, E)) < 0.5, rng.random((N, L, E)) < 0.2]


# -- Instance fields ---------------------------------------------------------------------------


def test_fields_pytree_and_conveniences():
    inst = random_load_instance(0)
    plain = inst.replace(service=None, rate=None)
    assert inst.has_load and not plain.has_load and plain.service is None and plain.rate is None
    assert inst.service.dtype == jnp.float32 and inst.rate.shape == (3,)
    assert len(jax.tree_util.tree_leaves(inst)) == len(ALL_FIELDS)
    assert len(jax.tree_util.tree_leaves(plain)) == len(FIELDS)  # None leaves add nothing
    back = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(inst), jax.tree_util.tree_leaves(inst))
    np.testing.assert_array_equal(np.asarray(back.service), np.asarray(inst.service))
    # jit sees the optional fields as leaves, or as None
    f = jax.jit(lambda i: i.latency.sum() if i.service is None else i.service.sum() + i.rate.sum())
    assert float(f(inst)) == pytest.approx(float(inst.service.sum() + inst.rate.sum()), rel=1e-6)
    assert np.isinf(float(f(plain)))
    # batches: stack, index, vmap, astype, replace keep the fields
    b = slimjax.stack([random_load_instance(s) for s in range(3)])
    assert b.service.shape == (3, 4, 3, 5) and b.rate.shape == (3, 3)
    np.testing.assert_array_equal(np.asarray(b[1].service), np.asarray(random_load_instance(1).service))
    assert jax.vmap(lambda i: i.rate.sum())(b).shape == (3,)
    b16 = b.astype(jnp.float16)
    assert b16.service.dtype == jnp.float16 and b16.rate.dtype == jnp.float16 and b16.patterns.dtype == jnp.int32
    assert b.replace(capacity=b.capacity * 2).has_load
    assert slimjax.stack([plain, plain]).service is None
    with pytest.raises(ValueError, match="service: all instances must have it or none"):
        slimjax.stack([inst, plain])
    assert "load" in repr(inst) and "load" not in repr(plain)


def test_fields_validation():
    inst = random_load_instance(1)
    v = {f: np.array(getattr(inst, f)) for f in ALL_FIELDS}
    slimjax.Instance(**v)
    bad_service = v["service"].copy()
    bad_service[2, 1, 3] = -0.5
    with pytest.raises(ValueError, match=r"service: must be finite and >= 0, got -0.5 at index \(2, 1, 3\)"):
        slimjax.Instance(**{**v, "service": bad_service})
    bad_service[2, 1, 3] = np.inf
    with pytest.raises(ValueError, match="service: must be finite"):
        slimjax.Instance(**{**v, "service": bad_service})
    bad_rate = v["rate"].copy()
    bad_rate[1] = np.nan
    with pytest.raises(ValueError, match=r"rate: NaN at index \(1,\)"):
        slimjax.Instance(**{**v, "rate": bad_rate})
    with pytest.raises(ValueError, match="service: shape"):
        slimjax.Instance(**{**v, "service": v["service"][:, :2]})
    with pytest.raises(ValueError, match="rate: expected 1 dims"):
        slimjax.Instance(**{**v, "rate": v["rate"][None]})
    with pytest.raises(ValueError, match="rate: the load model needs both service and rate"):
        slimjax.Instance(**{**v, "rate": None})
    with pytest.raises(ValueError, match="service: the load model needs both"):
        inst.replace(service=None)
    # a batch reports the instance index
    b = {f: np.stack([x, x]) for f, x in v.items()}
    b["rate"][1, 2] = -1.0
    with pytest.raises(ValueError, match=r"rate: must be finite and >= 0, got -1.0 at index \(1, 2\)"):
        slimjax.Instance(**b)
    # zero service and zero rates are allowed (no queueing)
    slimjax.Instance(**{**v, "service": np.zeros_like(v["service"]), "rate": np.zeros_like(v["rate"])})


def test_merge_patterns_keeps_load_fields():
    rng = np.random.default_rng(3)
    inst = random_load_instance(3, E=4, M=40, K=2)
    pats = np.asarray(inst.patterns).copy()
    pats[..., 10:20, :] = pats[..., :10, :]  # duplicates to merge
    inst = inst.replace(patterns=pats)
    merged = merge_patterns(inst)
    assert merged.shape[4] < inst.shape[4] and merged.has_load
    np.testing.assert_array_equal(np.asarray(merged.rate), np.asarray(inst.rate))
    x = rng.random(inst.latency.shape[1:]) < 0.6
    np.testing.assert_allclose(np.asarray(ld.utilization(merged, x)), np.asarray(ld.utilization(inst, x)), rtol=1e-5)
    assert float(ld.loaded_objective(merged, x, max_utilization=1.0)) == pytest.approx(
        float(ld.loaded_objective(inst, x, max_utilization=1.0)), rel=1e-5
    )


# -- the formulas against the NumPy reference ---------------------------------------------------

CASES = [
    dict(U=3, N=4, L=3, E=5, M=5, K=3),
    dict(U=4, N=6, L=2, E=6, M=4, K=2),
    dict(U=2, N=3, L=2, E=4, M=6, K=1),
    dict(U=5, N=3, L=1, E=3, M=3, K=2),
]


@pytest.mark.parametrize("case", CASES)
def test_matches_numpy_reference(case):
    for seed in range(3):
        inst = random_load_instance(seed, **case)
        np.testing.assert_allclose(np.asarray(ld.activation_probability(inst)), activation_ref(inst), atol=1e-6)
        for x in placements(inst, seed):
            np.testing.assert_array_equal(np.asarray(ld.assignment(inst, x)), assignment_ref(inst, x))
            rho = utilization_ref(inst, x)
            np.testing.assert_allclose(np.asarray(ld.utilization(inst, x)), rho, rtol=RTOL32, atol=1e-7)
            d = np.asarray(ld.loaded_expert_latency(inst, x))
            np.testing.assert_allclose(d, loaded_d_ref(inst, x), rtol=RTOL32)
            for agg in ("max", "sum"):
                for cap in (0.95, 1.0, 0.5):
                    want = loaded_objective_ref(inst, x, cap, agg)
                    got = float(ld.loaded_objective(inst, x, max_utilization=cap, aggregation=agg))
                    if math.isinf(want):
                        assert got == math.inf
                    else:
                        assert got == pytest.approx(want, rel=RTOL32)
            rep = ld.load_report(inst, x)
            assert bool(rep.feasible) == bool(rho.max() < 0.95)
            assert int(rep.bottleneck) == int(np.argmax(rho))
            assert float(rep.unloaded) == pytest.approx(unloaded_J(inst, x), rel=1e-6)


def test_cases_exercise_the_rules():
    """The random instances contain what the reference comparison must cover."""
    inst = random_load_instance(0)
    lat, fb = np.asarray(inst.latency), np.asarray(inst.fallback)
    assert np.isinf(lat).any()  # unreachable nodes
    assert (np.isfinite(lat) & (lat > fb[:, None])).any()  # a node slower than the fallback
    pats = np.asarray(inst.patterns)
    assert (pats[..., 0] == pats[..., 1]).any()  # a repeated id
    assert (np.asarray(inst.weight) == 0).any()  # a padding pattern
    x = np.ones(lat.shape[1:], bool)
    a = assignment_ref(inst, x)
    assert (a == lat.shape[1]).any() and (a < lat.shape[1]).any()  # both nodes and the fallback used
    # the queueing matters: J_load is visibly above J on the dense placement
    assert float(ld.loaded_objective(inst, x, max_utilization=1.0)) > 1.01 * unloaded_J(inst, x)


def test_float64_exact(x64):
    inst = random_load_instance(5, dtype=np.float64, peak=0.9)
    assert inst.service.dtype == jnp.float64
    for x in placements(inst, 5):
        np.testing.assert_allclose(np.asarray(ld.utilization(inst, x)), utilization_ref(inst, x), rtol=1e-12)
        j = float(ld.loaded_objective(inst, x, max_utilization=1.0))
        assert j == pytest.approx(loaded_objective_ref(inst, x, 1.0), rel=1e-12)


def test_without_load_fields_is_the_unloaded_model():
    inst = random_load_instance(2)
    plain = inst.replace(service=None, rate=None)
    for x in placements(plain, 2):
        np.testing.assert_array_equal(np.asarray(ld.utilization(plain, x)), 0.0)
        assert float(ld.loaded_objective(plain, x)) == pytest.approx(unloaded_J(plain, x), rel=1e-6)
        # rate 0 also gives J
        zero = inst.replace(rate=np.zeros(3, np.float32))
        assert float(ld.loaded_objective(zero, x)) == pytest.approx(unloaded_J(inst, x), rel=1e-6)


def test_load_infeasible_is_inf_with_status_never_nan():
    inst = random_load_instance(4, peak=1.3)  # the dense placement overloads a node
    x = np.ones(inst.latency.shape[1:], bool)
    rho = utilization_ref(inst, x)
    assert rho.max() > 1
    rep = ld.load_report(inst, x)
    assert float(rep.objective) == math.inf and not bool(rep.feasible)
    assert int(rep.bottleneck) == int(np.argmax(rho)) and np.isfinite(float(rep.unloaded))
    d = np.asarray(ld.loaded_expert_latency(inst, x))
    a = assignment_ref(inst, x)
    over = np.isin(a, np.flatnonzero(rho >= 1))
    assert np.isinf(d[over]).all() and np.isfinite(d[~over]).all() and not np.isnan(d).any()
    # between max_utilization and 1: finite times, still infeasible
    inst2 = random_load_instance(4, peak=0.97)
    rep2 = ld.load_report(inst2, x)
    assert not bool(rep2.feasible) and float(rep2.objective) == math.inf
    assert np.isfinite(float(ld.loaded_objective(inst2, x, max_utilization=1.0)))
    # gradients stay finite (zero) at an infeasible point, and finite at a feasible one
    g = jax.grad(lambda r: ld.loaded_objective(inst.replace(rate=r, validate=False), x))(inst.rate)
    assert np.isfinite(np.asarray(g)).all()


def test_gradient_matches_finite_differences(x64):
    inst = random_load_instance(6, dtype=np.float64, peak=0.8)
    x = np.ones(inst.latency.shape[1:], bool)

    def f(rate, service):
        return ld.loaded_objective(inst.replace(rate=rate, service=service, validate=False), x, max_utilization=1.0)

    g_rate, g_svc = jax.grad(f, argnums=(0, 1))(inst.rate, inst.service)
    assert (np.asarray(g_rate) > 0).all()  # more traffic, more waiting
    h = 1e-6
    for u in range(3):
        e = np.zeros(3)
        e[u] = h
        fd = (float(f(inst.rate + e, inst.service)) - float(f(inst.rate - e, inst.service))) / (2 * h)
        assert float(g_rate[u]) == pytest.approx(fd, rel=1e-6)
    dsv = np.zeros(inst.service.shape)
    dsv[1, 0, 2] = h
    fd = (float(f(inst.rate, inst.service + dsv)) - float(f(inst.rate, inst.service - dsv))) / (2 * h)
    assert float(g_svc[1, 0, 2]) == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_batch_jit_vmap_equal_loop():
    insts = [random_load_instance(s, peak=0.85) for s in range(4)]
    b = slimjax.stack(insts)
    xs = np.stack([placements(i, s)[1] for s, i in enumerate(insts)])
    loop_rho = np.stack([np.asarray(ld.utilization(i, x)) for i, x in zip(insts, xs)])
    loop_j = np.array([float(ld.loaded_objective(i, x)) for i, x in zip(insts, xs)])
    np.testing.assert_allclose(np.asarray(ld.utilization(b, xs)), loop_rho, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ld.loaded_objective(b, xs)), loop_j, rtol=1e-6)
    rep = ld.load_report(b, xs)
    assert rep.utilization.shape == (4, 4) and rep.feasible.shape == (4,) and rep.objective.shape == (4,)
    assert ld.loaded_expert_latency(b, xs).shape == (4, 3, 3, 5)
    # jit and vmap: different compiled programs, float32 sums may reassociate (a few ulps)
    jit_j = jax.jit(lambda i, x: ld.loaded_objective(i, x, max_utilization=0.95))(b, jnp.asarray(xs))
    np.testing.assert_allclose(np.asarray(jit_j), loop_j, rtol=1e-6)
    vm_rho = jax.vmap(ld.utilization)(b, jnp.asarray(xs))
    np.testing.assert_allclose(np.asarray(vm_rho), loop_rho, rtol=1e-6)
    # the utilisation cap may be traced (vmapped over a sweep)
    caps = jnp.array([0.3, 0.6, 0.99])
    sweep = jax.vmap(lambda c: ld.loaded_objective(insts[0], xs[0], max_utilization=c))(caps)
    want = [loaded_objective_ref(insts[0], xs[0], float(c)) for c in caps]
    for g, w in zip(np.asarray(sweep), want):
        assert (math.isinf(w) and g == math.inf) or g == pytest.approx(w, rel=RTOL32)


def test_array_level_building_blocks():
    """The *_from functions a solver calls on a utilisation estimate; utilisation is linear in a
    fractional split of the assignment."""
    inst = random_load_instance(7, peak=0.7)
    x = placements(inst, 7)[1]
    N = inst.latency.shape[1]
    a = ld.assignment(inst, x)
    p = ld.activation_probability(inst)
    onehot = jnp.moveaxis(jax.nn.one_hot(a, N + 1)[..., :N], -1, 1)
    rho = ld.utilization_from(p, inst.rate, inst.service, onehot)
    np.testing.assert_allclose(np.asarray(rho), utilization_ref(inst, x), rtol=RTOL32, atol=1e-7)
    rng = np.random.default_rng(0)
    s1, s2 = rng.random(onehot.shape), rng.random(onehot.shape)
    lin = ld.utilization_from(p, inst.rate, inst.service, 0.3 * s1 + 0.7 * s2)
    np.testing.assert_allclose(
        np.asarray(lin),
        0.3 * np.asarray(ld.utilization_from(p, inst.rate, inst.service, s1))
        + 0.7 * np.asarray(ld.utilization_from(p, inst.rate, inst.service, s2)),
        rtol=1e-5,
    )
    est = jnp.asarray(rho) * 0.5  # a solver's estimate
    d = ld.loaded_expert_latency_from(inst.latency, inst.fallback, inst.service, a, est)
    np.testing.assert_allclose(np.asarray(d), loaded_d_ref(inst, x, np.asarray(est)), rtol=RTOL32)
    np.testing.assert_allclose(np.asarray(ld.loaded_expert_latency(inst, x, est)), np.asarray(d), rtol=1e-7)
    node = ld.loaded_node_latency(inst.latency, inst.service, est)
    w = np.asarray(ld.waiting_time(inst.service, est))
    np.testing.assert_allclose(np.asarray(node), np.asarray(inst.latency) + w[None], rtol=1e-7)
    assert np.isinf(np.asarray(ld.waiting_time(inst.service, jnp.array([1.0, 0.5, 2.0, 0.0])))[[0, 2]]).all()


def test_bad_arguments():
    inst = random_load_instance(0)
    x = np.ones(inst.latency.shape[1:], bool)
    with pytest.raises(ValueError, match=r"placement: expected shape \[N, L, E\]"):
        ld.utilization(inst, x[:2])
    with pytest.raises(ValueError, match="max_utilization: must be in"):
        ld.loaded_objective(inst, x, max_utilization=1.5)
    with pytest.raises(ValueError, match="max_utilization: must be in"):
        ld.loaded_objective(inst, x, max_utilization=0.0)
    with pytest.raises(ValueError, match="aggregation"):
        ld.loaded_objective(inst, x, aggregation="mean")
    with pytest.raises(ValueError, match="rho: expected shape"):
        ld.loaded_expert_latency(inst, x, jnp.zeros(2))
    b = slimjax.stack([inst, inst])
    with pytest.raises(ValueError, match=r"placement: expected shape \[batch, N, L, E\]"):
        ld.utilization(b, x)
    with pytest.raises(ValueError, match="statistic"):
        ld.rate_for_load(inst, 0.5, inst.service, statistic="median")


# -- reference placement and rate calibration --------------------------------------------------


def test_reference_placement_is_per_node_lfu():
    inst = random_load_instance(8, L=2, E=6).replace(capacity=np.array([3.0, 0.0, 5.0, 12.0], np.float32))
    x = np.asarray(ld.reference_placement(inst))
    p, tr = activation_ref(inst), np.asarray(inst.traffic, np.float64)
    reach = np.isfinite(np.asarray(inst.latency)).any(axis=(2, 3))  # [U, N]
    for n in range(4):
        assert x[n].sum() == (min(int(inst.capacity[n]), 12) if reach[:, n].any() else 0)
        freq = np.einsum("u,ule->le", tr * reach[:, n], p)
        if 0 < x[n].sum() < 12:
            assert freq[x[n]].min() >= freq[~x[n]].max() - 1e-6  # the most frequent ones


def test_rate_for_load_hits_the_level():
    inst = random_load_instance(9, peak=0.5)
    x = placements(inst, 9)[1]
    for stat in ("mean", "max"):
        rate = np.asarray(ld.rate_for_load(inst, 0.6, inst.service, x, statistic=stat))
        np.testing.assert_allclose(rate / rate.sum(), np.asarray(inst.traffic), rtol=1e-5)
        rho = utilization_ref(inst.replace(rate=rate), x)
        got = rho.max() if stat == "max" else rho[rho > 0].mean()
        assert got == pytest.approx(0.6, rel=1e-5)
    nodes = np.array([False, False, True, True])
    rho = utilization_ref(inst.replace(rate=np.asarray(ld.rate_for_load(inst, 0.4, inst.service, x, nodes))), x)
    assert rho[2:][rho[2:] > 0].mean() == pytest.approx(0.4, rel=1e-5)
    # nothing cached: no node carries load, rates are 0
    assert (np.asarray(ld.rate_for_load(inst, 0.5, inst.service, np.zeros_like(x))) == 0).all()


# -- generators --------------------------------------------------------------------------------

QUEUE_NET = dict(users=4, servers=3, multi_user=True, traffic_alpha=2.0, load=0.5, device_storage_gb=0.01,
                 server_storage_gb=400.0, area_m=200.0, range_m=300.0, server_bandwidth_gbs=(300.0, 1000.0))


@pytest.fixture(scope="module")
def queue_batch():
    """Generated with a load level. K = 1, servers hold every expert, devices none: the queueing
    at the servers is a large part of the latency and the model's assumptions (one activation per
    token and node) hold."""
    return slimjax.generate.instances(2, 3, model=dict(name="mixtral_8x7b", layers=6, top_k=1), network=QUEUE_NET,
                                      routing=dict(tokens=32))


def test_generator_fills_service_and_rate(queue_batch):
    b = queue_batch
    assert b.has_load and b.service.shape == (3, 7, 6, 8) and b.rate.shape == (3, 4)
    m = slimjax.generate.get_model("mixtral_8x7b")
    for i in range(3):
        inst = b[i]
        lat, svc = np.asarray(inst.latency, np.float64), np.asarray(inst.service, np.float64)
        # service = the expert time on the node: the own device's latency is exactly it (no link)
        for u in range(4):
            np.testing.assert_array_equal(lat[u, u], svc[u])
        assert (svc >= m.expert_bytes / 1000e9 * (1 - 1e-6)).all()  # memory-bound, <= 1 TB/s here
        fin = np.isfinite(lat)
        assert (lat[fin] > np.broadcast_to(svc, lat.shape)[fin] - 1e-12).all()
        rate = np.asarray(inst.rate, np.float64)
        np.testing.assert_allclose(rate / rate.sum(), np.asarray(inst.traffic), rtol=1e-5)
        # the load level: mean utilisation of the loaded servers under the reference placement
        rho = utilization_ref(inst, np.asarray(ld.reference_placement(inst)))
        srv = rho[4:]
        assert (srv > 0).any() and srv[srv > 0].mean() == pytest.approx(0.5, rel=1e-4)


def test_generator_jitter_keeps_latency_above_service():
    from slimjax.generate import NetworkConfig, get_model, sample_network

    model = get_model(dict(name="mixtral_8x7b", layers=2))
    cfg = NetworkConfig(users=3, servers=2, multi_user=True, load=0.4, jitter=0.3)
    net = jax.jit(lambda k: sample_network(k, model, cfg))(jax.random.key(1))  # one program, not one per op
    lat, svc = np.asarray(net.latency), np.asarray(net.service)
    fin = np.isfinite(lat)
    assert (lat[fin] >= np.broadcast_to(svc[None], lat.shape)[fin]).all()
    # clipped only where the jitter pushed a latency below the compute time
    assert np.allclose(svc, np.minimum(svc.max(axis=(1, 2), keepdims=True), np.where(fin, lat, np.inf).min(0)))


def test_generator_without_load_and_config_errors():
    from slimjax.generate import NetworkConfig, RoutingConfig, get_model, sample_fields

    model = get_model(dict(name="mixtral_8x7b", layers=2))
    for load, present in ((None, False), (0.3, True)):
        net = NetworkConfig(users=2, servers=2, multi_user=True, load=load)
        out = jax.eval_shape(lambda k, net=net: sample_fields(k, model, net, RoutingConfig(tokens=8)), jax.random.key(0))
        assert (out["service"] is not None) == present and (out["rate"] is not None) == present
        if present:
            assert out["service"].shape == (4, 2, 8) and out["rate"].shape == (2,)
    for bad in (1.0, -0.1, "high", True):
        with pytest.raises(ValueError, match="network.load"):
            NetworkConfig(load=bad)


def test_instance_from_trace_with_a_load_level():
    from slimjax import traces as tr
    from slimjax.generate import instance_from_trace

    rng = np.random.default_rng(0)
    ids = np.stack([np.stack([rng.choice(8, 2, replace=False) for _ in range(3)]) for _ in range(200)])
    inst = instance_from_trace(tr.Trace(ids, 8), model="mixtral_8x7b", network={"servers": 2, "load": 0.4}, key=1)
    assert inst.has_load and inst.service.shape == (3, 3, 8) and inst.rate.shape == (1,)
    rho = utilization_ref(inst, np.asarray(ld.reference_placement(inst)))
    srv = rho[1:]
    assert srv[srv > 0].mean() == pytest.approx(0.4, rel=1e-4)
    assert not instance_from_trace(tr.Trace(ids, 8), model="mixtral_8x7b", network={"servers": 2}, key=1).has_load


def test_multi_user_conf_has_a_load_level():
    from omegaconf import OmegaConf

    from tests.test_config import make

    net = OmegaConf.to_container(make(["network=multi_user"]).network)
    assert 0 < net["load"] < 1 and net["multi_user"] is True
    cfg = slimjax.generate.as_network_config({k: v for k, v in net.items() if k != "name"})
    assert cfg.load == net["load"]
    assert OmegaConf.to_container(make().network)["load"] is None  # the single-user default has none


# -- simulation --------------------------------------------------------------------------------


def isolated_token_latency(inst, x, u: int, m_of_layer) -> float:
    """One token alone in the system, deterministic service: each layer's members go to their
    nodes (half the link there), are served FIFO in arrival order (ties: pattern order), come back
    (other half); the layer ends with its slowest member."""
    lat, fb = np.asarray(inst.latency, np.float64), np.asarray(inst.fallback, np.float64)
    svc, pats = np.asarray(inst.service, np.float64), np.asarray(inst.patterns)
    a = assignment_ref(inst, x)
    N = lat.shape[1]
    total = 0.0
    for l, m in enumerate(m_of_layer):
        members = list(dict.fromkeys(int(e) for e in pats[u, l, m]))
        ends, free = [], {}
        jobs = []
        for order, e in enumerate(members):
            n = a[u, l, e]
            if n == N:
                ends.append(fb[u, l, e])
            else:
                half = (lat[u, n, l, e] - svc[n, l, e]) / 2
                jobs.append((half, order, n, svc[n, l, e]))
        for half, _, n, s in sorted(jobs):
            start = max(half, free.get(n, 0.0))
            free[n] = start + s
            ends.append(start + s + half)
        total += max(ends)
    return total


def test_simulation_of_isolated_tokens_is_exact():
    """Vanishing load, deterministic service, one pattern per (user, layer): every token's latency
    is known exactly, including members sharing a node (they queue behind each other) and
    repeated ids (one activation)."""
    inst = random_load_instance(10, U=3, N=4, L=3, E=5, M=1, K=3)
    x = np.ones(inst.latency.shape[1:], bool)
    a, pats = assignment_ref(inst, x), np.asarray(inst.patterns)
    shared = [
        (u, l) for u in range(3) for l in range(3)
        if len(served := [a[u, l, e] for e in set(pats[u, l, 0].tolist()) if a[u, l, e] < 4]) > len(set(served))
    ]
    assert shared and (pats[..., 0] == pats[..., 1]).all() and (a == 4).any()  # what the case covers
    # ~1e4 token latencies between arrivals: no two tokens meet (this seed); arrival times stay
    # below ~1e7 s, so float64 clock differences are exact to ~1e-9 s
    inst = inst.replace(rate=np.asarray(inst.rate) * 1e-4)
    sim = ld.simulate(inst, x, tokens=60, warmup=0, service="deterministic", seed=3)
    for u in range(3):
        if sim.user_tokens[u]:
            assert sim.user_mean[u] == pytest.approx(isolated_token_latency(inst, x, u, [0, 0, 0]), rel=1e-8)
    assert sim.user_tokens.sum() == 60 and sim.tokens == 60
    np.testing.assert_allclose(sim.latencies.std(), np.std([sim.user_mean[u] for u in range(3)
                                                            for _ in range(sim.user_tokens[u])]), atol=1e-9)


def _at_peak(inst, x, level):
    return inst.replace(rate=ld.rate_for_load(inst, level, inst.service, x, statistic="max"))


def test_simulation_agrees_with_J_load_up_to_0_7(queue_batch):
    """Exponential service, busiest node at 0.3 and 0.7: simulated mean within 10 % of J_load
    (and at 0.7 much closer to J_load than to the unloaded J)."""
    for i, levels in ((0, (0.3, 0.7)), (1, (0.7,)), (2, (0.7,))):
        inst = queue_batch[i]
        x = np.asarray(ld.reference_placement(inst))
        for level in levels:
            il = _at_peak(inst, x, level)
            rep = ld.load_report(il, x, max_utilization=1.0)
            j_load, j = float(rep.objective), float(rep.unloaded)
            sim = ld.simulate(il, x, tokens=2000 if level < 0.5 else 6000, seed=i)
            assert sim.mean_ci < 0.08 * j_load  # the run is long enough to resolve the 10 % band
            assert abs(sim.mean / j_load - 1) <= 0.10, (i, level, sim.mean, j_load)
            if level == 0.7:
                assert j_load > 1.2 * j  # the test can tell queueing from no queueing
                assert abs(sim.mean - j_load) < abs(sim.mean - j) / 3
            # measured utilisation: >= 2000·L activations in the window, 4σ of the busy-time noise < 0.05
            np.testing.assert_allclose(sim.utilization, np.asarray(rep.utilization), atol=0.05)


def test_simulation_deterministic_service_is_md1(queue_batch):
    """Deterministic service halves the M/M/1 waiting time (Pollaczek–Khinchine): the simulation
    tracks J + (J_load − J)/2, not J_load."""
    inst = queue_batch[0]
    x = np.asarray(ld.reference_placement(inst))
    il = _at_peak(inst, x, 0.7)
    rep = ld.load_report(il, x, max_utilization=1.0)
    j_load, j = float(rep.objective), float(rep.unloaded)
    sim = ld.simulate(il, x, tokens=6000, seed=5, service="deterministic")
    assert abs(sim.mean / (j + (j_load - j) / 2) - 1) <= 0.10
    assert sim.mean < j_load * 0.95
    np.testing.assert_allclose(sim.utilization, np.asarray(rep.utilization), atol=0.05)


def test_simulation_K2_members_on_distinct_nodes():
    """K = 2 with a pattern's members always on different nodes and link-dominated latency: the
    mean of the max stays within 10 % of the max of the means up to 0.7."""
    rng = np.random.default_rng(0)
    U, N, L, E, M = 3, 2, 4, 8, 12
    s = rng.uniform(0.5, 1.0, size=N) * 1e-3
    link = rng.uniform(3, 6, size=(U, N)) * 1e-3
    lat = np.broadcast_to((link[:, :, None, None] + s[None, :, None, None]), (U, N, L, E)).copy()
    pats = np.stack([rng.integers(0, 4, size=(U, L, M)), rng.integers(4, 8, size=(U, L, M))], -1)
    w = rng.dirichlet(np.ones(M), size=(U, L))
    x = np.zeros((N, L, E), bool)
    x[0, :, :4] = x[1, :, 4:] = True
    inst = slimjax.Instance(lat, np.full((U, L, E), 0.1), np.ones((L, E)), np.full(N, 99.0), pats, w,
                            service=np.broadcast_to(s[:, None, None], (N, L, E)).copy(), rate=np.ones(U))
    il = _at_peak(inst, x, 0.7)
    rep = ld.load_report(il, x, max_utilization=1.0)
    sim = ld.simulate(il, x, tokens=1500, seed=1)
    assert abs(sim.mean / float(rep.objective) - 1) <= 0.10
    assert float(rep.objective) > 1.2 * float(rep.unloaded)


def test_simulation_is_seeded_and_checks_input(queue_batch):
    inst = queue_batch[1]
    x = np.asarray(ld.reference_placement(inst))
    a = ld.simulate(inst, x, tokens=200, seed=7)
    b = ld.simulate(inst, x, tokens=200, seed=7)
    c = ld.simulate(inst, x, tokens=200, seed=8)
    np.testing.assert_array_equal(a.latencies, b.latencies)
    assert not np.array_equal(a.latencies, c.latencies)
    assert a.p50 <= a.p95 <= a.p99 and a.mean_ci > 0 and a.window > 0
    with pytest.raises(ValueError, match="service: the simulation needs the load model"):
        ld.simulate(inst.replace(service=None, rate=None), x)
    with pytest.raises(ValueError, match="service: must be one of"):
        ld.simulate(inst, x, service="uniform")
    with pytest.raises(ValueError, match="tokens"):
        ld.simulate(inst, x, tokens=1)
    with pytest.raises(ValueError, match="warmup"):
        ld.simulate(inst, x, warmup=-1)
    with pytest.raises(ValueError, match="one instance"):
        ld.simulate(queue_batch, x)
    with pytest.raises(ValueError, match="rate: all token rates are 0"):
        ld.simulate(inst.replace(rate=np.zeros(4, np.float32)), x)
    bad = np.asarray(inst.service).copy() * 0 + 1.0  # service above the latency
    with pytest.raises(ValueError, match=r"service: service\[\d+, \d+, \d+\] = 1 exceeds latency"):
        ld.simulate(inst.replace(service=bad), x)


@pytest.mark.slow
def test_simulation_agreement_long_runs(queue_batch):
    """Longer runs: K = 1 agreement within 5 % at 0.5 and the measured utilisation within 0.02."""
    for i in range(3):
        inst = queue_batch[i]
        x = np.asarray(ld.reference_placement(inst))
        il = _at_peak(inst, x, 0.5)
        rep = ld.load_report(il, x, max_utilization=1.0)
        sim = ld.simulate(il, x, tokens=20000, seed=100 + i)
        assert abs(sim.mean / float(rep.objective) - 1) <= 0.05
        np.testing.assert_allclose(sim.utilization, np.asarray(rep.utilization), atol=0.02)


def test_public_objective_load_and_utilization_are_the_load_model():
    """slimjax.objective(..., load=True) and slimjax.utilization are slimjax.queueing's functions."""
    import jax

    import slimjax

    inst = slimjax.generate.instance(jax.random.key(3), model="mixtral_8x7b", network={"servers": 2, "load": 0.2},
                                     routing={"tokens": 64})
    x = slimjax.solve(inst, "popularity").placement
    np.testing.assert_allclose(float(slimjax.objective(inst, x, load=True)),
                               float(slimjax.queueing.loaded_objective(inst, x)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(slimjax.utilization(inst, x)), np.asarray(slimjax.queueing.utilization(inst, x)))
    assert float(slimjax.objective(inst, x, load=True)) >= float(slimjax.objective(inst, x))  # queues only add
    plain = slimjax.generate.instance(jax.random.key(3), model="mixtral_8x7b", routing={"tokens": 64})
    with pytest.raises(ValueError, match="load: load=True needs"):
        slimjax.objective(plain, x, load=True)
