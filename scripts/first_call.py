#!/usr/bin/env python
"""What a user waits for in a fresh process: import, generate, first solve, the same call again.

Run it in a new process (bench part f does, with an empty and with a warm cache)::

    python scripts/first_call.py --method successive-best --json OUT.json

Prints one JSON object: ``import_s``, ``generate_s``, ``first_solve_s`` (wall time of the first
``slimjax.solve`` call, compilation included), ``first_compile_s`` (its ``compile_seconds``),
``second_solve_ms`` (the same call again), ``J`` and the persistent-cache state
(``cache_dir``, the number of files in it before and after).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
import _bootstrap  # noqa: E402  (a fresh clone: set up .venv and re-run there)

_bootstrap.ensure('')

import argparse
import json
import os
import sys
import time

T0 = time.perf_counter()
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)


def _files(path):
    if not path or not os.path.isdir(path):
        return 0
    return sum(len(f) for _, _, f in os.walk(path))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="successive-best")
    ap.add_argument("--model", default="mixtral_8x7b")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)

    t = time.perf_counter()
    import jax

    import slimjax

    out = {"import_s": time.perf_counter() - t, "method": args.method, "model": args.model}
    from slimjax._cache import cache_dir, default_cache_dir

    before = _files(cache_dir() or default_cache_dir())
    t = time.perf_counter()
    batch = slimjax.generate.instances(jax.random.key(0), 1, model=args.model)
    jax.block_until_ready(batch)
    out["generate_s"] = time.perf_counter() - t
    inst = batch[0]
    t = time.perf_counter()
    sol = slimjax.solve(inst, args.method)
    out["first_solve_s"] = time.perf_counter() - t
    out["first_compile_s"] = sol.compile_seconds
    t = time.perf_counter()
    sol2 = slimjax.solve(inst, args.method)
    out["second_solve_ms"] = (time.perf_counter() - t) * 1e3
    out["J"] = float(sol.objective)
    out["J_again"] = float(sol2.objective)
    out["cache_dir"] = cache_dir()
    out["cache_files_before"] = before
    out["cache_files_after"] = _files(cache_dir())
    out["process_s"] = time.perf_counter() - T0
    text = json.dumps(out)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
