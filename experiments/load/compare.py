#!/usr/bin/env python
"""Load-blind vs load-aware placement: J_load of successive-best (load-blind and ``load=True``),
eplb and popularity on users sharing edge servers, the load level swept, and the simulated p95.

One command (from the repository root)::

    .venv/bin/python experiments/load/compare.py            # the grid below (minutes on 2 cores)
    .venv/bin/python experiments/load/compare.py --quick    # two small shapes, two levels

Writes compare.csv (one row per shape x level x instance x method) and compare.md next to this file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, ROOT)

import pandas as pd

import slimjax
import slimjax.queueing as ld

# (users, servers): users 1..64 sharing 2..8 servers; devices cache nothing, so the servers hold
# every copy and carry all the queueing; a server holds 11-28 of the 48 experts.
SHAPES = ((1, 2), (4, 2), (16, 4), (64, 8))
QUICK_SHAPES = ((1, 2), (4, 2))
LEVELS = (0.1, 0.3, 0.5, 0.7)
QUICK_LEVELS = (0.1, 0.5)
NET = dict(multi_user=True, traffic_alpha=2.0, device_storage_gb=0.01, server_storage_gb=(16.0, 40.0),
           area_m=300.0, range_m=300.0)
MODEL = dict(name="mixtral_8x7b", layers=6, top_k=2)
METHODS = {
    "blind": ("successive-best", {}),
    "aware": ("successive-best", dict(load=True, load_iterations=3, load_polish=8)),
    "eplb": ("eplb", {}),
    "popularity": ("popularity", {}),
}
SIM_SHAPES = ((4, 2), (16, 4))  # simulated p95 where it is cheap
SIM_TOKENS = 1500


def run(shapes, levels, instances, seed):
    rows = []
    for users, servers in shapes:
        parts = [slimjax.generate.instances(seed, instances, model=MODEL, network=dict(NET, users=users, servers=servers,
                                                                                       load=level), routing=dict(tokens=32))
                 for level in levels]
        batch = slimjax.stack([p[i] for p in parts for i in range(instances)])
        tags = [(level, i) for level in levels for i in range(instances)]
        for name, (method, kw) in METHODS.items():
            t0 = time.perf_counter()
            sol = slimjax.solve_batch(batch, method, **kw)
            secs = time.perf_counter() - t0
            rep = ld.load_report(batch, sol.placement)
            for b, (level, i) in enumerate(tags):
                row = dict(users=users, servers=servers, level=level, instance=i, method=name,
                           J=float(rep.unloaded[b]), J_load=float(rep.objective[b]),
                           rho_max=float(rep.utilization[b].max()), feasible=bool(rep.feasible[b]),
                           seconds=secs / len(tags), p95=np.nan, sim_mean=np.nan,
                           # load-aware only: J_load of the load-blind placement after the repair
                           blind_repaired=float(sol.info["blind"][b]) if "blind" in sol.info else np.nan)
                if (users, servers) in SIM_SHAPES and row["feasible"] and i == 0:
                    sim = ld.simulate(batch[b], np.asarray(sol.placement[b]), tokens=SIM_TOKENS, seed=7)
                    row.update(p95=sim.p95, sim_mean=sim.mean)
                rows.append(row)
            print(f"U={users:2d} S={servers} {name:10s} J_load={np.asarray(rep.objective)} "
                  f"rho_max={np.asarray(rep.utilization).max(-1).round(2)} ({secs:.1f}s)", flush=True)
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> str:
    piv = df.pivot_table(index=["users", "servers", "level", "instance"], columns="method", values="J_load")
    for m in ("blind", "eplb", "popularity"):
        piv[f"{m}/aware"] = piv[m] / piv["aware"]
    rep = df[df.method == "aware"].set_index(["users", "servers", "level", "instance"])["blind_repaired"]
    piv["repaired/aware"] = rep / piv["aware"]
    g = piv.groupby(level=["users", "servers", "level"])
    sim = df[df.method.isin(["blind", "aware"])].pivot_table(index=["users", "servers", "level"], columns="method",
                                                                values="p95", aggfunc="first")
    head = ("| users | servers | load | n | aware J_load (ms) | blind: infeasible | blind/aware | eplb: infeasible | "
            "eplb/aware | popularity: infeasible | popularity/aware | repaired blind/aware | p95 blind (ms) | p95 aware (ms) |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for key, d in g:
        def ratio(m):
            r = d[f"{m}/aware"]
            fin = r[np.isfinite(r)]
            return ("–" if fin.empty else f"{fin.mean():.3f}"), f"{(~np.isfinite(d[m])).sum()}/{len(d)}"

        cells = []
        for m in ("blind", "eplb", "popularity"):
            mean, inf = ratio(m)
            cells += [inf, mean]
        cells.append(f"{d['repaired/aware'].mean():.3f}")
        p = sim.loc[key] if key in sim.index else None
        pb = "" if p is None or not np.isfinite(p.get("blind", np.nan)) else f"{1e3 * p['blind']:.1f}"
        pa = "" if p is None or not np.isfinite(p.get("aware", np.nan)) else f"{1e3 * p['aware']:.1f}"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]:.1f} | {len(d)} | {1e3 * d['aware'].mean():.2f} | "
                     + " | ".join(cells) + f" | {pb} | {pa} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replot", action="store_true", help="only redo compare.md from compare.csv")
    args = ap.parse_args(argv)
    path = os.path.join(HERE, "compare.csv")
    if args.replot:
        df = pd.read_csv(path)
    else:
        df = run(QUICK_SHAPES if args.quick else SHAPES, QUICK_LEVELS if args.quick else LEVELS, args.instances,
                 args.seed)
        df.to_csv(path, index=False)
    md = summarise(df)
    with open(os.path.join(HERE, "compare.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
