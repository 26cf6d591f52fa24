"""Solutions on fixed seeds equal the recorded ones (``tests/regression_cases.py``).

Guards restructurings that are meant to leave results alone (compile-time work, bucketing,
chunking): J within float32 rounding of a different compiled program (rtol 1e-5), and the same
placement except where two placements have the same J in float64 (a near-tie broken the other way).

The records were made with XLA's default code generation and are checked with it: under the suite's
LLVM -O0 (tests/conftest.py) the generators that rebuild the instances round some floats in the last
bit differently, and on a near-tie a solver may then take the other branch. So where this process
runs with that flag, the checks skip here and run in a child process with XLA's defaults
(:func:`test_records_under_xla_default_code_generation`).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import slimjax
from tests.conftest import TEST_XLA_FLAGS
from tests.helpers import assert_same_solutions
from tests.reference import latency_ref
from tests.regression_cases import CASES, PATH, batch_of

RECORDED = np.load(PATH)

#: whether this process has XLA's default code generation (no flag of the suite's, tests/conftest.py)
DEFAULT_CODEGEN = not set(TEST_XLA_FLAGS.split()) & set(os.environ.get("XLA_FLAGS", "").split())
recorded_codegen = pytest.mark.skipif(
    not DEFAULT_CODEGEN, reason="checked with XLA's default code generation by "
    "test_records_under_xla_default_code_generation (a child process)")


@pytest.mark.skipif(DEFAULT_CODEGEN, reason="this process has XLA's default code generation: the checks run here")
def test_records_under_xla_default_code_generation(request):
    """This module's checks, in a child pytest with XLA's default code generation (the one the
    records were made with), under the same marker expression as this run."""
    env = dict(os.environ, SLIMJAX_TEST_XLA_OPT="default",
               XLA_FLAGS=" ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if f not in TEST_XLA_FLAGS.split()))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
           "-m", request.config.option.markexpr or "", __file__]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=1800,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and " failed" not in r.stdout, r.stdout[-3000:]


@recorded_codegen
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


@recorded_codegen
@pytest.mark.parametrize(
    "case",
    [c if c[0] in DEFAULT_GENERATED else pytest.param(c, marks=pytest.mark.slow) for c in GENERATED],
    ids=[c[0] for c in GENERATED],
)
def test_large_generated_solutions_equal_the_recorded_ones(case):
    name, model, network, routing, n, solvers = case
    _check_large(name, generated_batch(model, network, routing, n), solvers)


@recorded_codegen
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
