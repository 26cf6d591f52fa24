"""The one PRNG-key normaliser: what every ``key=`` argument of slimjax accepts."""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["as_key"]


def as_key(key: object, name: str = "key") -> jax.Array:
    """``key`` as one typed PRNG key: an int seed (``None`` = 0), a typed ``jax.random.key``
    (a scalar), or raw ``uint32[2]`` key data (wrapped).

    Raises:
      ValueError: naming ``name`` and the rule, for anything else (a key array, a bool, a float).
    """
    if key is None:
        key = 0
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, (jax.Array, np.ndarray)):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape != ():
                raise ValueError(f"{name}: expected one PRNG key, got a key array of shape {key.shape}")
            return key
        if key.shape == (2,) and key.dtype == np.uint32:
            return jax.random.wrap_key_data(jnp.asarray(key))
    raise ValueError(f"{name}: must be an int seed or a jax.random.key(...), got {key!r}")
