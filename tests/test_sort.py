"""``stable_argsort`` (integer-sort argsort) is exactly ``jnp.argsort(stable=True)``."""

import zlib
from functools import partial

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


@pytest.mark.parametrize("method", ["radix", "rank"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32, np.int8, np.bool_])
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 33), (2, 4160)])
def test_matches_jnp_argsort(dtype, shape, method):
    seed = zlib.crc32(f"{np.dtype(dtype)}{shape}".encode())  # the same keys in every run and worker
    x = _keys(np.random.default_rng(seed), shape, dtype)
    want = np.asarray(jnp.argsort(jnp.asarray(x), axis=-1, stable=True))
    got = jax.jit(partial(stable_argsort, method=method))(x)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(np.asarray(stable_argsort(x, method=method)), want)  # eager


def test_radix_digits_and_extreme_keys():
    """Keys that differ only in the low or only in the high 16 bits, int32 extremes, and the
    longest row the radix packing allows (2^15: the packed values reach int32's maximum)."""
    rng = np.random.default_rng(5)
    lo = rng.integers(0, 2**16, size=600)
    hi = rng.integers(-(2**15), 2**15, size=600) * 2**16
    ext = np.array([np.iinfo(np.int32).min, np.iinfo(np.int32).max, -1, 0, 1] * 8)
    x = np.concatenate([lo, hi, hi + lo[::-1], ext]).astype(np.int32)
    rng.shuffle(x)
    for keys in (x, np.resize(x, 2**15)):
        want = np.argsort(keys, kind="stable")
        np.testing.assert_array_equal(np.asarray(jax.jit(partial(stable_argsort, method="radix"))(keys)), want)


def test_method_is_checked():
    with pytest.raises(ValueError, match="method"):
        stable_argsort(jnp.zeros(4), method="quick")
    with pytest.raises(ValueError, match="radix"):
        stable_argsort(jnp.zeros(2**15 + 1), method="radix")


def test_all_equal_keys_keep_positions():
    np.testing.assert_array_equal(np.asarray(stable_argsort(jnp.zeros((3, 50)))), np.tile(np.arange(50), (3, 1)))


def test_vmap_matches_loop():
    x = _keys(np.random.default_rng(1), (4, 6, 40), np.float32)
    v = jax.vmap(stable_argsort)(x)
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(v[i]), np.asarray(stable_argsort(x[i])))


def test_float64_keys_take_the_rank_route(x64):
    x = _keys(np.random.default_rng(9), (3, 300), np.float64)
    want = np.asarray(jnp.argsort(jnp.asarray(x), axis=-1, stable=True))
    np.testing.assert_array_equal(np.asarray(jax.jit(stable_argsort)(x)), want)
    with pytest.raises(ValueError, match="32-bit"):
        stable_argsort(jnp.asarray(x), method="radix")
