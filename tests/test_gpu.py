"""GPU checks (run by scripts/gpu_check.sh on a machine with a GPU; skipped elsewhere)."""

import jax
import numpy as np
import pytest

import slimjax
from tests.reference import latency_np

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def need_gpu():
    if jax.default_backend() != "gpu":
        pytest.skip(f"no GPU (default backend is {jax.default_backend()})")


def test_objective_on_gpu_matches_numpy():
    batch = slimjax.generate.instances(jax.random.key(0), 64, model="mixtral_8x7b")
    x = np.random.default_rng(0).random((64,) + batch.latency.shape[-3:]) < 0.3
    J = np.asarray(slimjax.latency(batch, x))
    ref = [latency_np(jax.tree_util.tree_map(np.asarray, batch[i]), x[i]) for i in range(64)]
    np.testing.assert_allclose(J, ref, rtol=1e-5)


@pytest.mark.parametrize("method", ["successive", "greedy", "popularity"])
def test_gpu_solutions_feasible_and_equal_to_cpu(method):
    batch = slimjax.generate.instances(jax.random.key(1), 32, model="mixtral_8x7b")
    sol = slimjax.solve_batch(batch, method)
    with jax.default_device(jax.devices("cpu")[0]):
        cpu_batch = jax.device_put(batch, jax.devices("cpu")[0])
        cpu = slimjax.solve_batch(cpu_batch, method)
    # GPU and CPU reductions may round differently; the objective values must agree closely.
    np.testing.assert_allclose(sol.latency, cpu.latency, rtol=1e-4)
    assert (sol.used <= np.asarray(batch.capacity) * (1 + 1e-6)).all()
