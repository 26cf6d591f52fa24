"""``stable_argsort`` (integer-sort argsort) is exactly ``jnp.argsort(stable=True)``."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slimjax.ops._sort import stable_argsort


def _keys(rng, shape, dtype):
    x = rng.normal(size=shape) * 3
    if np.issubdtype(dtype, np.floating):
        # ties, signed zeros, infinities and NaNs of both signs: the cases a comparator treats specially
        x = np.where(rng.random(shape) < 0.2, np.round(x), x)
        for v, p in ((np.inf, 0.1), (-np.inf, 0.1), (0.0, 0.1), (-0.0, 0.1), (np.nan, 0.05), (-np.nan, 0.05)):
            x = np.where(rng.random(shape) < p, v, x)
    else:
        x = np.round(x)
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32, np.int8, np.bool_])
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 33), (2, 4160)])
def test_matches_jnp_argsort(dtype, shape):
    seed = zlib.crc32(f"{np.dtype(dtype)}{shape}".encode())  # the same keys in every run and worker
    x = _keys(np.random.default_rng(seed), shape, dtype)
    want = np.asarray(jnp.argsort(jnp.asarray(x), axis=-1, stable=True))
    got = jax.jit(stable_argsort)(x)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(np.asarray(stable_argsort(x)), want)  # eager


def test_all_equal_keys_keep_positions():
    np.testing.assert_array_equal(np.asarray(stable_argsort(jnp.zeros((3, 50)))), np.tile(np.arange(50), (3, 1)))


def test_vmap_matches_loop():
    x = _keys(np.random.default_rng(1), (4, 6, 40), np.float32)
    v = jax.vmap(stable_argsort)(x)
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(v[i]), np.asarray(stable_argsort(x[i])))
