"""A sweep read back from Parquet into pandas: latency against the number of edge servers.

    python examples/sweep_to_pandas.py                 # runs a small grid with the `slimjax` app first
    python examples/sweep_to_pandas.py multirun/<sweep> # or reads a finished multirun directory

The grid (2 points x 8 small instances x 2 solvers) takes under a minute on 2 CPU cores. Every grid point writes its
rows to ``<sweep>/<job>/results.parquet`` (one row per instance x solver); a finished multirun
also merges them into ``<sweep>/results_all.parquet``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

GRID = [
    "-m",
    "network.servers=1,4",
    "batch_size=8",
    "model.layers=4",
    "routing.tokens=64",
    "solvers=[successive,popularity]",
    "output.summary=false",
    "paths.jax_cache=null",
]


def run_grid(sweep: Path) -> Path:
    """Run the grid with the `slimjax` command (the one installed next to this Python)."""
    exe = shutil.which("slimjax", path=str(Path(sys.executable).parent)) or shutil.which("slimjax")
    if exe is None:
        raise SystemExit("the `slimjax` command was not found: pip install -e . first")
    subprocess.run([exe, *GRID, f"hydra.sweep.dir={sweep}"], check=True)
    return sweep


def read(sweep: Path) -> pd.DataFrame:
    """Every row of a multirun: the merged table, or the jobs' tables when it was not merged."""
    merged = sweep / "results_all.parquet"
    if merged.is_file():
        return pd.read_parquet(merged)
    parts = sorted(sweep.glob("*/results.parquet"))
    if not parts:
        raise SystemExit(f"no results.parquet under {sweep}")
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def summarize(df: pd.DataFrame, x: str = "network.servers") -> pd.DataFrame:
    """Mean J (s per token) with a 95 % Student-t interval, and the mean gap to the best solver."""
    def ci(v: pd.Series) -> float:
        return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0

    g = df.groupby([x, "solver"])
    out = pd.DataFrame({"n": g["J"].size(), "J_mean": g["J"].mean(), "J_ci95": g["J"].agg(ci),
                        "gap_best": g["gap_best"].mean()})
    return out.reset_index().sort_values([x, "J_mean"])


def main(sweep: Path | None = None, figure: Path | None = None) -> pd.DataFrame:
    tmp = None
    if sweep is None:
        tmp = tempfile.mkdtemp(prefix="slimjax-sweep-")
        sweep = run_grid(Path(tmp) / "servers")
    df = read(sweep)
    print(f"{len(df)} rows, columns: {', '.join(df.columns[:12])}, ...")
    table = summarize(df)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if figure is not None:
        from slimjax import plots

        print(plots.sweep_figure(df, x="network.servers", y="J", path=figure))
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return table


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", nargs="?", type=Path, default=None, help="a finished multirun directory")
    ap.add_argument("--figure", type=Path, default=None, help="also draw J against the servers here (png)")
    a = ap.parse_args()
    main(a.sweep, a.figure)
