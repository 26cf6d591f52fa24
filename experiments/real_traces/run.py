#!/usr/bin/env python
"""Real routing traces: held-out evaluation of placements, tail latency, generator calibration.

For every real trace in ../shared/traces/raw (see SOURCE.md there):
  * split the tokens in two halves (random tokens; and, for per-token logs, chronological:
    first half vs second half), build instances from the *train* half with a sampled edge
    network (the default NetworkConfig, storage scaled to a fraction of the logged layers'
    expert bytes), solve with every registered heuristic method, then replay the *test* half
    through each placement: mean and p95 per-token latency, the loss from train to test, and
    the regret against ``successive`` solved on the test half itself (an oracle);
  * compare the routing statistics of the ``latent`` generator with the real traces and
    search a small grid for latent parameters that look like real routing.

One command (from the repository root)::

    .venv/bin/python experiments/real_traces/run.py            # full (a few minutes on 2 cores)
    .venv/bin/python experiments/real_traces/run.py --quick    # smoke run

Writes results.csv (every instance x method), summary.csv, calibration.csv, tables.md and
figures (test_latency.png, cdf.png, calibration.png) next to this file.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, ROOT)

import jax
import pandas as pd

import slimjax
from slimjax import traces as tr
from slimjax.generate import instance_from_trace

SWITCH = {"name": "switch_base_128", "layers": 6, "experts": 128, "top_k": 1, "hidden": 768, "ffn": 3072, "matrices": 2}

# name, path under raw/, model preset, per-token?  (approximate traces are sampled from counts)
TRACES = [
    ("qwen1.5-moe / gsm8k", "weiran0129__vLLM-MoE-Logger", "qwen1_5_moe_a2_7b"),
    ("olmoe / gsm8k (layer 0)", "KaxitPandya__cerebras-assesment2/moe_routes.jsonl", "olmoe_1b_7b"),
    ("olmoe / c4 (counts)", "allenai__OLMoE/olmoe/expert_counts/c4.pkl", "olmoe_1b_7b"),
    ("mixtral / c4 (counts)", "allenai__OLMoE/mistral/expert_counts/c4.pkl", "mixtral_8x7b"),
    ("switch-128 / mix (counts)", "cyanmishra92__specMoE/expert_statistics_3d.json", SWITCH),
]
# Same marginals as olmoe/expert_counts (checked below), so not evaluated twice.
DUPLICATE = ("allenai__OLMoE/olmoe/expert_counts_crosslayer/c4.pkl", "allenai__OLMoE/olmoe/expert_counts/c4.pkl")

PREFERRED = ["successive-best", "successive", "successive-fast", "greedy", "coactivation-blind", "popularity", "layer-uniform", "random"]


def raw_dir() -> str:
    shared = os.environ.get("SLIMJAX_SHARED", os.path.join(ROOT, "..", "shared"))
    path = os.path.abspath(os.path.join(shared, "traces", "raw"))
    if not os.path.isdir(path):
        raise SystemExit(f"real traces not found at {path} (set SLIMJAX_SHARED)")
    return path


def load_all(raw: str, sampled_tokens: int):
    out = []
    for name, rel, model in TRACES:
        t = tr.load(os.path.join(raw, rel), tokens=sampled_tokens, seed=0) if rel.endswith((".pkl", ".json")) \
            else tr.load(os.path.join(raw, rel))
        out.append((name, t, model))
    a = tr.load(os.path.join(raw, DUPLICATE[0]), tokens=64)
    b = tr.load(os.path.join(raw, DUPLICATE[1]), tokens=64)
    assert a.shape == b.shape and a.layers.tolist() == b.layers.tolist()
    return out


def methods_to_run(requested: list[str] | None) -> list[str]:
    reg = slimjax.methods()
    if requested:
        return requested
    base = [m for m in PREFERRED if m.split("+")[0] in reg]
    return base


# ------------------------------------------------------------------------------------------------
# held-out evaluation
# ------------------------------------------------------------------------------------------------
def evaluate(traces, methods, storages, seeds, log, partial=None):
    rows, cdf = [], {}
    for name, trace, model in traces:
        splits = [("random", 0)] + ([] if trace.approximate else [("chronological", None)])
        for (split_name, split_seed), storage in itertools.product(splits, storages):
            train, test = tr.split(trace, 0.5, by="token", seed=split_seed)
            net = {"storage_fraction": storage}
            keys = jax.random.split(jax.random.key(2026), seeds)
            b_train = slimjax.stack([instance_from_trace(train, model=model, network=net, key=k) for k in keys])
            b_test = slimjax.stack([instance_from_trace(test, model=model, network=net, key=k) for k in keys])
            N, L, E = b_train.latency.shape[-3:]
            empty = np.zeros((seeds, N, L, E), bool)
            cloud = slimjax.replay_stats(b_train, empty, test)["mean"]
            oracle = None
            if "successive" in slimjax.methods():
                oracle = np.asarray(slimjax.solve_batch(b_test, solver="successive-best").objective)
            for method in ["cloud-only"] + methods:
                t0 = time.perf_counter()
                if method == "cloud-only":
                    x, j_train, secs = empty, np.asarray(slimjax.objective(b_train, empty)), 0.0
                else:
                    sol = slimjax.solve_batch(b_train, solver=method)
                    x, j_train = np.asarray(sol.placement), np.asarray(sol.objective)
                    secs = time.perf_counter() - t0
                st = slimjax.replay_stats(b_train, x, test)  # [seeds] held-out mean and percentiles
                if split_name == "random" and storage == storages[0]:
                    cdf[(name, method)] = np.asarray(slimjax.replay(b_train[0], x[0], test))
                for s in range(seeds):
                    rows.append(dict(
                        trace=name, approximate=trace.approximate, tokens=trace.num_tokens, L=L, E=E, K=trace.top_k,
                        split=split_name, storage=storage, seed=s, method=method,
                        j_train_ms=1e3 * j_train[s], j_test_ms=1e3 * st["mean"][s], p50_ms=1e3 * st["p50"][s],
                        p95_ms=1e3 * st["p95"][s], p99_ms=1e3 * st["p99"][s], cloud_ms=1e3 * cloud[s],
                        oracle_ms=np.nan if oracle is None else 1e3 * oracle[s], seconds=secs / seeds,
                    ))
                if partial:
                    pd.DataFrame(rows).to_csv(partial, index=False, float_format="%.5g")
                log(f"{name:28s} {split_name:13s} storage={storage:.2f} {method:20s} "
                    f"train {1e3 * j_train.mean():8.2f} ms  test {1e3 * st['mean'].mean():8.2f} ms  "
                    f"p95 {1e3 * st['p95'].mean():8.2f} ms  ({secs:.1f} s)")
    return derive(pd.DataFrame(rows)), cdf


def derive(df):
    """Derived columns of the per-instance results."""
    df["loss_pct"] = 100 * (df.j_test_ms / df.j_train_ms - 1)
    df["regret_pct"] = 100 * (df.j_test_ms / df.oracle_ms - 1)
    df["gain_pct"] = 100 * (1 - df.j_test_ms / df.cloud_ms)  # held-out latency saved vs cloud only
    df["train_gain_pct"] = 100 * (1 - df.j_train_ms / df.cloud_ms)
    df["p95_gain_pct"] = 100 * (1 - df.p95_ms / df.cloud_ms)
    return df


def summarize(df):
    g = df.groupby(["trace", "approximate", "split", "storage", "method"], sort=False)
    return g.agg(j_train_ms=("j_train_ms", "mean"), j_test_ms=("j_test_ms", "mean"), p95_ms=("p95_ms", "mean"),
                 loss_pct=("loss_pct", "mean"), regret_pct=("regret_pct", "mean"), gain_pct=("gain_pct", "mean"),
                 train_gain_pct=("train_gain_pct", "mean"), p95_gain_pct=("p95_gain_pct", "mean"),
                 seconds=("seconds", "mean")).reset_index()


# ------------------------------------------------------------------------------------------------
# calibration of the latent generator
# ------------------------------------------------------------------------------------------------
STAT_KEYS = ["freq_cv", "top10_share", "entropy", "distinct_share", "pair_lift"]


def latent_stats(cfg, L, E, K, seeds=2):
    from slimjax.generate import sample_routing

    vals = []
    for s in range(seeds):
        p, _ = sample_routing(jax.random.key(100 + s), cfg, L, E, K)
        vals.append(tr.statistics(np.asarray(p[0]).transpose(1, 0, 2), E))
    return {k: float(np.mean([v[k] for v in vals])) for k in STAT_KEYS}


def calibrate(traces, T, grid, log):
    from slimjax.generate import RoutingConfig

    rows = []
    targets = []
    for name, trace, _ in traces:
        sub = trace.select(np.random.default_rng(0).permutation(trace.num_tokens)[:T]) if trace.num_tokens > T else trace
        s = tr.statistics(sub)
        rows.append(dict(source=name, kind="real (approximate: marginals only)" if trace.approximate else "real", **s))
        targets.append((name, trace, s))
    shapes = {(t.num_layers, t.num_experts, t.top_k) for _, t, _ in targets}

    def score(cfg):
        err, per = 0.0, {}
        for name, t, s in targets:
            ls = latent_stats(cfg, t.num_layers, t.num_experts, t.top_k)
            per[name] = ls
            err += np.log(ls["freq_cv"] / s["freq_cv"]) ** 2  # popularity spread: all traces
            if not t.approximate and t.top_k > 1:  # co-activation: only per-token traces say it
                err += np.log(ls["pair_lift"] / s["pair_lift"]) ** 2
                err += np.log(ls["distinct_share"] / s["distinct_share"]) ** 2
        return err, per

    default = RoutingConfig(tokens=T)
    best = None
    for i, values in enumerate(grid):
        cfg = default.replace(**values)
        err, per = score(cfg)
        log(f"calibration {i + 1}/{len(grid)} {values} error {err:.3f}")
        if best is None or err < best[0]:
            best = (err, values, per)
    err0, per0 = score(default)
    for name, _, _ in targets:
        rows.append(dict(source=name, kind=f"latent default (error {err0:.2f})", **per0[name]))
        rows.append(dict(source=name, kind=f"latent proposed {best[1]} (error {best[0]:.2f})", **best[2][name]))
    del shapes
    return pd.DataFrame(rows), best[1], (err0, best[0])


# ------------------------------------------------------------------------------------------------
# figures and tables
# ------------------------------------------------------------------------------------------------
def figures(summary, cdf, calib, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = summary[(summary.split == "random") & (summary.method != "cloud-only")]
    names = list(dict.fromkeys(sub.trace))
    storages = sorted(sub.storage.unique())
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.8), squeeze=False, sharey=False)
    for ax, name in zip(axes[0], names):
        s = sub[sub.trace == name]
        methods = list(dict.fromkeys(s.method))
        w = 0.8 / len(storages)
        for i, st in enumerate(storages):
            ss = s[s.storage == st].set_index("method").reindex(methods)
            y = np.arange(len(methods)) + i * w
            ax.barh(y, ss.gain_pct, w, label=f"storage {st:.0%}", color=plt.cm.viridis(0.2 + 0.6 * i / max(1, len(storages) - 1)))
            ax.scatter(ss.train_gain_pct, y, color="k", marker="|", s=40, zorder=3)
        top = np.nanmax(np.r_[s.gain_pct.to_numpy(), s.train_gain_pct.to_numpy(), 1.0])
        ax.set_xlim(min(0.0, np.nanmin(s.gain_pct.to_numpy())), 1.08 * top)
        ax.set_yticks(np.arange(len(methods)) + 0.4 - w / 2)
        ax.set_yticklabels(methods, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(name + (" *" if s.approximate.iloc[0] else ""), fontsize=9)
        ax.set_xlabel("latency saved vs cloud-only (%)", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Held-out tokens (random half split): bars = test, | = train.  * = approximate (sampled from counts)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "test_latency.png"), dpi=120)
    plt.close(fig)

    if not cdf:
        return _calibration_figure(calib, out, plt)
    name = names[0]
    fig, ax = plt.subplots(figsize=(6, 4))
    for (tname, method), lat in cdf.items():
        if tname != name:
            continue
        v = np.sort(lat) * 1e3
        ax.plot(v, np.arange(1, v.size + 1) / v.size, label=method)
    ax.set_xlabel("per-token MoE latency (ms), held-out tokens")
    ax.set_ylabel("CDF")
    ax.set_title(f"{name}: per-token latency CDF (instance 0)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cdf.png"), dpi=120)
    plt.close(fig)

    _calibration_figure(calib, out, plt)


def _calibration_figure(calib, out, plt):
    if calib is not None:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        kinds = list(dict.fromkeys(calib.kind.map(lambda k: k.split(" (")[0].split(" {")[0])))
        srcs = list(dict.fromkeys(calib.source))
        w = 0.8 / len(kinds)
        for ax, stat in zip(axes, ["freq_cv", "distinct_share", "pair_lift"]):
            for i, kind in enumerate(kinds):
                vals = [calib[(calib.source == s) & calib.kind.str.startswith(kind)][stat].mean() for s in srcs]
                ax.bar(np.arange(len(srcs)) + i * w, vals, w, label=kind)
            ax.set_xticks(np.arange(len(srcs)) + 0.4 - w / 2)
            ax.set_xticklabels([s.split(" (")[0] for s in srcs], rotation=30, ha="right", fontsize=7)
            ax.set_title(stat)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "calibration.png"), dpi=120)
        plt.close(fig)


def tables(summary, calib, proposal, errors, out):
    lines = ["Saved = latency saved vs cloud-only (% of the cloud-only per-token latency); loss = held-out J / train J - 1;",
             "regret = held-out J / J of `successive-best` solved on the held-out tokens themselves - 1. * = approximate trace."]
    for split in summary.split.unique():
        s = summary[(summary.split == split) & (summary.method != "cloud-only")]
        lines.append(f"\n### Held-out tokens, {split} split (means over instances)\n")
        lines.append("| trace | storage | method | train saved | test saved | test mean ms | test p95 ms | loss | regret |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for r in s.itertuples():
            lines.append(f"| {r.trace}{' *' if r.approximate else ''} | {r.storage:.0%} | {r.method} | "
                         f"{r.train_gain_pct:.1f}% | {r.gain_pct:.1f}% | {r.j_test_ms:.1f} | {r.p95_ms:.1f} | "
                         f"{r.loss_pct:+.1f}% | {r.regret_pct:+.1f}% |")
    if calib is not None:
        lines.append("\n### Calibration of the latent generator (2048 tokens; means over layers)\n")
        lines.append("| source | kind | " + " | ".join(STAT_KEYS) + " |")
        lines.append("|---|---|" + "---|" * len(STAT_KEYS))
        for r in calib.itertuples():
            lines.append(f"| {r.source} | {r.kind} | " + " | ".join(f"{getattr(r, k):.3f}" for k in STAT_KEYS) + " |")
        if proposal is not None:
            lines.append(f"\nBest grid values: {proposal} (error {errors[0]:.2f} -> {errors[1]:.2f}).")
    with open(os.path.join(out, "tables.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--methods", nargs="*", help="methods (default: every registered heuristic)")
    p.add_argument("--seeds", type=int, default=4, help="sampled networks per setting")
    p.add_argument("--storage", type=float, nargs="*", default=[0.25, 0.5, 1.0],
                   help="edge storage as a fraction of the logged layers' expert bytes")
    p.add_argument("--sampled-tokens", type=int, default=8192, help="tokens sampled from count-only traces")
    p.add_argument("--no-calibration", action="store_true")
    p.add_argument("--out", default=HERE)
    p.add_argument("--replot", action="store_true", help="redo figures (not the CDF) and tables from the CSVs")
    args = p.parse_args(argv)
    if args.replot:
        df = pd.read_csv(os.path.join(args.out, "results.csv"))
        summary = summarize(derive(df))
        summary.to_csv(os.path.join(args.out, "summary.csv"), index=False, float_format="%.4f")
        cal_path = os.path.join(args.out, "calibration.csv")
        calib = pd.read_csv(cal_path) if os.path.exists(cal_path) else None
        figures(summary, {}, calib, args.out)
        tables(summary, calib, None, None, args.out)
        return 0
    if args.quick:
        args.seeds, args.storage, args.sampled_tokens = 2, [0.25], 2048
    t0 = time.time()
    log = lambda msg: print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)
    traces = load_all(raw_dir(), args.sampled_tokens)
    for name, t, _ in traces:
        log(f"loaded {name}: {t}")
    methods = methods_to_run(args.methods)
    log(f"methods: {methods}")
    df, cdf = evaluate(traces, methods, args.storage, args.seeds, log, partial=os.path.join(args.out, "results.partial.csv"))
    summary = summarize(df)
    calib, proposal, errors = None, None, None
    if not args.no_calibration:
        # around the current defaults (skew 0.1, cluster_spread 0.6, clusters 64, temperature 0)
        grid = [dict(skew=s, cluster_spread=c, clusters=k, temperature=t)
                for s, c, k, t in itertools.product([0.1, 0.2], [0.6, 1.0], [16, 64], [0.0, 0.3])]
        if args.quick:
            grid = grid[:2]
        calib, proposal, errors = calibrate(traces, 2048, grid, log)
        calib.to_csv(os.path.join(args.out, "calibration.csv"), index=False, float_format="%.4f")
    df.to_csv(os.path.join(args.out, "results.csv"), index=False, float_format="%.5g")
    if os.path.exists(os.path.join(args.out, "results.partial.csv")):
        os.remove(os.path.join(args.out, "results.partial.csv"))
    summary.to_csv(os.path.join(args.out, "summary.csv"), index=False, float_format="%.4f")
    figures(summary, cdf, calib, args.out)
    tables(summary, calib, proposal, errors, args.out)
    log(f"wrote results.csv, summary.csv, tables.md and figures to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
