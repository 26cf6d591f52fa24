#!/usr/bin/env python
"""Speed of load-aware solving (issue 29): the three cases of the issue, timed warm, with J_load.

Runs whichever slimjax is first on ``sys.path``, so that today's code and an older commit can be
timed side by side in the same window (``PYTHONPATH=<checkout of the old commit>``)::

    .venv/bin/python experiments/load/speed.py mixtral64 --json out.json
    PYTHONPATH=/tmp/base .venv/bin/python experiments/load/speed.py mixtral64 --json base.json

Cases: ``mixtral64`` = a batch of 16 instances of experiments/load's (64 users, 8 servers) cell
at load 0.5 (successive-best, load_iterations=3, load_polish=8 as compare.py); ``olmoe4`` =
greedy with load=True on olmoe_1b_7b with 4 users at load 0.5; ``qwen4`` = successive-best with
load=True on the 4-user Qwen1.5-MoE real-trace instance at load 0.5 (tests/realistic.py; needs
../shared/traces). Each case is solved twice: ``compile_call_s`` is the first call,
``seconds`` the second (warm) one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
if ROOT not in sys.path:
    sys.path.append(ROOT)  # after PYTHONPATH: an old checkout named there wins

import slimjax  # noqa: E402
import slimjax.queueing as ld  # noqa: E402

NET = dict(multi_user=True, traffic_alpha=2.0, device_storage_gb=0.01, server_storage_gb=(16.0, 40.0),
           area_m=300.0, range_m=300.0)
MODEL = dict(name="mixtral_8x7b", layers=6, top_k=2)


def case(name: str, batch: int = 16):
    """(instances as a batch, method, options) of a named case."""
    if name == "mixtral64":
        b = slimjax.generate.instances(0, batch, model=MODEL, network=dict(NET, users=64, servers=8, load=0.5),
                                       routing=dict(tokens=32))
        return b, "successive-best", dict(load=True, load_iterations=3, load_polish=8)
    if name == "olmoe4":
        b = slimjax.generate.instances(0, 1, model="olmoe_1b_7b", network=dict(users=4, load=0.5))
        return b, "greedy", dict(load=True)
    if name == "qwen4":
        sys.path.insert(0, ROOT) if ROOT not in sys.path else None
        from tests.realistic import instance

        return slimjax.stack([instance("qwen", users=4, servers=2, load=0.5)]), "successive-best", dict(load=True)
    raise ValueError(f"case: unknown {name!r}")


def measure(name: str, batch: int = 16, reps: int = 2) -> dict:
    b, method, kw = case(name, batch)
    out = dict(case=name, method=method, options={k: v for k, v in kw.items()}, shape=list(b.shape),
               instances=int(b.batch_shape[0]), slimjax=os.path.dirname(slimjax.__file__))
    times = []
    for r in range(reps):
        t0 = time.perf_counter()
        sol = slimjax.solve_batch(b, method, **kw)
        times.append(time.perf_counter() - t0)
        if r == 0:
            out["compile_call_s"] = times[0]
            out["compile_seconds"] = float(sol.compile_seconds)
    rep = ld.load_report(b, sol.placement)
    out.update(seconds=min(times[1:]) if reps > 1 else times[0], per_instance_s=(min(times[1:]) if reps > 1 else times[0])
               / b.batch_shape[0], J_load=[float(v) for v in np.asarray(rep.objective)],
               rho_max=[float(v) for v in np.asarray(rep.utilization).max(-1)],
               feasible=[bool(v) for v in np.asarray(rep.feasible)],
               storage_ok=bool(np.all(np.asarray(slimjax.feasible(b, sol.placement).ok))))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=("mixtral64", "olmoe4", "qwen4"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    out = measure(a.case, a.batch, a.reps)
    print(json.dumps(out))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
