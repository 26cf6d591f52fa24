"""Compare ``relaxed`` with ``successive`` and ``popularity`` on generated instances.

Usage::

    .venv/bin/python scripts/compare_relaxed.py [--n 256] [--model mixtral_8x7b] [--chunk 32]
        [--methods relaxed,successive,popularity] [--relaxed steps=200,restarts=4]

Every method runs with a fixed ``chunk_size`` so that a warm-up call on one chunk compiles the
shape the timed call uses; "s/inst" is the timed call's wall time over the instances (compile
excluded, reported separately as the warm-up time). Prints a table of mean J, mean gain
(J(empty) − J) relative to the best method per instance, and time.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
import _bootstrap  # noqa: E402  (a fresh clone: set up .venv and re-run there)

_bootstrap.ensure('')

import argparse
import ast
import time

import jax
import numpy as np

import slimjax


def _parse_opts(text: str) -> dict:
    out = {}
    for item in filter(None, (text or "").split(",")):
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            out[k.strip()] = v.strip()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--model", default="mixtral_8x7b")
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--methods", default="relaxed,successive,popularity")
    ap.add_argument("--relaxed", default="", help="relaxed options, e.g. steps=300,restarts=2")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    batch = slimjax.generate.instances(jax.random.key(args.seed), args.n, model=args.model)
    U, N, L, E, M, K = batch.shape
    print(
        f"{args.n} instances, model={args.model}: U={U} N={N} L={L} E={E} M={M} K={K}; backend={jax.default_backend()}"
    )
    empty = np.zeros((args.n, N, L, E), bool)
    J0 = np.asarray(slimjax.objective(batch, empty), np.float64)
    registered = slimjax.methods()
    rows, Js = [], {}
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if name.split("+")[0] not in registered:
            print(f"  {name}: not registered, skipped")
            continue
        opts = {"chunk_size": min(args.chunk, args.n), "progress": False}
        if name.startswith("relaxed"):
            opts.update(_parse_opts(args.relaxed))
        t0 = time.perf_counter()
        slimjax.solve_batch(batch[: opts["chunk_size"]], name, key=0, **opts)  # compile
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        sol = slimjax.solve_batch(batch, name, key=0, **opts)
        sec = time.perf_counter() - t0
        Js[name] = np.asarray(sol.objective, np.float64)
        rows.append((name, warm, sec / args.n))
    if not rows:
        return
    best = np.min(np.stack(list(Js.values())), axis=0)
    print(f"{'method':<22}{'mean J':>10}{'mean J/J(empty)':>17}{'gain/best gain':>16}{'s/inst':>10}{'warm-up s':>11}")
    for name, warm, spi in rows:
        J = Js[name]
        ratio = np.where(J0 - best > 0, (J0 - J) / np.maximum(J0 - best, 1e-30), 1.0)
        print(f"{name:<22}{J.mean():>10.5f}{(J / J0).mean():>17.4f}{ratio.mean():>16.4f}{spi:>10.4f}{warm:>11.1f}")


if __name__ == "__main__":
    main()
