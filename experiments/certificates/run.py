#!/usr/bin/env python
"""Certified optimality gaps at scale: how far from optimal is every method, provably?

Part A (bound options, default network): on the same instances of every model, the lower bounds
of ``slimjax.bounds.lower_bound`` — ``lp`` (the MILP's LP relaxation, PDHG), ``threshold``
(threshold LP + whole-expert storage rows, PDHG), ``levels`` (level decomposition, E ≤ 16) and
``auto`` (the best of the last two) — against the best J found, with their time; and HiGHS on the
first instances given the same time per instance: its LP relaxation (``highs``) and its MILP
dual bound after branch-and-bound.

Part B (certified gaps): for every model and storage level, every method's J divided by the
``auto`` bound of its instance, minus 1.

One command (from the repository root)::

    .venv/bin/python experiments/certificates/run.py           # full (about an hour on 2 cores)
    .venv/bin/python experiments/certificates/run.py --quick   # smoke run (a few minutes)

Writes bounds.csv (part A), results.csv (part B), table.md and the figures next to this file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import slimjax  # noqa: E402
from slimjax.bounds import certify, lower_bound, objective64  # noqa: E402
from slimjax.solvers._exact import milp_instance  # noqa: E402

# model, instances per batch (every storage level), PDHG time limit for the batch (s)
MODELS = [
    ("mixtral_8x7b", 64, None),
    ("phi3_5_moe", 16, None),
    ("olmoe_1b_7b", 8, 120.0),
    ("qwen3_30b_a3b", 4, 120.0),
    ("deepseek_v3", 1, 100.0),
]
STORAGE = [0.1, 0.25, 0.5]  # share of all expert bytes the edge holds (None = the default network)
PART_A_MAX = 8  # part A (every bound option, HiGHS) on the first instances only: the MILP's LP is slow
# name -> (registry method, options); "successive-best" is the strongest configuration (best-of
# orders, union-first, revisits, restarts, polish), "successive" the paper's plain pass.
METHODS = {
    "successive-best": ("successive-best", {}),
    "successive": ("successive", {}),
    "greedy": ("greedy", {}),
    "coactivation-blind": ("coactivation-blind", {}),
    "popularity": ("popularity", {}),
    "layer-uniform": ("layer-uniform", {}),
    "random": ("random", {}),
}
LARGE_SKIP = {"greedy"}  # too slow on the largest models on 2 cores (pairs x steps)
HIGHS_INSTANCES = 2
HIGHS_LP_LIMIT = 120.0  # HiGHS's LP relaxation gets at least this long (to see its value where it finishes)


def network(storage):
    return {} if storage is None else {"storage_fraction": storage}


def timed(fn, *a, **k):
    t, c = time.perf_counter(), time.process_time()
    out = fn(*a, **k)
    return out, time.perf_counter() - t, time.process_time() - c


def solve_all(batch, model):
    out = {}
    for name, (method, opts) in METHODS.items():
        if name in LARGE_SKIP and model in ("qwen3_30b_a3b", "deepseek_v3"):
            continue
        sol, secs, _ = timed(slimjax.solve_batch, batch, method, **opts)
        out[name] = (np.asarray(sol.placement), secs)
        print(f"    {name:20s} {secs:7.1f} s", flush=True)
    return out


def part_a(model, B, limit, sols, batch, rows):
    """The bound options on the same (first PART_A_MAX) instances, and HiGHS with the same time."""
    B = min(B, PART_A_MAX)
    batch = batch[:B]
    best = np.min([objective64(batch, x[:B]) for x, _ in sols.values()], axis=0)
    E = batch.latency.shape[-1]
    per_inst = {}
    for method in ("lp", "threshold", "levels", "auto"):
        if method == "levels" and E > 16:
            continue
        kw = {} if method == "levels" else dict(time_limit=limit)
        r, wall, cpu = timed(lower_bound, batch, method, **kw)
        per_inst[method] = r.seconds / B
        for i in range(B):
            rows.append(dict(model=model, instance=i, bound_method=method, bound=r.value[i], best_J=best[i],
                             gap=best[i] / r.value[i] - 1, status=r.status_names[i], iterations=int(r.iterations[i]),
                             batch_seconds=r.seconds, compile_seconds=r.compile_seconds, batch_wall=wall,
                             batch_cpu=cpu, instances=B))
        print(f"  bound {method:10s} median gap {np.median(best / r.value - 1):.3%}  {r.seconds:6.1f} s"
              f" (+{r.compile_seconds:.1f} s compile) cpu {cpu:.1f} s", flush=True)
    T = max(per_inst["auto"], 1.0)  # HiGHS gets our per-instance time (at least 1 s)
    for i in range(min(HIGHS_INSTANCES, B)):
        inst = batch[i]
        r, wall, _ = timed(lower_bound, inst, "highs", time_limit=max(T, HIGHS_LP_LIMIT))
        rows.append(dict(model=model, instance=i, bound_method="highs-lp", bound=float(r.value), best_J=best[i],
                         gap=best[i] / r.value - 1, status=r.status_names, iterations=0, batch_seconds=wall,
                         compile_seconds=0.0, batch_wall=wall, batch_cpu=np.nan, instances=1,
                         time_limit=max(T, HIGHS_LP_LIMIT)))
        (_, info), wall, _ = timed(milp_instance, inst, time_limit=T)
        bnd = max(float(info["bound"]), float(lower_bound(inst, "trivial").value))
        rows.append(dict(model=model, instance=i, bound_method="highs-milp", bound=bnd, best_J=best[i],
                         gap=best[i] / bnd - 1, status=info["status"], iterations=int(info["nodes"]),
                         batch_seconds=wall, compile_seconds=0.0, batch_wall=wall, batch_cpu=np.nan, instances=1,
                         time_limit=T))
        print(f"  highs (T={T:.1f} s) instance {i}: LP gap {best[i] / float(r.value) - 1:.3%}, MILP bound gap "
              f"{best[i] / bnd - 1:.3%} ({info['status']})", flush=True)


def part_b(model, storage, sols, batch, limit, rows):
    best = np.min([objective64(batch, x) for x, _ in sols.values()], axis=0)
    bound, wall, cpu = timed(lower_bound, batch, "auto", upper=best, target_gap=1e-5, time_limit=limit)
    for name, (x, secs) in sols.items():
        c = certify(batch, x, bound=bound)
        for i in range(len(c.gap)):
            rows.append(dict(model=model, storage=("default" if storage is None else storage), instance=i,
                             method=name, J=c.objective[i], bound=bound.value[i], gap=c.gap[i],
                             bound_status=bound.status_names[i], solve_seconds=secs / len(c.gap),
                             bound_seconds=bound.seconds / len(c.gap)))
    g = {n: np.median(objective64(batch, x) / bound.value - 1) for n, (x, _) in sols.items()}
    print(f"  certified median gaps: " + ", ".join(f"{n} {v:.3%}" for n, v in g.items()) +
          f"  (bound {bound.seconds:.1f} s)", flush=True)


def figures(bounds: pd.DataFrame, results: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m, *_ in MODELS if m in set(results.model)]
    d = results[results.storage == "default"]
    meths = [m for m in METHODS if m in set(d.method)]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    w = 0.8 / len(meths)
    for j, meth in enumerate(meths):
        med = [d[(d.model == m) & (d.method == meth)].gap.median() for m in models]
        ax.bar(np.arange(len(models)) + (j - len(meths) / 2 + 0.5) * w, np.maximum(med, 1e-6), w, label=meth)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(models)), models)
    ax.set_ylabel("certified gap J / bound − 1 (median)")
    ax.axhline(0.005, color="k", lw=0.8, ls="--")
    ax.text(len(models) - 0.5, 0.0055, "0.5 %", ha="right", va="bottom", fontsize=8)
    ax.legend(fontsize=7, ncol=4)
    ax.set_title("Certified optimality gap per method (default network)")
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "certified_gap.png"), dpi=130)
    plt.close(fig)

    opts = ["highs-lp", "highs-milp", "lp", "threshold", "levels", "auto"]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    w = 0.8 / len(opts)
    for j, o in enumerate(opts):
        med = [bounds[(bounds.model == m) & (bounds.bound_method == o)].gap.median() for m in models]
        ax.bar(np.arange(len(models)) + (j - len(opts) / 2 + 0.5) * w, np.nan_to_num(np.maximum(med, 1e-6), nan=0),
               w, label=o)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(models)), models)
    ax.set_ylabel("best J / bound − 1 (median)")
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("Bound options on the same instances (HiGHS: first instances, same time per instance)")
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "bound_options.png"), dpi=130)
    plt.close(fig)


def tables(bounds: pd.DataFrame, results: pd.DataFrame) -> str:
    out = ["## Bound options (default network; gap = best J / bound − 1)", "",
           "| model | bound | n | median gap | max gap | seconds / instance | status |", "|---|---|---:|---:|---:|---:|---|"]
    for (m, o), g in bounds.groupby(["model", "bound_method"], sort=False):
        secs = (g.batch_seconds / g.instances).median()
        st = ", ".join(f"{k} {v}" for k, v in g.status.value_counts().items())
        out.append(f"| {m} | {o} | {len(g)} | {g.gap.median():.4%} | {g.gap.max():.4%} | {secs:.2f} | {st} |")
    out += ["", "## Certified gap of every method (J / auto bound − 1)", "",
            "| model | storage | method | n | median | p90 | max |", "|---|---|---|---:|---:|---:|---:|"]
    for (m, s, meth), g in results.groupby(["model", "storage", "method"], sort=False):
        out.append(f"| {m} | {s} | {meth} | {len(g)} | {g.gap.median():.4%} | {g.gap.quantile(0.9):.4%} | "
                   f"{g.gap.max():.4%} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few instances, two models, one storage level")
    ap.add_argument("--models", nargs="*", default=None, help="subset of models")
    ap.add_argument("--storage", nargs="*", type=float, default=None,
                    help="storage levels besides the default network (default: %(default)s -> all)")
    ap.add_argument("--instances", type=int, nargs="*", default=None, help="instances per model (same order)")
    ap.add_argument("--skip", nargs="*", default=[], help="methods to leave out")
    ap.add_argument("--tag", default="", help="suffix of the output files (results{tag}.csv, ...)")
    args = ap.parse_args()
    models = [m for m in MODELS if args.models is None or m[0] in args.models]
    if args.instances:
        models = [(m, n, lim) for (m, _, lim), n in zip(models, args.instances)]
    for name in args.skip:
        METHODS.pop(name, None)
    storages = [None] + (STORAGE if args.storage is None else args.storage)
    if args.quick:
        models = [(m, 4, lim) for m, _, lim in models[:2]]
        storages = [None, 0.25]
    key = jax.random.key(2024)
    brow, rrow = [], []
    for model, B, limit in models:
        for storage in storages:
            print(f"{model}, storage {storage or 'default'}: {B} instances", flush=True)
            batch = slimjax.generate.instances(key, B, model=model, network=network(storage))
            sols = solve_all(batch, model)
            if storage is None:
                part_a(model, B, limit, sols, batch, brow)
            part_b(model, storage, sols, batch, limit, rrow)
            pd.DataFrame(brow).to_csv(os.path.join(HERE, f"bounds{args.tag}.csv"), index=False)
            pd.DataFrame(rrow).to_csv(os.path.join(HERE, f"results{args.tag}.csv"), index=False)
    bounds, results = pd.DataFrame(brow), pd.DataFrame(rrow)
    with open(os.path.join(HERE, f"table{args.tag}.md"), "w") as f:
        f.write(tables(bounds, results))
    if not args.tag:
        figures(bounds, results)
    print(tables(bounds, results))


if __name__ == "__main__":
    main()
