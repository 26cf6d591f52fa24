"""Shape buckets: a few sizes that batch sizes and pattern counts are padded up to, so that a sweep
over slightly different shapes reuses one compiled program per bucket instead of compiling one
per shape.

Sizes up to 8 are their own bucket; above, there are four buckets per doubling
(10, 12, 14, 16, 20, 24, 28, 32, 40, ...: the buckets of the DP's capacity axis), so padding adds
at most 25 % work.
What is padded, and why it cannot change a result:

* the batch of a single-chunk solve, by repeating the last instance (the padded rows are dropped);
* the routing patterns of each (user, layer), with pattern 0 at weight 0 (a zero-weight pattern
  adds exactly 0 to every gain and to J), only where merging did not already fix the pattern
  count by the shape (``M' = C(E + K − 1, K)``).

N, L and E are not bucketed: a padded node, layer or expert would change the work of every node
problem and the storage grid, not only add zeros.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from slimjax._instance import Instance
from slimjax.ops import bucket_units

__all__ = ["bucket", "pad_patterns"]


def bucket(n: int) -> int:
    """The smallest bucket size >= ``n`` (``n`` itself for n <= 8; then 4 sizes per doubling, the
    same buckets as the DP's capacity axis, :func:`slimjax.ops.bucket_units`)."""
    return max(bucket_units(int(n)), 1)


def pad_patterns(batch: Instance, m: int) -> Instance:
    """``batch`` with its pattern axis padded to ``m`` (pattern 0, weight 0); itself when M >= m."""
    M = batch.patterns.shape[-2]
    if m <= M:
        return batch
    lead = batch.patterns.shape[:-2]
    K = batch.patterns.shape[-1]
    xp = jnp if not isinstance(batch.patterns, np.ndarray) else np
    pat = xp.concatenate([batch.patterns, xp.zeros(lead + (m - M, K), batch.patterns.dtype)], axis=-2)
    w = xp.concatenate([batch.weight, xp.zeros(lead + (m - M,), batch.weight.dtype)], axis=-1)
    return batch.replace(patterns=pat, weight=w, validate=False)
