"""Chunking, padding, sharding over simulated devices, and no recompiles (slimjax/batching.py)."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slimjax
from slimjax.solvers._batching import chunk_size_for
from slimjax.solvers import Successive
from tests.helpers import assert_same_solutions, random_instance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_batch(n=7, **kw):
    return slimjax.stack([random_instance(s, U=1, N=3, L=3, E=5, M=6, K=2, **kw) for s in range(n)])


@pytest.mark.parametrize("name,sizes", [
    # random restarts: each instance's key goes with it into its chunk (--slow; the default run
    # chunks the deterministic solver)
    pytest.param("successive-best", (3,), marks=pytest.mark.slow),
    ("successive", (1, 4)),  # cheap to compile: more chunk sizes
])
def test_chunked_equals_unchunked(name, sizes):
    b = small_batch(7)
    full = slimjax.solve_batch(b, name, chunk_size=7, progress=False)
    for cs in sizes:
        part = slimjax.solve_batch(b, name, chunk_size=cs, progress=False)
        assert part.placement.shape[0] == 7  # padding dropped
        # another chunk size is another compiled program: same J, placements up to exact ties
        assert_same_solutions(b, part.placement, full.placement, part.objective, full.objective)


def test_chunk_size_from_memory_budget():
    best = slimjax.methods()["successive-best"].stages()[0]
    shape = (1, 5, 32, 8, 256, 2)
    grid = slimjax.ops.Grid(np.ones((1, 32), np.int32), np.full((1, 5), 64, np.int32), 64, np.ones(1))
    est = best.bytes_per_instance(shape, best.config(shape, grid, "max"))
    small = chunk_size_for(est, 10_000, None, 1.0)
    big = chunk_size_for(est, 10_000, None, 1024.0)
    assert 1 <= small < big <= 10_000
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_size_for(est, 10, 0, 1.0)
    with pytest.raises(ValueError, match="memory_budget_mb"):
        chunk_size_for(est, 10, None, 0.0)
    with pytest.raises(ValueError, match="memory_budget_mb"):
        chunk_size_for(est, 10, None, "lots")
    auto = chunk_size_for(est, 10_000, None, "auto")
    explicit = chunk_size_for(est, 10_000, None, 2048.0)
    assert jax.default_backend() != "cpu" or auto == explicit  # "auto" is 2048 MB on CPU


def test_chunk_estimate_covers_compiled_memory():
    """The successive working-set estimate is not below what XLA's compiled solver needs."""
    from slimjax.ops._patterns import merge_patterns
    from slimjax.solvers._successive import successive_batch

    b = merge_patterns(slimjax.generate.instances(jax.random.key(0), 8, model="mixtral_8x7b"))
    g = slimjax.ops.capacity_grid(b)
    for solver in (slimjax.methods()["successive-best"].stages()[0], Successive()):
        cfg = solver.config(b.shape, g, "max")
        compiled = successive_batch.lower(
            b, jnp.asarray(g.size_units), jnp.asarray(g.capacity_units), cfg, None
        ).compile()
        need = compiled.memory_analysis().temp_size_in_bytes / 8
        est = solver.bytes_per_instance(b.shape, cfg)
        assert need <= est <= 20 * need, (solver, need, est)


def test_no_recompile_on_second_call():
    b = small_batch(5)
    slimjax.solve_batch(b, "successive", chunk_size=2, progress=False)  # compiles (padded last chunk too)
    b2 = b.replace(latency=b.latency * 1.5, fallback=b.fallback * 1.2)  # new values, same shapes and grid
    # same shapes and same grid size: nothing may compile
    with jax.log_compiles(True):
        import logging

        records = []

        class H(logging.Handler):
            def emit(self, r):
                if "Finished XLA compilation" in r.getMessage() or "Compiling" in r.getMessage():
                    records.append(r.getMessage())

        h = H()
        logging.getLogger("jax").addHandler(h)
        try:
            jax.jit(lambda a: a * 3 + 1)(np.zeros(17))  # positive control: a new function compiles
            assert records, "compile logging is not captured; the check below would be vacuous"
            records.clear()
            slimjax.solve_batch(b2, "successive", chunk_size=2, progress=False)
        finally:
            logging.getLogger("jax").removeHandler(h)
    assert not records, records[:3]


SHARDED = textwrap.dedent(
    """
    import os, sys, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    sys.path.insert(0, {root!r})
    import jax, numpy as np, slimjax
    from tests.helpers import random_instance
    assert jax.local_device_count() == 4, jax.devices()
    b = slimjax.stack([random_instance(s, U=1, N=3, L=3, E=5, M=6, K=2) for s in range(10)])
    out = {{}}
    for cs in (3,):  # chunks of 4 (rounded up to the 4 devices), the last one padded: 10 = 4 + 4 + 2
        sol = slimjax.solve_batch(b, "successive", chunk_size=cs, progress=False)
        out[str(cs)] = [sol.placement.astype(int).tolist(), sol.objective.tolist()]
    print(json.dumps(out))
    """
)


def test_sharded_over_4_devices_equals_single_device():
    code = SHARDED.format(root=ROOT)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    got = json.loads(r.stdout.strip().splitlines()[-1])
    b = slimjax.stack([random_instance(s, U=1, N=3, L=3, E=5, M=6, K=2) for s in range(10)])
    ref = slimjax.solve_batch(b, "successive", progress=False)
    for key in got:  # 4 devices vs 1: other programs, so placements agree up to exact ties
        assert_same_solutions(b, np.array(got[key][0], bool), ref.placement, got[key][1], ref.objective)


def test_every_stage_stays_within_a_small_memory_budget(monkeypatch):
    """Pattern merging, the solver and the final evaluation of J all run in chunks: with a small
    budget on a larger batch, no compiled program's XLA footprint (arguments + outputs +
    temporaries, from ``memory_analysis``) exceeds the budget, while one unchunked program would."""
    from slimjax.solvers import _solve

    clocks = []

    class Recording(_solve.Clock):
        def __init__(self):
            super().__init__()
            clocks.append(self)

    monkeypatch.setattr(_solve, "Clock", Recording)
    batch = slimjax.generate.instances(jax.random.key(1), 48, model="mixtral_8x7b", routing={"tokens": 256})
    budget_mb = 4.0
    small = slimjax.solve_batch(batch, "successive", memory_budget_mb=budget_mb)
    assert 0 < clocks[-1].peak_bytes <= budget_mb * 2**20, clocks[-1].peak_bytes / 2**20
    whole = slimjax.solve_batch(batch, "successive", memory_budget_mb=4096.0)
    assert clocks[-1].peak_bytes > budget_mb * 2**20  # the check above is not vacuous
    assert_same_solutions(batch, small.placement, whole.placement, small.objective, whole.objective)


# -- shape buckets ---------------------------------------------------------------------------


class _Compiles:
    """Collects jax's "compiling" log lines inside a ``with`` block (with a positive control)."""

    def __enter__(self):
        import logging

        self.records = []
        outer = self

        class H(logging.Handler):
            def emit(self, r):
                if "Finished XLA compilation" in r.getMessage() or "Compiling" in r.getMessage():
                    outer.records.append(r.getMessage())

        self._h = H()
        self._ctx = jax.log_compiles(True)
        self._ctx.__enter__()
        logging.getLogger("jax").addHandler(self._h)
        jax.jit(lambda a: a * 5 + 2)(np.zeros(19))  # a new function compiles: logging is captured
        assert self.records, "compile logging is not captured; the check would be vacuous"
        self.records.clear()
        return self

    def __exit__(self, *exc):
        import logging

        logging.getLogger("jax").removeHandler(self._h)
        self._ctx.__exit__(*exc)

    @property
    def programs(self) -> list[str]:
        """The compiled programs, without single eager operations on a new shape (``x[None]`` or
        a slice on the host side of a call: milliseconds each, not a solver program)."""
        import re

        eager = ("broadcast_in_dim", "squeeze", "slice", "dynamic_slice", "reshape", "concatenate",
                 "convert_element_type", "pad", "select_n", "expand_dims")
        return [r for r in self.records if not re.search(r"jit\((%s)\)" % "|".join(eager), r)]


def test_bucket_sizes():
    from slimjax.solvers._buckets import bucket

    sizes = [bucket(n) for n in range(1, 5000)]
    assert sizes[:8] == list(range(1, 9))
    assert all(b >= n for n, b in zip(range(1, 5000), sizes))
    assert all(b <= 1.25 * n for n, b in zip(range(1, 5000), sizes))  # at most 25 % padding
    assert sizes == sorted(sizes) and len(set(sizes[8:])) <= 4 * 10  # four buckets per doubling
    assert all(bucket(b) == b for b in set(sizes))


def test_nearby_batch_sizes_share_one_program():
    """B = 9 and B = 10 fall in one bucket: the second solve compiles nothing, and the instances
    both solve equal bit for bit (the same program); bucket_shapes=False compiles for B = 9. The
    padding is rows of the batch, the same for every solver: "successive" compiles the fewest
    programs (padded patterns, which do reach inside a solver, are checked with successive-best below)."""
    b = slimjax.stack([random_instance(300 + s, U=1, N=3, L=3, E=5, M=6, K=2) for s in range(10)])
    first = slimjax.solve_batch(b[:9], "successive", progress=False)
    with _Compiles() as c:
        second = slimjax.solve_batch(b, "successive", progress=False)
    assert not c.programs, c.programs[:3]
    np.testing.assert_array_equal(first.placement, second.placement[:9])
    np.testing.assert_array_equal(first.objective, second.objective[:9])
    with _Compiles() as c:
        exact = slimjax.solve_batch(b[:9], "successive", progress=False, bucket_shapes=False)
    assert c.programs  # its own shape: compiled
    assert_same_solutions(b[:9], exact.placement, first.placement, exact.objective, first.objective)


def test_nearby_token_counts_share_one_program():
    """M = 13 and M = 14 (merging cannot shrink them: C(E+K-1, K) is larger) pad to one bucket with
    zero-weight patterns: no second compilation and the same solutions as unpadded (checked for the
    one of them that is padded more, M = 13: each unpadded reference compiles its own program)."""
    a = random_instance(41, U=1, N=3, L=3, E=12, M=13, K=3)
    b = random_instance(41, U=1, N=3, L=3, E=12, M=14, K=3)  # the same network and grid, other patterns
    sa = slimjax.solve(a, "successive-best")
    with _Compiles() as c:
        slimjax.solve(b, "successive-best")
    assert not c.programs, c.programs[:3]
    ref = slimjax.solve(a, "successive-best", bucket_shapes=False)
    one = slimjax.stack([a])
    assert_same_solutions(one, ref.placement[None], sa.placement[None], ref.objective[None], sa.objective[None])
    with pytest.raises(ValueError, match="bucket_shapes"):
        slimjax.solve(a, "successive", bucket_shapes="yes")
