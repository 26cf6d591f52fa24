import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# the suite leaves the per-user compilation cache alone (tests/test_cache.py turns it on in subprocesses)
os.environ.setdefault("SLIMJAX_CACHE", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


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
