"""The fixed-seed cases of ``tests/test_regression.py``, and the script that records them.

``python -m tests.regression_cases`` solves every case and writes ``tests/data/regression.npz``
(J in float64 by the NumPy reference, and the placements). Run it only when a change is *meant*
to change solutions, and say so in the commit; the test then guards the new values.
"""

from __future__ import annotations

import os

import jax
import numpy as np

import slimjax

PATH = os.path.join(os.path.dirname(__file__), "data", "regression.npz")

#: (name, model, network, routing, batch, solvers)
CASES = (
    ("mixtral", "mixtral_8x7b", None, None, 6, ("successive-best", "successive", "successive-fast")),
    ("olmoe", {"name": "olmoe_1b_7b", "layers": 4}, None, {"tokens": 128}, 2, ("successive-fast",)),
    ("multi_user", {"name": "mixtral_8x7b", "layers": 6}, {"users": 3, "servers": 2, "multi_user": True}, None, 3,
     ("successive-best",)),
)


def batch_of(model, network, routing, n: int, seed: int = 11) -> slimjax.Instance:
    return slimjax.generate.instances(jax.random.key(seed), n, model=model, network=network, routing=routing)


def record(path: str = PATH) -> dict:
    from tests.reference import latency_ref

    out = {}
    for name, model, network, routing, n, solvers in CASES:
        batch = batch_of(model, network, routing, n)
        for s in solvers:
            sol = slimjax.solve_batch(batch, s)
            x = np.asarray(sol.placement)
            out[f"{name}/{s}/J"] = np.array([latency_ref(batch[i], x[i]) for i in range(n)], np.float64)
            out[f"{name}/{s}/x"] = np.packbits(x.reshape(-1))
            out[f"{name}/{s}/shape"] = np.array(x.shape)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez_compressed(path, **out)
    return out


if __name__ == "__main__":
    rec = record()
    print(f"wrote {PATH}: {len(rec) // 3} (case, solver) pairs")
