#!/usr/bin/env python
"""Dynamic caching: re-placing experts as routing drifts, with the cost of moving them.

Timelines from the drift generator (``slimjax.dynamic.drift``: latent routing whose task mix
jumps between phases) and from the real per-token traces (``$SLIMJAX_SHARED/traces/raw``), cut into
windows in the order the tokens were served. Every policy of ``slimjax.dynamic.run`` on each,
with a migration budget per node and window given as a share of the node's storage.

One command (from the repository root)::

    .venv/bin/python experiments/dynamic/run.py            # full (~45 min on a busy 2-core CPU)
    .venv/bin/python experiments/dynamic/run.py --quick    # smoke run (small, ~5 min)
    .venv/bin/python experiments/dynamic/run.py --replot   # figures and tables from the CSVs

Writes ``windows.csv`` (mean over timelines per setting x policy x budget x window),
``summary.csv`` (per setting x policy x budget), ``tables.md`` and the figures next to this file.
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

import jax  # noqa: E402
import pandas as pd  # noqa: E402

import slimjax  # noqa: E402
from slimjax import dynamic  # noqa: E402

# (label, path under raw/, model preset): the per-token logs, the only shared traces with an order
TRACES = [
    ("qwen1.5-moe / gsm8k", "weiran0129__vLLM-MoE-Logger", "qwen1_5_moe_a2_7b"),
    ("olmoe / gsm8k (layer 0)", "KaxitPandya__cerebras-assesment2/moe_routes.jsonl", "olmoe_1b_7b"),
]
HEADLINE = 0.10  # budget per node and window: 10 % of the node's storage
FRONTIER = (0.0, 0.025, 0.05, 0.10, 0.20, 0.40)


def raw_dir() -> str | None:
    shared = os.environ.get("SLIMJAX_SHARED", os.path.join(ROOT, "..", "shared"))
    path = os.path.abspath(os.path.join(shared, "traces", "raw"))
    return path if os.path.isdir(path) else None


def ci95(x: np.ndarray) -> float:
    from scipy import stats

    x = np.asarray(x, np.float64)
    return float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def policies(headline: float, ema: bool = True):
    """(name, policy, budget share or None, extra run options)."""
    out = [
        ("static", "static", None, {}),
        ("resolve", "resolve", None, {}),
        (f"resolve @{headline:.0%}", "resolve", headline, {}),
        (f"incremental @{headline:.0%}", "incremental", headline, {}),
        (f"incremental-ema @{headline:.0%}", "incremental", headline, {"forecast": "ema"}),
        (f"lfu @{headline:.0%}", "lfu", headline, {}),
        ("lfu", "lfu", None, {}),
        ("lru", "lru", None, {}),
        (f"hindsight @{headline:.0%}", "hindsight", headline, {}),
        ("hindsight", "hindsight", None, {}),
    ]
    return out if ema else [p for p in out if p[3].get("forecast") != "ema"]


def run_setting(label: str, tl, solver: str, frontier, rows: list, windows: list, headline: float, ema: bool = True):
    cap = np.asarray(tl.windows.capacity[:, 0], np.float64)  # [B, N]
    jobs = [(n, p, b, kw) for n, p, b, kw in policies(headline, ema)]
    for share in frontier:
        if share != headline:
            jobs += [(f"incremental @{share:.1%}", "incremental", share, {}), (f"hindsight @{share:.1%}", "hindsight", share, {})]
    for name, pol, share, kw in jobs:
        t0 = time.perf_counter()
        budget = None if share is None else share * cap
        r = dynamic.run(tl, pol, budget=budget, solver=solver, **kw)
        wall = time.perf_counter() - t0
        B, T = r.objective.shape
        rows.append({
            "setting": label, "name": name, "policy": pol, "forecast": kw.get("forecast", "last"),
            "budget_share": np.inf if share is None else share, "timelines": B, "windows": T,
            "total": r.total.mean(), "total_ci": ci95(r.total), "J_window": r.objective[:, 1:].mean(),
            "moved_gb_window": r.moved[:, 1:].sum(-1).mean() / 1e9, "loaded_gb_window": r.info["loaded"][:, 1:].sum(-1).mean() / 1e9,
            "p95": np.nanmean(r.p95[:, 1:]), "seconds": r.seconds, "compile_seconds": r.compile_seconds, "wall": wall,
            "_totals": r.total.tolist(),
        })
        for t in range(T):
            windows.append({"setting": label, "name": name, "window": t, "J": r.objective[:, t].mean(),
                            "moved_gb": r.moved[:, t].sum(-1).mean() / 1e9, "p95": np.nanmean(r.p95[:, t])})
        print(f"  {name:26s} total {r.total.mean():.4f}  moved/window {rows[-1]['moved_gb_window']:.2f} GB  "
              f"run {r.seconds:.1f}s compile {r.compile_seconds:.1f}s", flush=True)


def recovered(summary: pd.DataFrame, setting: str, share: float, reference: str) -> tuple[float, list]:
    """Share of the static -> reference gap in total J that incremental @share recovers (pooled
    over timelines), and per timeline."""
    s = summary[summary.setting == setting].set_index("name")
    st = np.array(s.loc["static", "_totals"])
    inc = np.array(s.loc[f"incremental @{share:.0%}" if f"incremental @{share:.0%}" in s.index else f"incremental @{share:.1%}", "_totals"])
    ref = np.array(s.loc[reference, "_totals"])
    return float((st - inc).sum() / (st - ref).sum()), ((st - inc) / (st - ref)).round(3).tolist()


def figures(summary: pd.DataFrame, windows: pd.DataFrame, headline: float, period: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(summary.setting))
    show = ["static", "resolve", f"resolve @{headline:.0%}", f"incremental @{headline:.0%}", f"lfu @{headline:.0%}", "lru",
            f"hindsight @{headline:.0%}", "hindsight"]
    style = {"static": ("k", "-"), "resolve": ("tab:orange", ":"), f"resolve @{headline:.0%}": ("tab:orange", "-"),
             f"incremental @{headline:.0%}": ("tab:blue", "-"), f"lfu @{headline:.0%}": ("tab:green", "-"),
             "lru": ("tab:purple", "-"), f"hindsight @{headline:.0%}": ("tab:red", "-"), "hindsight": ("tab:red", ":")}
    for kind, col, ylabel, fname in (("J", "J", "J of window t (s per token)", "J_over_windows.png"),
                                     ("moved", "moved_gb", "moved into the nodes (GB per window)", "moved_per_window.png")):
        fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 4), squeeze=False)
        for ax, st in zip(axes[0], settings):
            w = windows[windows.setting == st]
            for name in show:
                d = w[(w.name == name) & (w.window >= 1)]
                if len(d):
                    c, ls = style[name]
                    ax.plot(d.window, d[col], color=c, ls=ls, marker="." if kind == "moved" else None, label=name)
            if st.startswith("drift"):
                for b in range(period, int(w.window.max()) + 1, period):
                    ax.axvline(b - 0.5, color="0.8", lw=0.8, zorder=0)
            ax.set_title(st, fontsize=10)
            ax.set_xlabel("window t")
            ax.set_ylabel(ylabel)
            if kind == "moved":
                ax.set_yscale("symlog", linthresh=0.1)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(HERE, fname), dpi=130)
        plt.close(fig)
    # frontier: total J against the budget share
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 4), squeeze=False)
    for ax, st in zip(axes[0], settings):
        s = summary[summary.setting == st]
        for pol, c in (("incremental", "tab:blue"), ("hindsight", "tab:red")):
            d = s[(s.policy == pol) & (s.forecast == "last") & np.isfinite(s.budget_share)].sort_values("budget_share")
            ax.plot(d.budget_share * 100, d.total, marker="o", color=c, label=f"{pol} (budget)")
        for name, c, ls in (("static", "k", "--"), ("hindsight", "tab:red", ":"), ("resolve", "tab:orange", ":")):
            v = s[s.name == name].total
            if len(v):
                ax.axhline(float(v.iloc[0]), color=c, ls=ls, lw=1, label=f"{name} (no budget)")
        ax.set_xscale("symlog", linthresh=2.5)
        ax.set_xlabel("budget per node and window (% of its storage)")
        ax.set_ylabel("total J over windows 1..T-1 (s per token)")
        ax.set_title(st, fontsize=10)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "frontier.png"), dpi=130)
    plt.close(fig)


def tables(summary: pd.DataFrame, headline: float) -> str:
    out = []
    for st in dict.fromkeys(summary.setting):
        s = summary[summary.setting == st]
        static = float(s[s.name == "static"].total.iloc[0])
        out.append(f"### {st}\n")
        out.append("| policy | budget | total J | ±95% | vs static | moved GB/window | p95 s | run s | compile s |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for _, r in s.iterrows():
            if r["name"].startswith(("incremental @", "hindsight @")) and abs(r.budget_share - headline) > 1e-12:
                continue  # frontier points: frontier.png and summary.csv
            b = "none" if not np.isfinite(r.budget_share) else f"{r.budget_share:.0%}"
            p95 = "–" if not np.isfinite(r.p95) else f"{r.p95:.3f}"
            out.append(f"| {r['name'].split(' @')[0]} | {b} | {r.total:.4f} | {r.total_ci:.3f} | {r.total / static:.4f} | "
                       f"{r.moved_gb_window:.2f} | {p95} | {r.seconds:.1f} | {r.compile_seconds:.1f} |")
        out.append("")
        fr = s[(s.policy == "incremental") & (s.forecast == "last") & np.isfinite(s.budget_share)].sort_values("budget_share")
        hi = s[(s.policy == "hindsight") & np.isfinite(s.budget_share)].set_index("budget_share").total
        out.append("| budget | incremental total J | hindsight total J | incremental moved GB/window |")
        out.append("|---|---:|---:|---:|")
        for _, r in fr.iterrows():
            out.append(f"| {r.budget_share:.1%} | {r.total:.4f} | {hi.get(r.budget_share, np.nan):.4f} | {r.moved_gb_window:.2f} |")
        out.append("")
        try:
            a, per_a = recovered(summary, st, headline, f"hindsight @{headline:.0%}")
            b, per_b = recovered(summary, st, headline, "hindsight")
            out.append(f"incremental @{headline:.0%} recovers **{a:.1%}** of the static → hindsight gap at the same "
                       f"budget (per timeline {per_a}) and **{b:.1%}** of the gap to unbudgeted hindsight "
                       f"(per timeline {per_b}).\n")
        except (KeyError, ZeroDivisionError):
            pass
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--replot", action="store_true", help="figures and tables from the CSVs only")
    ap.add_argument("--solver", default="successive-best", help="the per-window solve (default: successive-best)")
    ap.add_argument("--timelines", type=int, default=None, help="drift timelines (default 8; --quick 4)")
    ap.add_argument("--windows", type=int, default=None, help="windows per drift timeline (default 12; --quick 8)")
    args = ap.parse_args()
    period = 4
    if args.replot:
        summary = pd.read_csv(os.path.join(HERE, "summary.csv"))
        summary["_totals"] = summary["_totals"].apply(lambda v: [float(x) for x in v.strip("[]").split(",")])
        windows = pd.read_csv(os.path.join(HERE, "windows.csv"))
    else:
        B, T, tokens = (4, 8, 128) if args.quick else (8, 12, 256)
        B, T = args.timelines or B, args.windows or T
        frontier = (0.0, HEADLINE) if args.quick else FRONTIER
        rows, wins = [], []
        print(f"jax {jax.__version__} on {jax.default_backend()}; solver {args.solver}", flush=True)
        tl = dynamic.drift(jax.random.key(0), B, T, model="mixtral_8x7b", period=period, routing={"tokens": tokens})
        print(f"drift (piecewise): {tl}", flush=True)
        run_setting("drift / mixtral_8x7b", tl, args.solver, frontier, rows, wins, HEADLINE)
        raw = raw_dir()
        if raw is None:
            print("real traces not found (set SLIMJAX_SHARED); skipped", flush=True)
        else:
            from slimjax.generate import instance_from_trace

            for label, rel, model in (TRACES[:1] if args.quick else TRACES):
                trace = slimjax.traces.load(os.path.join(raw, rel))
                nets = slimjax.stack([instance_from_trace(trace, model=model, key=k, network={"storage_fraction": 0.5})
                                      for k in range(2 if args.quick else 3)])
                tl = dynamic.timeline_from_trace(trace, 512, nets)
                print(f"{label}: {tl}", flush=True)
                # the EMA forecast holds horizon x M patterns: too slow on E = 60/64 for this CPU study
                run_setting(label, tl, args.solver, (HEADLINE,), rows, wins, HEADLINE, ema=False)
        summary = pd.DataFrame(rows)
        windows = pd.DataFrame(wins)
        summary.to_csv(os.path.join(HERE, "summary.csv"), index=False)
        windows.to_csv(os.path.join(HERE, "windows.csv"), index=False)
    figures(summary, windows, HEADLINE, period)
    text = tables(summary, HEADLINE)
    with open(os.path.join(HERE, "tables.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
