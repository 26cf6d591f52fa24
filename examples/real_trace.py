"""A real routing trace end to end: split its tokens, solve on one half, replay the other.

    python examples/real_trace.py TRACE [--model PRESET] [--storage 0.5]

TRACE is any file or folder ``slimjax.traces.load`` reads: a canonical ``.npz``, per-token JSONL
logs (e.g. vLLM's MoE logger) or per-layer expert counts. The network is sampled for the model
preset (default: the one matching the trace's E and K) and the edge holds ``--storage`` of the
logged layers' expert bytes. Placements are solved on the train half and evaluated on the held-out
half: mean and p95 per-token latency, and how much of the latency the train half promised is
kept on tokens it has not seen.
"""

from __future__ import annotations

import argparse

import numpy as np

import slimjax
from slimjax import traces

SOLVERS = ("successive", "greedy", "popularity")


def main(path: str, model: str | None = None, storage: float = 0.5, seed: int = 0) -> dict[str, dict]:
    trace = traces.load(path)
    T, L, K = np.shape(trace.expert_ids)
    print(f"{path}: {T} tokens, {L} logged layers, top-{K} of {trace.num_experts} experts"
          f"{' (approximate: sampled from counts)' if trace.approximate else ''}")
    train, test = traces.split(trace, 0.5, by="token", seed=seed)
    inst = slimjax.generate.instance_from_trace(
        train, model=model, network={"servers": 4, "storage_fraction": storage}, key=seed)

    empty = np.zeros(inst.latency.shape[1:], bool)
    base = slimjax.replay_stats(inst, empty, test)  # every held-out token through the cloud
    train_empty = float(slimjax.objective(inst, empty))
    print(f"{'cloud only':>11}: test mean {1e3 * base['mean']:7.2f} ms, p95 {1e3 * base['p95']:7.2f} ms")
    out = {}
    for name in SOLVERS:
        sol = slimjax.solve(inst, name)
        st = slimjax.replay_stats(inst, sol.placement, test)  # mean, p50, p95, p99 of the held-out tokens
        train_J = float(sol.objective)
        out[name] = {"train_J": train_J, "test_mean": float(st["mean"]), "test_p95": float(st["p95"])}
        print(f"{name:>11}: test mean {1e3 * st['mean']:7.2f} ms, p95 {1e3 * st['p95']:7.2f} ms; "
              f"saved {100 * (1 - st['mean'] / base['mean']):5.1f} % (on the train tokens: {100 * (1 - train_J / train_empty):5.1f} %)")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", help="a trace file or folder (.npz, JSONL logs, expert counts)")
    ap.add_argument("--model", default=None, help="model preset for sizes and FLOPs (default: by E and K)")
    ap.add_argument("--storage", type=float, default=0.5, help="edge storage, share of the logged layers' expert bytes")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    main(a.trace, a.model, a.storage, a.seed)
