"""Draw the pictures of the handbook's "Explaining a placement" page into docs/img/.

    python scripts/docs_figures.py            # about a minute on 2 CPU cores

The same calls as the page's code blocks, on 16 default mixtral_8x7b instances (seed 0).
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
import _bootstrap  # noqa: E402  (a fresh clone: set up .venv and re-run there)

_bootstrap.ensure('docs')

from pathlib import Path

import jax
import numpy as np
import pandas as pd

import slimjax
from slimjax import plots

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    batch = slimjax.generate.instances(jax.random.key(0), 16, model="mixtral_8x7b")
    sol = slimjax.solve_batch(batch, "successive")
    ex = slimjax.explain(batch[0], sol.placement[0])
    plots.layer_contribution(ex, OUT / "layer_contribution.png")
    plots.expert_placement(batch[0], sol.placement[0], OUT / "expert_placement.png")
    plots.placement_heatmap(sol.placement, OUT / "placement_heatmap.png", batch=batch)
    sols = {"successive": sol, "popularity": slimjax.solve_batch(batch, "popularity"),
            "random": slimjax.solve_batch(batch, "random")}
    df = pd.DataFrame([{"solver": s, "J": float(J)} for s, r in sols.items() for J in np.asarray(r.objective)])
    plots.latency_per_solver(df, OUT / "latency_per_solver.png")
    tokens = np.asarray(batch.patterns[0, 0]).transpose(1, 0, 2)
    plots.token_cdf({s: slimjax.replay(batch[0], r.placement[0], tokens) for s, r in sols.items()},
                    OUT / "token_cdf.png", title="per-token latency of instance 0's tokens")
    for p in sorted(OUT.glob("*.png")):
        print(p)


if __name__ == "__main__":
    main()
