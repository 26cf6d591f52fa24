#!/usr/bin/env python
"""Certified gaps of successive-best on the real-trace instances and on every model preset, and
where a gap comes from (issue 29 part 3).

    .venv/bin/python experiments/certificates/real_traces.py --kinds deepseek_v2_lite qwen olmoe --milp-limit 300
    .venv/bin/python experiments/certificates/real_traces.py --presets

Real-trace instances: ``tests.realistic.instance(kind)`` (../shared traces). For each: the
successive-best solve, ``slimjax.certify`` (the ``auto`` bound: the threshold LP by PDHG for
E > 16; the first call, compilation included, and its compile seconds), and with ``--milp-limit``
the threshold LP on HiGHS and the MILP on HiGHS within that limit (its incumbent and its dual
bound: which side of the gap is loose). ``--presets``: one generated instance of every model
preset (``generate.instances(jax.random.key(0), 1, model=preset)``).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import slimjax  # noqa: E402
from slimjax.bounds import ThresholdHighs, lower_bound  # noqa: E402


def certify_one(name, batch, milp_limit):
    t = time.perf_counter()
    sol = slimjax.solve_batch(batch, "successive-best")
    solve_s = time.perf_counter() - t
    t = time.perf_counter()
    c = slimjax.certify(batch, sol)
    cert_s = time.perf_counter() - t
    J = float(c.objective[0])
    print(f"{name} {tuple(batch.shape)}: solve {solve_s:.1f} s, J {J:.6g}; certify {cert_s:.1f} s (compile "
          f"{c.bound.compile_seconds:.1f} s), gap {100 * float(c.gap[0]):.4f} %, {c.status_names[0]}, "
          f"{int(c.bound.iterations[0])} PDHG iterations", flush=True)
    if milp_limit:
        th = lower_bound(batch, ThresholdHighs(time_limit=milp_limit))
        print(f"  threshold LP on HiGHS ({milp_limit:.0f} s): bound {float(th.value[0]):.6g} ({th.status_names[0]}), "
              f"gap {100 * (J / float(th.value[0]) - 1):.4f} %", flush=True)
        m = slimjax.solve_batch(batch, slimjax.solvers.MILP(time_limit=milp_limit), throw=False)
        inc, bnd = float(m.objective[0]), float(m.info["bound"][0])
        print(f"  MILP on HiGHS ({milp_limit:.0f} s): {m.status_names[0]}, incumbent J {inc:.6g} "
              f"(successive-best {100 * (J / inc - 1):+.2f} %), dual bound {bnd:.6g} (gap {100 * (J / bnd - 1):.3f} %)",
              flush=True)


ap = argparse.ArgumentParser()
ap.add_argument("--kinds", nargs="*", default=[])
ap.add_argument("--presets", action="store_true")
ap.add_argument("--milp-limit", type=float, default=0.0)
args = ap.parse_args()
if args.kinds:
    from tests.realistic import instance

    for kind in args.kinds:
        certify_one(kind, slimjax.stack([instance(kind)]), args.milp_limit)
if args.presets:
    from slimjax.generate import MODELS

    for preset in MODELS:
        certify_one(preset, slimjax.generate.instances(jax.random.key(0), 1, model=preset), args.milp_limit)
