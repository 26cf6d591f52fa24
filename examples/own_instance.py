"""Your own instance from NumPy arrays: a device and three edge servers, six MoE layers of eight
experts with top-2 routing, solved by the paper's method, greedy and LFU, then explained.

    python examples/own_instance.py [--out DIR]     # DIR: also write two figures there
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import slimjax

U, N, L, E, K, T = 1, 4, 6, 8, 2, 2000  # users, nodes, layers, experts, top-K, routed tokens
rng = np.random.default_rng(0)

# -- the network: a node's time for one expert = link (0 on the device) + compute ------------
link_s = np.array([0.0, 0.002, 0.004, 0.008])  # round trip + transfer of the hidden state, s
compute_s = np.array([0.004, 0.0005, 0.0005, 0.0003])  # the device is slow to compute, servers fast
latency = np.broadcast_to((link_s + compute_s)[None, :, None, None], (U, N, L, E)).copy()  # [U, N, L, E] s
fallback = np.full((U, L, E), 0.060)  # [U, L, E] s: the cloud
size = np.full((L, E), 0.35e9)  # [L, E] bytes: a Mixtral-sized expert (bf16)
capacity = np.array([1.0e9, 3.0e9, 4.0e9, 6.0e9])  # [N] bytes of expert storage per node

# -- the routing: T tokens, each layer's top-2 drawn from skewed popularities ----------------
popularity = rng.dirichlet(np.full(E, 0.6), size=L)  # [L, E]
tokens = np.stack(
    [[rng.choice(E, size=K, replace=False, p=popularity[l]) for l in range(L)] for _ in range(T)]
)  # [T, L, K] expert ids
# the patterns of a layer are its distinct (sorted) top-2 sets, with their shares as weights
per_layer = [np.unique(np.sort(tokens[:, l], axis=-1), axis=0, return_counts=True) for l in range(L)]
M = max(len(sets) for sets, _ in per_layer)
patterns = np.zeros((U, L, M, K), np.int32)  # [U, L, M, K]; padding rows get weight 0
weight = np.zeros((U, L, M))  # [U, L, M]
for l, (sets, counts) in enumerate(per_layer):
    patterns[0, l, : len(sets)] = sets
    weight[0, l, : len(sets)] = counts / counts.sum()

inst = slimjax.Instance(latency=latency, fallback=fallback, size=size, capacity=capacity,
                        patterns=patterns, weight=weight)
print("instance (U, N, L, E, M, K) =", inst.shape)


def main(out: Path | None = None) -> dict[str, float]:
    results = {}
    for name in ("successive", "greedy", "popularity"):
        sol = slimjax.solve(inst, name)
        assert slimjax.feasible(inst, sol.placement).ok
        results[name] = float(sol.objective)
        print(f"{name:>11}: J = {1e3 * results[name]:.2f} ms per token, storage used {np.asarray(sol.used) / 1e9} GB")
    empty = float(slimjax.objective(inst, np.zeros((N, L, E), bool)))
    print(f"{'nothing':>11}: J = {1e3 * empty:.2f} ms per token")

    best = slimjax.solve(inst, "successive")
    ex = slimjax.explain(inst, best)
    print(ex)
    print(ex.shares)
    if out is not None:
        from slimjax import plots

        out.mkdir(parents=True, exist_ok=True)
        print(plots.layer_contribution(ex, out / "own_layer_contribution.png"))
        print(plots.expert_placement(inst, best.placement, out / "own_expert_placement.png"))
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="write two figures to this folder")
    main(ap.parse_args().out)
