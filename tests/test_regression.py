"""Solutions on fixed seeds equal the recorded ones (``tests/regression_cases.py``).

Guards restructurings that are meant to leave results alone (compile-time work, bucketing,
chunking): J within float32 rounding of a different compiled program (rtol 1e-5), and the same
placement except where two placements have the same J in float64 (a near-tie broken the other way).
"""

from __future__ import annotations

import numpy as np
import pytest

import slimjax
from tests.helpers import assert_same_solutions
from tests.reference import latency_ref
from tests.regression_cases import CASES, PATH, batch_of

RECORDED = np.load(PATH)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_solutions_equal_the_recorded_ones(case):
    name, model, network, routing, n, solvers = case
    batch = batch_of(model, network, routing, n)
    for s in solvers:
        shape = tuple(RECORDED[f"{name}/{s}/shape"])
        x_rec = np.unpackbits(RECORDED[f"{name}/{s}/x"])[: int(np.prod(shape))].reshape(shape).astype(bool)
        J_rec = RECORDED[f"{name}/{s}/J"]
        sol = slimjax.solve_batch(batch, s)
        x = np.asarray(sol.placement)
        J = np.array([latency_ref(batch[i], x[i]) for i in range(n)])
        assert x.shape == shape, s
        # the recorded J is the NumPy reference's J of the recorded placement (float64)
        np.testing.assert_allclose([latency_ref(batch[i], x_rec[i]) for i in range(n)], J_rec, rtol=1e-12)
        assert_same_solutions(batch, x, x_rec, J, J_rec, rtol=1e-5)


# -- many patterns, large E (issue 29): recorded with the code before the speed work -----------

from tests.realistic import shared_traces  # noqa: E402
from tests.regression_large import GENERATED, J64, REALISTIC, generated_batch, realistic_batch  # noqa: E402
from tests.regression_large import PATH as LARGE_PATH  # noqa: E402

LARGE = np.load(LARGE_PATH)


def _check_large(name: str, batch, solvers) -> None:
    for s in solvers:
        shape = tuple(LARGE[f"{name}/{s}/shape"])
        x_rec = np.unpackbits(LARGE[f"{name}/{s}/x"])[: int(np.prod(shape))].reshape(shape).astype(bool)
        J_rec = LARGE[f"{name}/{s}/J"]
        sol = slimjax.solve_batch(batch, s, progress=False)
        x = np.asarray(sol.placement)
        assert x.shape == shape, s
        assert (np.asarray(sol.status) != slimjax.Status.FAILED).all(), s  # FAILED = did not fit the storage
        J = np.array([J64(batch[i], x[i]) for i in range(shape[0])])
        # the same placement, or one of the same J in float64 (a near-tie broken the other way)
        assert_same_solutions(batch, x, x_rec, J, J_rec, rtol=1e-6)


#: the default run keeps the multi-user case; --slow runs all of them
DEFAULT_GENERATED = ("olmoe_users",)


@pytest.mark.parametrize(
    "case",
    [c if c[0] in DEFAULT_GENERATED else pytest.param(c, marks=pytest.mark.slow) for c in GENERATED],
    ids=[c[0] for c in GENERATED],
)
def test_large_generated_solutions_equal_the_recorded_ones(case):
    name, model, network, routing, n, solvers = case
    _check_large(name, generated_batch(model, network, routing, n), solvers)


@pytest.mark.parametrize(
    "case",
    # the default run keeps the smallest real trace (qwen); --slow runs the other two
    [c if c[0] == "qwen" else pytest.param(c, marks=pytest.mark.slow) for c in REALISTIC],
    ids=[c[0] for c in REALISTIC],
)
def test_realistic_solutions_equal_the_recorded_ones(case):
    if shared_traces() is None:
        pytest.skip("../shared/traces/raw is absent (real per-token traces; set SLIMJAX_SHARED)")
    kind, solvers = case
    _check_large(f"real_{kind}", realistic_batch(kind), solvers)
