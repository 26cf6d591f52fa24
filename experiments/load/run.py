#!/usr/bin/env python
"""Where does the M/M/1 approximation behind J_load break? J_load vs a discrete-event simulation.

For three families of generated multi-user instances (below), the per-node LFU reference
placement, and a sweep of the bottleneck utilisation (the rates are scaled so that the busiest
node has utilisation ``level``), compare J_load (``slimjax.queueing.load_report``, evaluated with
``max_utilization=1`` so that it is finite up to 0.95) with the SimPy simulation
(``slimjax.queueing.simulate``) under exponential and deterministic service: mean, p95, p99 per-token
latency and the measured utilisation.

One command (from the repository root)::

    .venv/bin/python experiments/load/run.py            # full (~10 min on a busy 2-core CPU)
    .venv/bin/python experiments/load/run.py --quick    # smoke run (fewer levels and tokens)
    .venv/bin/python experiments/load/run.py --replot   # figure and table from results.csv
    .venv/bin/python experiments/load/run.py --families k1-servers   # one family (others kept)

Writes results.csv (every family x instance x level), table.md and deviation.png next to this
file (``--out`` elsewhere).
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

# Servers hold every expert and every user reaches every server; devices cache nothing, so all
# queueing happens at the servers and no expert goes to the cloud.
SERVERS = dict(users=4, servers=3, multi_user=True, traffic_alpha=2.0, load=0.5, device_storage_gb=0.01,
               server_storage_gb=400.0, area_m=200.0, range_m=300.0, server_bandwidth_gbs=(300.0, 1000.0))
FAMILIES = {
    # top-1: one activation per token and layer; the model's assumptions hold best
    "k1-servers": dict(model=dict(name="mixtral_8x7b", layers=6, top_k=1), network=SERVERS),
    # top-2, per-expert latency jitter: a pattern's two experts usually sit on different servers
    "k2-spread": dict(model=dict(name="mixtral_8x7b", layers=6, top_k=2), network=dict(SERVERS, jitter=0.3)),
    # top-2, no jitter: every user's experts go to its fastest server, so both members of a
    # pattern queue at the same server, one after the other
    "k2-shared": dict(model=dict(name="mixtral_8x7b", layers=6, top_k=2), network=SERVERS),
}
LEVELS = (0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
QUICK_LEVELS = (0.3, 0.7, 0.9)


def tokens_for(level: float, quick: bool) -> int:
    """Longer runs near saturation, where the queue relaxes slowly."""
    base, cap = (500, 4000) if quick else (1500, 20000)
    return int(min(cap, base / (1 - level)))


def shared_node_share(inst, x) -> float:
    """Share of (traffic × pattern weight) per layer whose served members share a node."""
    a = np.asarray(ld.assignment(inst, x))
    pats, w, tr = np.asarray(inst.patterns), np.asarray(inst.weight), np.asarray(inst.traffic)
    U, L, M, K = pats.shape
    N = inst.latency.shape[1]
    nodes = np.take_along_axis(a[:, :, None, :], pats, axis=-1)  # [U, L, M, K]
    same = np.zeros((U, L, M), bool)
    for i in range(K):
        for j in range(i + 1, K):
            same |= (nodes[..., i] == nodes[..., j]) & (nodes[..., i] < N) & (pats[..., i] != pats[..., j])
    return float((tr[:, None, None] * w * same).sum() / L)


def run(out: str, quick: bool, instances: int, seed: int, families: list[str]) -> pd.DataFrame:
    levels = QUICK_LEVELS if quick else LEVELS
    rows = []
    for fam in families:
        spec = FAMILIES[fam]
        batch = slimjax.generate.instances(seed, instances, model=spec["model"], network=spec["network"],
                                           routing=dict(tokens=32))
        for i in range(instances):
            inst = batch[i]
            x = np.asarray(ld.reference_placement(inst))
            share = shared_node_share(inst, x)
            for level in levels:
                il = inst.replace(rate=ld.rate_for_load(inst, level, inst.service, x, statistic="max"))
                rep = ld.load_report(il, x, max_utilization=1.0)
                row = dict(family=fam, instance=i, level=level, rho_max=float(rep.utilization.max()),
                           J=float(rep.unloaded), J_load=float(rep.objective), shared=share,
                           tokens=tokens_for(level, quick))
                for kind in ld.SERVICE_KINDS:
                    t0 = time.perf_counter()
                    sim = ld.simulate(il, x, tokens=row["tokens"], service=kind, seed=1000 * i + int(100 * level))
                    tag = kind[:3]
                    row.update({f"{tag}_mean": sim.mean, f"{tag}_ci": sim.mean_ci, f"{tag}_p50": sim.p50,
                                f"{tag}_p95": sim.p95, f"{tag}_p99": sim.p99,
                                f"{tag}_util_err": float(np.abs(sim.utilization - np.asarray(rep.utilization)).max()),
                                f"{tag}_seconds": time.perf_counter() - t0})
                rows.append(row)
                print(f"{fam:10s} inst {i} level {level:.2f}: J={row['J'] * 1e3:.2f} ms J_load={row['J_load'] * 1e3:.2f} "
                      f"sim={row['exp_mean'] * 1e3:.2f}±{row['exp_ci'] * 1e3:.2f} "
                      f"({row['exp_mean'] / row['J_load'] - 1:+.1%}) p95={row['exp_p95'] * 1e3:.1f} ms", flush=True)
    df = pd.DataFrame(rows)
    path = os.path.join(out, "results.csv")
    if set(families) != set(FAMILIES) and os.path.exists(path):  # keep the other families' rows
        old = pd.read_csv(path)
        df = pd.concat([old[~old.family.isin(families)], df], ignore_index=True)
        df = df.sort_values("family", key=lambda c: c.map(list(FAMILIES).index), kind="stable")
    df.to_csv(path, index=False)
    return df


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    d = df.assign(
        dev_exp=df.exp_mean / df.J_load - 1,
        dev_det=df.det_mean / df.J_load - 1,
        ci_rel=df.exp_ci / df.J_load,
        p95_ratio=df.exp_p95 / df.J_load,
        queue_model=df.J_load / df.J - 1,
        queue_sim=df.exp_mean / df.J - 1,
    )
    g = d.groupby(["family", "level"], sort=False)
    return g.agg(
        n=("instance", "size"), shared=("shared", "mean"), queue_model=("queue_model", "mean"),
        queue_sim=("queue_sim", "mean"), dev_exp=("dev_exp", "mean"), dev_exp_min=("dev_exp", "min"),
        dev_exp_max=("dev_exp", "max"), ci_rel=("ci_rel", "mean"), dev_det=("dev_det", "mean"),
        p95_ratio=("p95_ratio", "mean"), util_err=("exp_util_err", "max"), tokens=("tokens", "first"),
    ).reset_index()


def table(s: pd.DataFrame) -> str:
    head = ("| family | ρ_max | n | shared | J_load/J − 1 | sim/J − 1 | **sim/J_load − 1** (exp) | min…max | ±CI | "
            "sim/J_load − 1 (det) | p95/J_load | max Δρ | tokens |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = [
        f"| {r.family} | {r.level:.2f} | {r.n} | {r.shared:.0%} | {r.queue_model:+.1%} | {r.queue_sim:+.1%} | "
        f"**{r.dev_exp:+.1%}** | {r.dev_exp_min:+.1%}…{r.dev_exp_max:+.1%} | {r.ci_rel:.1%} | {r.dev_det:+.1%} | "
        f"{r.p95_ratio:.2f} | {r.util_err:.3f} | {r.tokens} |"
        for r in s.itertuples()
    ]
    return head + "\n".join(lines) + "\n"


def figure(df: pd.DataFrame, s: pd.DataFrame, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = dict(zip(FAMILIES, ("tab:blue", "tab:orange", "tab:red")))
    for fam, c in colors.items():
        f = s[s.family == fam]
        d = df[df.family == fam]
        axes[0].plot(f.level, 100 * f.dev_exp, "o-", color=c, label=f"{fam} (exponential)")
        axes[0].plot(f.level, 100 * f.dev_det, "s--", color=c, alpha=0.6, label=f"{fam} (deterministic)")
        axes[0].scatter(d.level, 100 * (d.exp_mean / d.J_load - 1), color=c, s=8, alpha=0.4)
        axes[1].plot(f.level, f.p95_ratio, "o-", color=c, label=fam)
        axes[2].plot(f.level, 100 * f.queue_model, "o-", color=c, label=f"{fam}: J_load/J − 1")
        axes[2].plot(f.level, 100 * f.queue_sim, "^:", color=c, label=f"{fam}: sim/J − 1")
    axes[0].axhspan(-10, 10, color="0.9", zorder=0)
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set(xlabel="bottleneck utilisation ρ_max", ylabel="simulated mean / J_load − 1 (%)",
                title="deviation of J_load from the simulation")
    axes[1].set(xlabel="bottleneck utilisation ρ_max", ylabel="simulated p95 / J_load",
                title="tail: simulated p95 over J_load (exponential)")
    axes[2].set(xlabel="bottleneck utilisation ρ_max", ylabel="% above the unloaded J", yscale="symlog",
                title="queueing delay: model vs simulation")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 levels, short simulations")
    ap.add_argument("--replot", action="store_true", help="only redo the figure and table from results.csv")
    ap.add_argument("--instances", type=int, default=3, help="instances per family")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES),
                    help="run only these families (the others' rows in results.csv are kept)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.replot:
        df = pd.read_csv(os.path.join(args.out, "results.csv"))
    else:
        df = run(args.out, args.quick, args.instances, args.seed, args.families)
    s = summarise(df)
    md = table(s)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(md)
    figure(df, s, os.path.join(args.out, "deviation.png"))
    print(md)


if __name__ == "__main__":
    main()
