"""Throughput of solve_batch against the number of devices and of processes (docs/scaling.md).

Each point runs in its own process: ``--devices N`` simulates N CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``, so solve_batch shards every chunk over
them); ``--processes P`` starts P processes joined by ``slimjax.distributed`` (one device each),
each solving its own rows. Throughput = instances / the solve's ``seconds`` (compilation excluded,
measured on a second, warm call; for processes, the slowest process's seconds).

    python scripts/scaling.py --devices 1,2,4,8 --processes 1,2 --batch 2048 --solver successive
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
import socket
import subprocess
import sys
import time


def worker(args) -> None:
    import jax
    import numpy as np

    if args.process_count > 1:
        from slimjax import distributed

        distributed.initialize(f"127.0.0.1:{args.port}", args.process_count, args.process_id)
    import slimjax
    from slimjax import distributed

    batch = slimjax.generate.instances(jax.random.key(0), args.batch, model=args.model)
    lo, hi = distributed.rows(args.batch, args.process_id, args.process_count)
    mine = batch[lo:hi]
    t0 = time.perf_counter()
    first = slimjax.solve_batch(mine, args.solver, key=0)
    cold = time.perf_counter() - t0
    warm = slimjax.solve_batch(mine, args.solver, key=0)
    secs = distributed.gather(np.array([warm.seconds]))
    out = {"devices": jax.local_device_count(), "processes": jax.process_count(), "batch": args.batch,
           "solver": args.solver, "model": args.model, "rows": hi - lo, "seconds": float(secs.max()),
           "first_call_seconds": cold, "compile_seconds": first.compile_seconds,
           "instances_per_s": args.batch / float(secs.max()), "platform": jax.devices()[0].platform}
    if jax.process_index() == 0:
        print("RESULT " + json.dumps(out), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args, devices: int, processes: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               XLA_PYTHON_CLIENT_PREALLOCATE="false")
    port = _free_port()
    cmd = [sys.executable, __file__, "--worker", "--batch", str(args.batch), "--solver", args.solver, "--model",
           args.model, "--port", str(port), "--process-count", str(processes)]
    procs = [subprocess.Popen([*cmd, "--process-id", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(processes)]
    outs = [p.communicate(timeout=args.timeout)[0] for p in procs]
    for p, o in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(o[-3000:])
    line = next(ln for ln in outs[0].splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="1,2,4", help="simulated CPU device counts (one process)")
    p.add_argument("--processes", default="1,2", help="process counts (one device each)")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--solver", default="successive")
    p.add_argument("--model", default="mixtral_8x7b")
    p.add_argument("--json", default=None, help="write the points here")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--process-count", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    points = [_launch(args, int(d), 1) for d in args.devices.split(",") if d]
    points += [_launch(args, 1, int(k)) for k in args.processes.split(",") if k and int(k) > 1]
    print(f"| devices | processes | {args.solver} on {args.batch} x {args.model}: instances/s | seconds | first call s |")
    print("|---:|---:|---:|---:|---:|")
    for r in points:
        print(f"| {r['devices']} | {r['processes']} | {r['instances_per_s']:,.0f} | {r['seconds']:.2f} | "
              f"{r['first_call_seconds']:.1f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(points, fh, indent=1)


if __name__ == "__main__":
    main()
