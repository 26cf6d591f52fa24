"""Fixed-seed cases with many patterns and large E (the greedy layer oracle, polish for E > 32),
and the script that records them (issue 29: the speed work must leave these solutions alone).

Two groups, recorded with the code *before* the speed work (commit ec10287):

- ``GENERATED``: generated instances (no ``../shared`` needed): olmoe (E = 64, K = 8),
  qwen3_30b_a3b (E = 128) and deepseek_v3 (E = 256) cut to a few layers, and a multi-user olmoe.
- ``REALISTIC``: the real-trace instances of :mod:`tests.realistic` (qwen, olmoe,
  deepseek_v2_lite shape, thousands of distinct patterns per layer); skipped without the traces.

``python -m tests.regression_large`` solves every case and writes ``tests/data/regression_large.npz``
(J in float64 and the packed placements). Run it only when a change is *meant* to change
solutions, and say so in the commit; ``tests/test_regression.py`` then guards the new values.
"""

from __future__ import annotations

import os

import jax
import numpy as np

import slimjax

PATH = os.path.join(os.path.dirname(__file__), "data", "regression_large.npz")

#: (name, model, network, routing, batch, solvers)
GENERATED = (
    ("olmoe_gen", {"name": "olmoe_1b_7b", "layers": 4}, {"servers": 2}, {"tokens": 512}, 2,
     ("successive", "successive-best", "greedy")),
    ("qwen3_gen", {"name": "qwen3_30b_a3b", "layers": 3}, {"servers": 3}, {"tokens": 256}, 2,
     ("successive", "successive-best")),
    ("dsv3_gen", {"name": "deepseek_v3", "layers": 3}, {"servers": 4}, {"tokens": 256}, 1,
     ("successive", "successive-best")),
    ("olmoe_users", {"name": "olmoe_1b_7b", "layers": 3}, {"users": 3, "servers": 2, "multi_user": True},
     {"tokens": 128}, 2, ("successive", "successive-best")),
)

#: (kind of tests.realistic.instance, solvers)
REALISTIC = (
    ("qwen", ("successive", "greedy", "successive-best")),
    ("olmoe", ("successive", "greedy", "successive-best")),
    ("deepseek_v2_lite", ("successive", "greedy", "successive-best")),
)


def generated_batch(model, network, routing, n: int, seed: int = 13) -> slimjax.Instance:
    return slimjax.generate.instances(jax.random.key(seed), n, model=model, network=network, routing=routing)


def realistic_batch(kind: str) -> slimjax.Instance:
    from tests.realistic import instance

    return slimjax.stack([instance(kind)])


def J64(inst, x) -> float:
    """J of one placement in float64 (vectorized NumPy)."""
    lat = np.asarray(inst.latency, np.float64)
    x = np.asarray(x, bool)
    d = np.minimum(np.asarray(inst.fallback, np.float64), np.where(x[None], lat, np.inf).min(axis=1))
    member = np.take_along_axis(d[:, :, None, :], np.asarray(inst.patterns), axis=-1)
    return float((np.asarray(inst.traffic, np.float64)[:, None, None] * np.asarray(inst.weight, np.float64)
                  * member.max(-1)).sum())


def _record_batch(out: dict, name: str, batch, solvers) -> None:
    for s in solvers:
        sol = slimjax.solve_batch(batch, s, progress=False)
        x = np.asarray(sol.placement)
        out[f"{name}/{s}/J"] = np.array([J64(batch[i], x[i]) for i in range(x.shape[0])], np.float64)
        out[f"{name}/{s}/x"] = np.packbits(x.reshape(-1))
        out[f"{name}/{s}/shape"] = np.array(x.shape)
        print(name, s, out[f"{name}/{s}/J"], flush=True)


def record(path: str = PATH, realistic: bool = True) -> dict:
    out: dict = {}
    for name, model, network, routing, n, solvers in GENERATED:
        _record_batch(out, name, generated_batch(model, network, routing, n), solvers)
    if realistic:
        for kind, solvers in REALISTIC:
            _record_batch(out, f"real_{kind}", realistic_batch(kind), solvers)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez_compressed(path, **out)
    return out


if __name__ == "__main__":
    rec = record()
    print(f"wrote {PATH}: {len(rec) // 3} (case, solver) pairs")
