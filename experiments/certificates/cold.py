#!/usr/bin/env python
"""Cold-start time of one certificate for a batch: a fresh process, compilation included.

    .venv/bin/python experiments/certificates/cold.py --model mixtral_8x7b --instances 64

Solves the batch with successive-best, then times slimjax.certify (the default bound, ``auto``)
from the first call, so the number includes tracing and compiling the bound.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import slimjax  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="mixtral_8x7b")
ap.add_argument("--instances", type=int, default=64)
ap.add_argument("--method", default="successive-best")
args = ap.parse_args()
batch = slimjax.generate.instances(jax.random.key(2024), args.instances, model=args.model)
t = time.perf_counter()
sol = slimjax.solve_batch(batch, args.method)
solve_s = time.perf_counter() - t
t = time.perf_counter()
cert = slimjax.certify(batch, sol)
wall = time.perf_counter() - t
print(f"{args.model}, {args.instances} instances, {args.method}: solve {solve_s:.1f} s; certify {wall:.1f} s cold "
      f"(bound {cert.seconds:.2f} s + compile {cert.bound.compile_seconds:.1f} s); median certified gap "
      f"{np.median(cert.gap):.4%}, max {np.max(cert.gap):.4%}; statuses {dict(zip(*np.unique(cert.status_names, return_counts=True)))}")
