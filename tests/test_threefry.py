"""The host threefry (slimjax.generate._threefry) gives jax.random's bits exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slimjax.generate import _threefry as threefry
from slimjax.generate._instances import _host_pools, resolve

SEEDS = [0, 1, 7, 2**31 - 1, 2**31 + 5, 123456789]


@pytest.mark.parametrize("seed", SEEDS)
def test_split_and_uniform_equal_jax_random(seed):
    key = jax.random.key(seed)
    raw = np.asarray(jax.random.key_data(key))
    for n in (1, 2, 5, 1000):
        np.testing.assert_array_equal(threefry.split(raw, n), np.asarray(jax.random.key_data(jax.random.split(key, n))))
    for n in (1, 3, 4097):
        np.testing.assert_array_equal(threefry.uniform(raw, n, np.float32), np.asarray(jax.random.uniform(key, (n,))))
    # a batch of keys at once: the leading axes broadcast
    keys = jax.random.split(key, 4)
    np.testing.assert_array_equal(
        threefry.uniform(np.asarray(jax.random.key_data(keys)), 33, np.float32),
        np.asarray(jax.vmap(lambda k: jax.random.uniform(k, (33,)))(keys)),
    )


def test_uniform_float64_equals_jax_random(x64):
    for seed in SEEDS[:3]:
        key = jax.random.key(seed)
        got = threefry.uniform(np.asarray(jax.random.key_data(key)), 257, np.float64)
        np.testing.assert_array_equal(got, np.asarray(jax.random.uniform(key, (257,), jnp.float64)))


def test_which_keys_are_drawn_on_the_host():
    assert threefry.host_draws_match_jax(jax.random.key(0))
    assert threefry.host_draws_match_jax(jax.random.PRNGKey(0))  # raw uint32[2] data, default impl
    assert not threefry.host_draws_match_jax(jax.random.key(0, impl="rbg"))
    m, net, rout = resolve("mixtral_8x7b")
    assert _host_pools(jax.random.key(0), 2, m, net, rout, np.float32) is not None
    _, with_shares, _ = resolve(network={"users": 2, "traffic_alpha": 1.0})
    assert _host_pools(jax.random.key(0), 2, m, with_shares, rout, np.float32) is None  # Dirichlet draws in JAX
    assert _host_pools(jax.random.key(0, impl="rbg"), 2, m, net, rout, np.float32) is None


def test_other_prng_keeps_the_jax_path():
    """An rbg key draws in JAX (the host copy knows only threefry) and still gives a valid batch."""
    from slimjax.generate import instances

    b = instances(jax.random.key(3, impl="rbg"), 2, routing={"tokens": 8})
    assert b.batch_shape == (2,)
