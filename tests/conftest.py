import contextlib
import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# the suite leaves the per-user compilation cache alone (tests/test_cache.py turns it on in subprocesses)
os.environ.setdefault("SLIMJAX_CACHE", "0")

#: XLA flags of the test run, for every program the suite compiles (in this process, its xdist
#: workers and the subprocesses that inherit the environment): LLVM's -O0, and XLA CPU's elemental
#: fusion emitters (the option slimjax itself compiles E <= 16 programs with, slimjax._compile).
#: Compiling is most of the suite's time and its programs run for milliseconds. Measured side by
#: side on 2 cores (2026-12-07, the default run, 743 tests): worker time 1,371 -> 741 s, wall 702 ->
#: 390 s. The flags choose how XLA emits code (LLVM's optimisation level, the fusion emitter); the
#: memory-budget tests, which read XLA's memory_analysis, pass under them. Floats can differ in the
#: last bits (where one build contracts a multiply and an add into an FMA, say). Every test that
#: compares floats from two programs allows for that; the regression records
#: (tests/test_regression.py) were made with XLA's defaults and are checked with them, in a child
#: process. Users, the benchmarks and the GPU check compile with XLA's defaults, and so does ``bash
#: scripts/test.sh --slow`` (it sets ``SLIMJAX_TEST_XLA_OPT=default``, which turns these flags off
#: for any run).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if os.environ.get("SLIMJAX_TEST_XLA_OPT", "fast").strip().lower() != "default":
    _flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in _flags:
        os.environ["XLA_FLAGS"] = f"{_flags} {TEST_XLA_FLAGS}".strip()

import jax  # noqa: E402
import jaxtyping  # noqa: E402
import pytest  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")

# The suite runs with slimjax's annotations checked at run time (pyproject.toml: jaxtyping's import
# hook with beartype, --jaxtyping-packages). Inside ``pytest.raises`` a test feeds invalid input on
# purpose to check slimjax's own error (a ValueError naming the field, as the docs promise), which
# the type check of the parameters would pre-empt with a TypeCheckError: there the check is off.
_raises = pytest.raises


class _Unchecked:
    """A ``pytest.raises`` context with jaxtyping's checks disabled while it is open."""

    def __init__(self, ctx):
        self._ctx = ctx

    def __enter__(self):
        self._old = jaxtyping.config.jaxtyping_disable
        jaxtyping.config.update("jaxtyping_disable", True)
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        try:
            return self._ctx.__exit__(*exc)
        finally:
            jaxtyping.config.update("jaxtyping_disable", self._old)


def _raises_unchecked(expected_exception, *args, **kwargs):
    if args:  # the call form pytest.raises(E, func, *args)
        with _Unchecked(contextlib.nullcontext()):
            return _raises(expected_exception, *args, **kwargs)
    return _Unchecked(_raises(expected_exception, **kwargs))


_raises_unchecked.__doc__ = _raises.__doc__
pytest.raises = _raises_unchecked


@pytest.fixture
def rng():
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Run a test with float64 enabled, restoring the flag afterwards."""
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


@pytest.fixture
def shared_dir():
    """The ../shared folder beside the checkout (real traces); skip when absent."""
    path = os.path.abspath(os.environ.get("SLIMJAX_SHARED", SHARED))
    if not os.path.isdir(os.path.join(path, "traces")):
        pytest.skip(f"../shared/traces not found at {path} (set SLIMJAX_SHARED); real-trace tests skipped")
    return path


#: a worker drops its compiled programs after a module once its resident memory has grown by this
#: much since it last dropped them (freed memory is not always returned to the system, so the
#: growth is what is measured, not the level)
CLEAR_AFTER_GROWTH_BYTES = 1 << 30
_after_last_clear = [0]


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None  # not Linux: unknown


@pytest.fixture(scope="module", autouse=True)
def _compiled_programs_bounded():
    """Drop the compiled programs after a test module once the worker's memory has grown by
    :data:`CLEAR_AFTER_GROWTH_BYTES`. Kept for a whole run, they grew each worker past 5 GB (2026-12-06),
    and the two crashes seen in full runs were inside XLA's compiler late in the run; dropped after
    every module, programs that later modules share would compile again."""
    yield
    rss = _resident_bytes()
    if rss is None or rss > _after_last_clear[0] + CLEAR_AFTER_GROWTH_BYTES:
        from slimjax._compile import clear_cache

        clear_cache()
        jax.clear_caches()
        _after_last_clear[0] = _resident_bytes() or 0
