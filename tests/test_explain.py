"""slimjax.explain: every breakdown adds up, against loop references in float64."""

from __future__ import annotations

import io

import jax
import numpy as np
import pytest

import slimjax
from tests.helpers import random_instance, random_placement
from tests.reference import expert_latency_ref, latency_ref


def layer_ref(inst, x) -> np.ndarray:
    """Per-layer J [L] with explicit loops (float64)."""
    d = expert_latency_ref(inst.latency, np.asarray(inst.fallback, np.float64), x)
    pat, w, tr = np.asarray(inst.patterns), np.asarray(inst.weight, np.float64), np.asarray(inst.traffic, np.float64)
    U, L, M, K = pat.shape
    out = np.zeros(L)
    for u in range(U):
        for l in range(L):
            for m in range(M):
                out[l] += tr[u] * w[u, l, m] * max(d[u, l, pat[u, l, m, k]] for k in range(K))
    return out


@pytest.fixture(scope="module")
def case():
    inst = slimjax.generate.instance(jax.random.key(3), model={"name": "mixtral_8x7b", "layers": 5},
                                     routing={"tokens": 48}, network={"servers": 3, "storage_fraction": 0.3})
    x = np.asarray(slimjax.solve(inst, "greedy").placement)
    return inst, x, slimjax.explain(inst, x)


def test_layers_sum_to_J_float64(case):
    inst, x, ex = case
    J_ref = latency_ref(inst, x)
    np.testing.assert_allclose(ex.layers["J"].to_numpy(), layer_ref(inst, x), rtol=1e-12, atol=0)
    assert abs(ex.layers["J"].sum() - J_ref) <= 1e-12 * J_ref
    assert abs(ex.J - J_ref) <= 1e-12 * J_ref
    # the float32 library objective agrees to float32 rounding
    assert abs(float(slimjax.objective(inst, x)) - J_ref) <= 1e-5 * J_ref
    empty = np.zeros_like(x)
    assert abs(ex.J_empty - latency_ref(inst, empty)) <= 1e-12 * ex.J_empty
    np.testing.assert_allclose(ex.layers["J_empty"], layer_ref(inst, empty), rtol=1e-12)
    assert ex.gain == pytest.approx(ex.J_empty - ex.J) and ex.gain > 0
    assert ex.gain_frac == pytest.approx(ex.gain / ex.J_empty)


def test_shares_and_contributions_add_up(case):
    _, x, ex = case
    N = x.shape[0]
    assert list(ex.shares.index)[-1] == "cloud" and len(ex.shares) == N + 1
    for col in ("activations", "steps"):
        assert ex.shares[col].sum() == pytest.approx(1.0, abs=1e-12)
        assert (ex.shares[col] >= 0).all()
    np.testing.assert_allclose(ex.contribution.sum(axis=1), ex.layers["J"], rtol=1e-12)
    assert list(ex.contribution.columns) == list(ex.shares.index)
    # the node rows repeat the shares
    np.testing.assert_allclose(ex.nodes["steps"].to_numpy(), ex.shares["steps"].to_numpy()[:-1])
    # cloud_steps is each layer's cloud share
    p = ex.patterns.assign(cloud=ex.patterns.weight * (ex.patterns.slowest_node == "cloud"))
    per_layer = p.groupby("layer")[["cloud", "weight"]].sum()  # U = 1: weights of a layer sum to 1
    np.testing.assert_allclose(ex.layers["cloud_steps"].to_numpy(), (per_layer.cloud / per_layer.weight).to_numpy(),
                               rtol=1e-12, atol=1e-15)


def test_nodes_storage_and_order(case):
    inst, x, ex = case
    nodes = ex.nodes
    cap = np.asarray(inst.capacity, np.float64)
    np.testing.assert_allclose((nodes["used"] + nodes["free"]).to_numpy(), cap[nodes.index], rtol=1e-15)
    used = np.einsum("nle,le->n", x.astype(np.float64), np.asarray(inst.size, np.float64))
    np.testing.assert_allclose(nodes["used"].to_numpy(), used[nodes.index])
    assert (nodes["free"] >= -1e-6 * cap.max()).all()
    assert (nodes["copies"].to_numpy() == x.sum(axis=(1, 2))[nodes.index]).all()
    # devices first, then servers fastest first (slimjax.ops.node_speed)
    speed = np.asarray(slimjax.ops.node_speed(inst.latency, inst.traffic))
    assert nodes.index[0] == 0 and nodes["role"].iloc[0] == "device"
    servers = nodes.index[1:].to_numpy()
    assert (np.diff(speed[servers]) >= 0).all()
    np.testing.assert_allclose(nodes["speed"].to_numpy(), speed[nodes.index], rtol=1e-5)


def test_patterns_and_experts(case):
    inst, x, ex = case
    d = expert_latency_ref(inst.latency, np.asarray(inst.fallback, np.float64), x)
    p = ex.patterns
    assert len(p) == int((np.asarray(inst.weight) > 0).sum())
    for r in p.sample(20, random_state=0).itertuples():
        vals = [d[r.user, r.layer, e] for e in r.experts]
        assert r.latency == pytest.approx(max(vals), rel=1e-12)
        assert d[r.user, r.layer, r.slowest_expert] == pytest.approx(max(vals), rel=1e-12)
        assert r.slowest_expert in r.experts
    fr = ex.experts.pivot(index="layer", columns="expert", values="frequency").to_numpy()
    np.testing.assert_allclose(fr, ex.frequency)
    K = inst.patterns.shape[-1]
    np.testing.assert_allclose(fr.sum(-1), K, rtol=1e-5)  # distinct top-K sets: K activations per token
    assert (ex.experts["copies"].to_numpy() == x.sum(0).reshape(-1)).all()


def test_known_pair_instance():
    """K = 2 with one pattern: one expert cached gains nothing, the cloud decides every step."""
    inst = slimjax.Instance(
        latency=np.full((1, 1, 1, 2), 0.01), fallback=np.full((1, 1, 2), 0.1), size=np.ones((1, 2)),
        capacity=np.array([2.0]), patterns=np.array([[[[0, 1]]]]), weight=np.array([[[1.0]]]))
    one = slimjax.explain(inst, np.array([[[True, False]]]))
    assert one.J == pytest.approx(0.1) and one.gain == pytest.approx(0.0, abs=1e-15)
    assert one.shares.loc["cloud", "steps"] == 1.0 and one.shares.loc["device", "activations"] == 0.5
    both = slimjax.explain(inst, np.array([[[True, True]]]))
    assert both.J == pytest.approx(0.01) and both.shares.loc["device", "steps"] == 1.0
    assert both.nodes.loc[0, "free"] == 0.0 and both.nodes.loc[0, "used"] == 2.0
    assert both.patterns.slowest_node.tolist() == ["device"]


def test_multi_user_and_sum_aggregation():
    inst = random_instance(U=3, N=5, L=3, E=4, M=6, K=2, seed=4, unreachable=True, pad=2)
    x = random_placement(inst, seed=1)
    ex = slimjax.explain(inst, x)
    assert ex.names[:3] == ("device 0", "device 1", "device 2")
    assert ex.J == pytest.approx(latency_ref(inst, x), rel=1e-12)
    assert ex.shares["steps"].sum() == pytest.approx(1.0, abs=1e-12)
    s = slimjax.explain(inst, x, aggregation="sum")
    assert s.J == pytest.approx(latency_ref(inst, x, "sum"), rel=1e-12)
    np.testing.assert_allclose(s.contribution.sum(axis=1), s.layers["J"], rtol=1e-12)
    named = slimjax.explain(inst, x, names=["a", "b", "c", "d", "e"], devices=1)
    assert list(named.nodes["role"]).count("device") == 1 and "a" in named.shares.index


def test_accepts_a_solution_and_prints(case):
    inst, _, ex = case
    sol = slimjax.solve(inst, "greedy")
    assert slimjax.explain(inst, sol).J == pytest.approx(ex.J)
    text = repr(ex)
    assert "J (per token)" in text and "server" in text and "cloud" in text
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=120).print(ex)
    assert "nodes" in buf.getvalue() and "layer" in buf.getvalue()


def test_bad_input(case):
    inst, x, _ = case
    batch = slimjax.stack([inst, inst])
    with pytest.raises(ValueError, match="inst"):
        slimjax.explain(batch, np.stack([x, x]))
    with pytest.raises(ValueError, match="placement"):
        slimjax.explain(inst, x[:, :2])
    with pytest.raises(ValueError, match="placement"):
        slimjax.explain(inst, x.astype(np.float32))
    with pytest.raises(ValueError, match="aggregation"):
        slimjax.explain(inst, x, aggregation="mean")
    with pytest.raises(ValueError, match="names"):
        slimjax.explain(inst, x, names=["a"])
    with pytest.raises(ValueError, match="devices"):
        slimjax.explain(inst, x, devices=99)
