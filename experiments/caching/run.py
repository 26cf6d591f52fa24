#!/usr/bin/env python
"""Placement or caching? Where a per-token device cache beats a planned placement.

Two parts, one command each (from the repository root)::

    .venv/bin/python experiments/caching/run.py --calibrate   # reuse rates of the real traces, the
                                                              # locality generator calibrated on them
    .venv/bin/python experiments/caching/run.py               # the study: `slimjax experiment=caching`
    .venv/bin/python experiments/caching/run.py --quick       # a smoke run of the study (caching.quick=true)
    .venv/bin/python experiments/caching/run.py --replot      # tables and figure from the CSVs

The study runs the app (``slimjax experiment=caching caching.shared=<shared>``) into ``--out``
(default ``$TMPDIR/slimjax-caching``; the same command again is skipped as complete) and copies
``region.csv``, ``summary.csv`` and a per-policy ``policies.csv`` next to this file, with
``tables.md`` and ``caching_region.png``.
The real traces are read from ``$SLIMJAX_SHARED/traces/raw`` (default ``../shared`` beside the
checkout).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, ROOT)

import pandas as pd

# (label, folder under traces/raw, model preset, logged layers)
REAL = [
    ("Qwen1.5-MoE-A2.7B (layers 0, 12, 23)", "weiran0129__vLLM-MoE-Logger", "qwen1_5_moe_a2_7b", 3),
    ("OLMoE-1B-7B (layer 0)", "KaxitPandya__cerebras-assesment2", "olmoe_1b_7b", 1),
]
WINDOWS = (1, 4, 16, 64)
QWEN = "real:weiran0129__vLLM-MoE-Logger"
OLMOE = "real:KaxitPandya__cerebras-assesment2"


def shared_dir() -> str | None:
    path = os.path.abspath(os.environ.get("SLIMJAX_SHARED", os.path.join(ROOT, "..", "shared")))
    return path if os.path.isdir(os.path.join(path, "traces", "raw")) else None


def md(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    cols = list(df.columns)
    out = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            cells.append(format(v, floatfmt) if isinstance(v, (float, np.floating)) and np.isfinite(v) else
                         ("" if isinstance(v, float) else str(v)))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# -- part A: reuse rates and calibration ------------------------------------------------------------------


def calibrate() -> None:
    import jax

    from slimjax import generate, traces

    shared = shared_dir()
    if shared is None:
        sys.exit("calibrate: needs the real traces ($SLIMJAX_SHARED/traces/raw)")
    rows, fits = [], []
    t0 = time.perf_counter()
    for label, folder, model, L in REAL:
        tr = traces.load(os.path.join(shared, "traces", "raw", folder))
        real = generate.reuse_rates(tr, WINDOWS)  # [W, L]
        shuffled = generate.reuse_rates(tr.select(np.random.default_rng(0).permutation(tr.num_tokens)), WINDOWS)
        for li, layer in enumerate(tr.layers):
            rows.append({"trace": label, "layer": int(layer), "kind": "real", "locality": np.nan,
                         **{f"w={w}": real[i, li] for i, w in enumerate(WINDOWS)}})
            rows.append({"trace": label, "layer": int(layer), "kind": "real, shuffled", "locality": np.nan,
                         **{f"w={w}": shuffled[i, li] for i, w in enumerate(WINDOWS)}})
        target = real.mean(1)
        # the grid of the calibration: drift x skew x cluster_spread x task_spread, 2 streams each
        grid = []
        for drift, skew, cs, ts in itertools.product((1.0, 0.7, 0.5, 0.3, 0.2), (0.0, 0.1, 0.2, 0.3, 0.5),
                                                     (0.6, 1.0, 1.5), (0.5, 2.0)):
            cfg = generate.LocalityConfig(tokens=tr.num_tokens, drift=drift, skew=skew, cluster_spread=cs, task_spread=ts)
            got = np.mean([generate.reuse_rates(generate.locality_trace(jax.random.key(s), cfg, model=model, layers=L),
                                                WINDOWS).mean(1) for s in range(2)], axis=0)
            grid.append((float(((got - target) ** 2).sum()), drift, skew, cs, ts, got))
        grid.sort(key=lambda g: g[0])
        err, drift, skew, cs, ts, got = grid[0]
        preset = generate.LOCALITY_PRESETS[model]
        fits.append({"trace": label, "drift": drift, "skew": skew, "cluster_spread": cs, "task_spread": ts,
                     "sq_error": err, "preset": preset})
        print(f"{label}: best fit drift={drift} skew={skew} cluster_spread={cs} task_spread={ts} "
              f"(sq. error {err:.2e}); committed preset {preset}", flush=True)
        for rho in (0.0, 0.5, 0.8, 0.9, 0.95, 0.99):
            cfg = generate.as_locality_config({"preset": model, "tokens": tr.num_tokens, "locality": rho})
            got = np.mean([generate.reuse_rates(generate.locality_trace(jax.random.key(s), cfg, model=model, layers=L),
                                                WINDOWS).mean(1) for s in range(2)], axis=0)
            rows.append({"trace": label, "layer": -1, "kind": "generator (preset)", "locality": rho,
                         **{f"w={w}": got[i] for i, w in enumerate(WINDOWS)}})
    df = pd.DataFrame(rows)
    df.to_csv(os.path.join(HERE, "reuse.csv"), index=False)
    pd.DataFrame(fits).to_csv(os.path.join(HERE, "calibration.csv"), index=False)
    print(md(df))
    print(f"calibrate: {time.perf_counter() - t0:.0f} s")


# -- part B: the study ----------------------------------------------------------------------------------


def study(quick: bool, out: str) -> None:
    from hydra import compose, initialize_config_dir

    from slimjax import app
    from slimjax.app import CONF_DIR

    out = out + ("-quick" if quick else "")
    overrides = ["experiment=caching", f"paths.output_dir={out}", "output.summary=false"]
    shared = shared_dir()
    if shared is not None:
        overrides.append(f"caching.shared={shared}")
    else:
        print("study: no real traces found ($SLIMJAX_SHARED/traces/raw); synthetic streams only", flush=True)
    if quick:
        overrides.append("caching.quick=true")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    t0 = time.perf_counter()
    res = app.run(cfg)
    print(f"study: {'skipped (complete)' if res['skipped'] else 'ran'} in {time.perf_counter() - t0:.0f} s -> {out}")
    if quick:
        return
    results = pd.read_parquet(os.path.join(out, "results.parquet"))
    keep = ["source", "locality", "storage", "rep", "policy", "family", "migration", "J", "cost", "p50", "p95", "p99",
            "hit_rate", "gb_per_token", "seconds", "compile_seconds"]
    pol = (results[keep].groupby(["source", "locality", "storage", "policy", "family", "migration"], dropna=False)
           [["J", "cost", "p50", "p95", "p99", "hit_rate", "gb_per_token", "seconds", "compile_seconds"]].mean()
           .reset_index())
    pol.to_csv(os.path.join(HERE, "policies.csv"), index=False, float_format="%.6g")
    shutil.copy(os.path.join(out, "region.csv"), os.path.join(HERE, "region.csv"))
    shutil.copy(os.path.join(out, "summary.csv"), os.path.join(HERE, "summary.csv"))
    replot()


def replot() -> None:
    from slimjax.app._caching import region_figure

    reg = pd.read_csv(os.path.join(HERE, "region.csv"))
    pol = pd.read_csv(os.path.join(HERE, "policies.csv"))
    real = QWEN if (reg.source == QWEN).any() else None
    region_figure(reg, __import__("pathlib").Path(HERE) / "caching_region.png", real=real)
    lines = ["# Tables (generated by run.py; numbers in README.md are taken from here)", ""]
    # region: ratio per locality x storage, one table per migration cost
    for c in sorted(reg.migration.unique()):
        sub = reg[(reg.migration == c)]
        syn = sub[sub.source == "synthetic"].pivot_table(index="storage", columns="locality", values="ratio")
        syn.columns = [f"ρ={x:g}" for x in syn.columns]
        for src, name in ((QWEN, "Qwen real"), (OLMOE, "OLMoE real")):
            r = sub[sub.source == src].set_index("storage").ratio
            if len(r):
                syn.insert(0, name, r)
        lines += [f"## Cost ratio best online cache / best plan, migration {c:g} s/GB (< 1: caching wins)", "",
                  md(syn.reset_index()), ""]
    syn = reg[(reg.migration == reg.migration.min()) & (reg.source == "synthetic")]
    p99 = syn.pivot_table(index="storage", columns="locality", values="p99_ratio")
    p99.columns = [f"ρ={x:g}" for x in p99.columns]
    lines += ["## p99 ratio best online cache / best plan (migration does not enter latency)", "",
              md(p99.reset_index()), ""]
    # per policy at the middle storage, free and 1 s/GB migration
    for src in ("synthetic", QWEN, OLMOE):
        sub = pol[(pol.source == src) & pol.migration.isin([0.0, 1.0])]
        if sub.empty:
            continue
        sub = sub[sub.storage == sorted(sub.storage.unique())[len(sub.storage.unique()) // 2]]
        cols = ["locality", "storage", "migration", "policy", "J", "cost", "p95", "p99", "hit_rate", "gb_per_token"]
        lines += [f"## Policies on {src} (storage {sub.storage.iloc[0]:g})", "", md(sub[cols].sort_values(
            ["locality", "migration", "cost"]), ".4f"), ""]
    with open(os.path.join(HERE, "tables.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--calibrate", action="store_true", help="reuse rates of the real traces and the calibration grid")
    g.add_argument("--quick", action="store_true", help="a smoke run of the study (caching.quick=true)")
    g.add_argument("--replot", action="store_true", help="tables and figure from the CSVs only")
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "slimjax-caching"),
                   help="the app's run directory (default: %(default)s)")
    a = p.parse_args()
    if a.calibrate:
        calibrate()
    elif a.replot:
        replot()
    else:
        study(a.quick, a.out)


if __name__ == "__main__":
    main()
