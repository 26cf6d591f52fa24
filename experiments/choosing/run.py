#!/usr/bin/env python
"""The figures of the handbook page *Choosing a method* (docs/choosing.md), measured in one run.

    .venv/bin/python experiments/choosing/run.py            # the page's numbers (~10-15 min on 2 busy cores)
    .venv/bin/python experiments/choosing/run.py --quick    # a smoke run (~9 min on 2 busy cores, mostly compilation): fewer instances, short limits

Four parts, each with slimjax's public API only:

gap
    Per method, the gap to the optimum on small instances: the ``optimality_gap`` study's setup
    (mixtral_8x7b expert sizes, L = 4 layers, E = 8 experts, one device + two servers with the
    ``edge_small`` ranges, the edge holding 30 % of all expert bytes, ``latent`` routing with 64
    tokens, K = 1, 2, 3, 12 instances per K, the same seed and so the same instances as
    ``slimjax experiment=optimality_gap``). The reference is ``milp`` (HiGHS) with a time limit
    (``--milp-time-limit``): where it proves optimality J_opt is exact, elsewhere it is HiGHS's
    incumbent. ``vs milp`` is the mean of J / J_milp - 1 over all instances; ``vs opt`` the same
    over the proven optima only; ``share`` the median and 5th percentile of the optimal gain
    (J(empty) - J) / (J(empty) - J_opt) over the proven optima; ``ms`` the solve time per instance
    without compilation (``Solution.seconds`` / batch).
speed
    Per method, ms per instance after compilation on a batch of default mixtral_8x7b instances
    (``generate.instances(key, B, model="mixtral_8x7b")``: one device + four servers, 256 tokens,
    K = 2): the faster of ``--repeats`` calls after the first, which compiles (its
    ``compile_seconds`` is reported apart). ``milp`` is timed on one of these instances with the
    time limit (its status says whether it proved optimality).
first
    What a user waits for in fresh processes (``scripts/first_call.py``, one mixtral_8x7b
    instance): the first ``solve`` of the default method with the persistent compilation cache
    off, empty and filled, of ``successive`` with it off, and the same call again.
deepseek
    One deepseek_v3-scale instance (L = 58, E = 256, K = 8, one device + eight servers, 1024
    tokens; the instance of ``scripts/bench.py`` part d), ``successive-fast`` end to end
    (generation, compilation and solve, in this process) and, with ``--deepseek-best``,
    ``successive-best`` too.

Writes ``results.csv`` (one row per part x K x method), ``tables.md`` (the tables of the README)
and ``meta.json`` (date, machine load, versions, options) to ``--out`` (default: this folder).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import slimjax
from slimjax import generate
from slimjax.solvers import Status

HERE = os.path.dirname(os.path.abspath(__file__))

#: the methods of the gap part, in the page's order (``brute-force`` needs N*L*E <= 20: not here)
GAP_METHODS = ("successive-best", "successive", "successive-fast", "greedy", "relaxed", "polish",
               "popularity", "coactivation-blind", "layer-uniform", "random", "eplb")
#: ``edge_small`` (slimjax/conf/network/edge_small.yaml) with the study's storage share
EDGE_SMALL = {"servers": 2, "device_storage_gb": (1.0, 4.0), "server_storage_gb": (8.0, 24.0),
              "server_bandwidth_gbs": (200.0, 800.0), "link_rate_mbps": (50.0, 300.0), "storage_fraction": 0.3}
#: instances of the speed part's ``relaxed`` timing (it is ~200x slower than the others)
RELAXED_BATCH = 8
FIELDS = ("part", "K", "method", "n", "n_proven", "J_mean", "gap_milp", "gap_opt", "share_median", "share_p5",
          "vs_best", "ms_per_instance", "compile_s", "statuses", "note")


def _row(**fields) -> dict:
    """One row of results.csv (fields a part does not measure are empty)."""
    return {k: fields.get(k, "") for k in FIELDS}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def statuses(sol) -> str:
    s = np.asarray(sol.status).reshape(-1)
    return " ".join(f"{Status(int(v)).name.lower()}:{int((s == v).sum())}" for v in np.unique(s))


def small_batch(K: int, n: int):
    """The ``optimality_gap`` instances of one K (the app's seed 0: generation key, solve key)."""
    k_gen, k_solve = jax.random.split(jax.random.key(0))
    model = dataclasses.replace(generate.MODELS["mixtral_8x7b"], layers=4, top_k=K)
    batch = generate.instances(k_gen, n, model=model, network=EDGE_SMALL, routing={"kind": "latent", "tokens": 64})
    return batch, k_solve


def part_gap(Ks, n: int, milp_limit: float, rows: list) -> None:
    for K in Ks:
        batch, key = small_batch(K, n)
        B, (N, L, E) = batch.batch_shape[0], batch.latency.shape[-3:]
        empty = np.asarray(slimjax.objective(batch, jnp.zeros((B, N, L, E), bool)), np.float64)
        log(f"gap K={K}: {B} instances, shape {batch.shape}; milp (time limit {milp_limit:g} s)")
        ref = slimjax.solve_batch(batch, "milp", time_limit=milp_limit, key=key)
        J_ref = np.asarray(ref.objective, np.float64)
        proven = np.asarray(ref.status).reshape(-1) == int(Status.OPTIMAL)
        log(f"  milp: {statuses(ref)}, {1e3 * ref.seconds / B:.0f} ms per instance")
        rows.append(_row(part="gap", K=K, method="milp", n=B, n_proven=int(proven.sum()), J_mean=J_ref.mean(),
                         gap_milp=0.0, gap_opt=0.0, share_median=1.0, share_p5=1.0,
                         ms_per_instance=1e3 * ref.seconds / B, compile_s=ref.compile_seconds, statuses=statuses(ref),
                         note=f"time_limit={milp_limit:g}"))
        for name in GAP_METHODS:
            sol = slimjax.solve_batch(batch, name, key=key)
            J = np.asarray(sol.objective, np.float64)
            gap = J / J_ref - 1
            gain = empty - J_ref
            share = np.where(gain > 0, (empty - J) / np.where(gain > 0, gain, 1.0), 1.0)[proven]
            row = _row(part="gap", K=K, method=name, n=B, n_proven=int(proven.sum()), J_mean=J.mean(),
                       gap_milp=gap.mean(), gap_opt=gap[proven].mean() if proven.any() else float("nan"),
                       share_median=float(np.median(share)) if proven.any() else float("nan"),
                       share_p5=float(np.percentile(share, 5)) if proven.any() else float("nan"),
                       ms_per_instance=1e3 * sol.seconds / B, compile_s=sol.compile_seconds, statuses=statuses(sol),
                       note="")
            rows.append(row)
            log(f"  {name}: vs milp {row['gap_milp']:+.2%}, vs opt {row['gap_opt']:+.2%} "
                f"({row['n_proven']}), {row['ms_per_instance']:.1f} ms/inst, compile {sol.compile_seconds:.1f} s")


def part_speed(B: int, repeats: int, milp_limit: float, rows: list) -> None:
    full = generate.instances(jax.random.key(1), B, model="mixtral_8x7b")
    log(f"speed: {B} mixtral_8x7b instances, shape {full.shape}")
    best = None
    for name in GAP_METHODS:
        # relaxed takes ~1-2 s per instance here: timed on the first RELAXED_BATCH instances only
        batch = full[:RELAXED_BATCH] if name == "relaxed" and B > RELAXED_BATCH else full
        n = batch.batch_shape[0]
        first = slimjax.solve_batch(batch, name, key=jax.random.key(2))
        warm = [slimjax.solve_batch(batch, name, key=jax.random.key(2)).seconds for _ in range(repeats)]
        ms = 1e3 * min(warm) / n
        J = np.asarray(first.objective, np.float64)
        if best is None:  # GAP_METHODS starts with the default: the reference of vs_best
            best = J
        rows.append(_row(part="speed", K=int(batch.shape[-1]), method=name, n=n,
                         J_mean=float(J.mean()), vs_best=float(np.mean(J / best[:n] - 1)), ms_per_instance=ms, compile_s=first.compile_seconds, statuses=statuses(first),
                         note=f"B = {n}, min of {repeats} warm calls: " + " ".join(f"{1e3 * w / n:.2f}" for w in warm)))
        log(f"  {name}: {ms:.2f} ms per instance, B = {n} (warm: {', '.join(f'{1e3 * w / n:.2f}' for w in warm)}), "
            f"compile {first.compile_seconds:.1f} s, J {J.mean():.6f} ({rows[-1]['vs_best']:+.2%} vs successive-best)")
    sol = slimjax.solve(full[0], "milp", time_limit=milp_limit)
    rows.append(_row(part="speed", K=int(full.shape[-1]), method="milp", n=1, n_proven=int(sol.status == 0),
                     J_mean=float(sol.objective), vs_best=float(sol.objective) / best[0] - 1,
                     ms_per_instance=1e3 * sol.seconds, compile_s=sol.compile_seconds, statuses=statuses(sol),
                     note=f"one instance, time_limit={milp_limit:g}"))
    log(f"  milp on instance 0: {statuses(sol)} after {sol.seconds:.1f} s, J {rows[-1]['vs_best']:+.2%} vs successive-best")


def part_deepseek(best: bool, rows: list) -> None:
    names = ("successive-fast", "successive-best") if best else ("successive-fast",)
    for name in names:
        t0 = time.perf_counter()
        inst = generate.instance(jax.random.key(5), model="deepseek_v3", network={"servers": 8},
                                 routing={"tokens": 1024})
        jax.block_until_ready(inst.latency)
        t_gen = time.perf_counter() - t0
        sol = slimjax.solve(inst, name)
        total = time.perf_counter() - t0
        rows.append(_row(part="deepseek", K=int(inst.shape[-1]), method=name, n=1, n_proven="",
                         J_mean=float(sol.objective), gap_milp="", gap_opt="", share_median="", share_p5="",
                         ms_per_instance=1e3 * total, compile_s=sol.compile_seconds, statuses=statuses(sol),
                         note=f"end to end; generate {t_gen:.1f} s, solve {sol.seconds:.1f} s"))
        log(f"deepseek_v3 {inst.shape}: {name} end to end {total:.1f} s (generate {t_gen:.1f} s, compile "
            f"{sol.compile_seconds:.1f} s, solve {sol.seconds:.1f} s), J {float(sol.objective):.5g}")


def _first_call(method: str, env: dict) -> dict:
    import subprocess
    import tempfile

    script = os.path.join(HERE, "..", "..", "scripts", "first_call.py")
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        full = {k: v for k, v in os.environ.items() if not k.startswith(("SLIMJAX_CACHE", "JAX_COMPILATION_CACHE"))}
        full.update(env)
        subprocess.run([sys.executable, script, "--method", method, "--json", f.name], env=full, check=True,
                       capture_output=True)
        with open(f.name) as g:
            return json.load(g)


def part_first(rows: list) -> None:
    """What a user waits for in a fresh process (``scripts/first_call.py``, one mixtral_8x7b
    instance): the default method with the persistent compilation cache off, with an empty cache,
    with the cache that process filled, and the plain method with the cache off."""
    import tempfile

    runs = {"successive-best, cache off": _first_call("successive-best", {"SLIMJAX_CACHE": "0"}),
            "successive, cache off": _first_call("successive", {"SLIMJAX_CACHE": "0"})}
    with tempfile.TemporaryDirectory() as d:
        runs["successive-best, empty cache"] = _first_call("successive-best", {"SLIMJAX_CACHE_DIR": d})
        runs["successive-best, cache filled"] = _first_call("successive-best", {"SLIMJAX_CACHE_DIR": d})
    for label, r in runs.items():
        rows.append(_row(part="first", K=2, method=label, n=1, n_proven="", J_mean=r["J"], gap_milp="", gap_opt="",
                         share_median="", share_p5="", ms_per_instance=1e3 * r["first_solve_s"],
                         compile_s=r["first_compile_s"], statuses="",
                         note=f"fresh process: import {r['import_s']:.2f} s, generate one {r['generate_s']:.2f} s, "
                              f"first solve {r['first_solve_s']:.2f} s, the same call again {r['second_solve_ms']:.1f} ms"))
        log(f"first call, {label}: {rows[-1]['note']}")


def _git_head() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def pct(v) -> str:
    """A gap in percent; J within float32 rounding of J_milp (|gap| < 5e-5) shows as 0.00 %."""
    if v == "" or v is None or (isinstance(v, float) and np.isnan(v)):
        return "—"
    return "0.00 %" if abs(v) < 5e-5 else f"{100 * v:.2f} %"


def tables(rows: list) -> str:
    out = ["| K | method | vs milp | vs optimum (n proven) | gain share: median | 5th pct | ms per instance |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in (r for r in rows if r["part"] == "gap"):
        out.append(f"| {r['K']} | `{r['method']}` | {pct(r['gap_milp'])} | {pct(r['gap_opt'])} ({r['n_proven']}) | "
                   f"{r['share_median']:.3f} | {r['share_p5']:.3f} | {r['ms_per_instance']:.1f} |")
    out += ["", "| method | ms per instance (warm) | compile s | mean J (s per token) | J vs `successive-best` | note |",
            "|---|---:|---:|---:|---:|---|"]
    for r in (r for r in rows if r["part"] in ("speed", "deepseek", "first")):
        label = {"speed": r["method"], "deepseek": f"{r['method']} (deepseek_v3, end to end)",
                 "first": f"first solve: {r['method']}"}[r["part"]]
        out.append(f"| `{label}` | {r['ms_per_instance']:.2f} | {r['compile_s']:.1f} | {r['J_mean']:.6f} | "
                   f"{pct(r['vs_best'])} | {r['statuses']}; {r['note']} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 3 instances per K, milp 2 s, speed B = 8")
    p.add_argument("--out", default=HERE, help="folder for results.csv, tables.md, meta.json")
    p.add_argument("--instances", type=int, default=12, help="instances per K in the gap part")
    p.add_argument("--milp-time-limit", type=float, default=20.0, help="seconds per instance for milp")
    p.add_argument("--speed-batch", type=int, default=128, help="mixtral_8x7b instances in the speed part")
    p.add_argument("--repeats", type=int, default=2, help="warm calls per method in the speed part")
    p.add_argument("--parts", default="gap,speed,deepseek,first", help="comma-separated parts to run")
    p.add_argument("--deepseek-best", action="store_true", help="also successive-best at deepseek_v3 scale")
    a = p.parse_args(argv)
    if a.quick:
        a.instances, a.milp_time_limit, a.speed_batch, a.repeats = 3, 2.0, 8, 1
    parts = set(a.parts.split(","))
    started = datetime.datetime.now(datetime.timezone.utc)
    load0 = os.getloadavg()
    rows: list = []
    t0 = time.perf_counter()
    if "gap" in parts:
        part_gap((1, 2, 3), a.instances, a.milp_time_limit, rows)
    if "speed" in parts:
        part_speed(a.speed_batch, a.repeats, a.milp_time_limit, rows)
    if "deepseek" in parts:
        part_deepseek(a.deepseek_best, rows)
    if "first" in parts:
        part_first(rows)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    with open(os.path.join(a.out, "tables.md"), "w") as f:
        f.write(tables(rows))
    meta = {"started": started.isoformat(timespec="seconds"), "seconds": round(time.perf_counter() - t0, 1),
            "loadavg_start": load0, "loadavg_end": os.getloadavg(), "cpus": os.cpu_count(), "args": vars(a),
            "slimjax": getattr(slimjax, "__version__", "?"), "jax": jax.__version__,
            "python": platform.python_version(), "devices": [str(d) for d in jax.devices()],
            "compile_cache": os.environ.get("SLIMJAX_CACHE", "on (default)"), "argv": sys.argv,
            "git_head": _git_head()}
    with open(os.path.join(a.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(tables(rows))
    log(f"done in {meta['seconds']:.0f} s; wrote {a.out}/results.csv, tables.md, meta.json")


if __name__ == "__main__":
    main()
