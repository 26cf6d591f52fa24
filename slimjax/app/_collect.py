"""Merging the runs of a multirun (``slimjax-collect``, and the Hydra callback after a multirun).

Every complete run under a folder (whatever launcher wrote it: basic, joblib, submitit) is
streamed into ``results_all.parquet`` one record batch at a time, with a ``run`` column and the
columns of all runs (missing ones null); the swept parameters are the config columns whose
value differs between runs, and the summary is computed from the merged file by
:func:`~slimjax.app.summarize_dataset`, so a sweep larger than memory merges too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from hydra.experimental.callback import Callback

from slimjax._io import atomic_write
from slimjax.app._hash import MARKER
from slimjax.app._results import RESULTS, RESULTS_DIR, results_dataset, write_csv
from slimjax.app._summary import markdown_table, print_summary, summarize_dataset

__all__ = ["MERGED", "CollectCallback", "collect", "find_runs", "varying_columns"]

log = logging.getLogger("slimjax")

MERGED = "results_all.parquet"
#: result columns that are measurements, not config fields (never "swept")
_MEASURED = {
    "solver", "instance", "chunk", "run", "J", "total", "J_empty", "used", "used_frac", "cached", "seconds",
    "batch_seconds", "compile_seconds", "status", "ref_status", "gap_lb", "gap_best", "gap_opt", "gain_frac_best",
    "gain_frac_opt", "p50", "p95", "p99", "replay_mean", "lower_bound", "bound_status", "bound_seconds",
    "bound_compile_seconds",
}


def find_runs(root: Path | str) -> list[Path]:
    """Run directories under ``root`` holding complete results (sorted)."""
    root = Path(root)
    found = {p.parent for p in root.rglob(MARKER)}
    return sorted(d for d in found if (d / RESULTS).is_file() or (d / RESULTS_DIR).is_dir())


def varying_columns(df: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """Config columns whose value differs between runs (the swept parameters).

    ``df`` needs a ``run`` column; one row per run is enough.
    """
    skip = set(exclude) | _MEASURED
    cols = []
    for c in df.columns:
        if c in skip or c.startswith("info."):
            continue
        try:
            if df.groupby("run")[c].first().nunique(dropna=False) > 1:
                cols.append(c)
        except TypeError:
            continue
    return cols


def _merge(root: Path, runs: list[Path], dest: Path) -> pd.DataFrame:
    """Stream every run's rows into ``dest``; returns the first row of each run (for the swept columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sets = [(str(r.relative_to(root)) if r != root else ".", results_dataset(r)) for r in runs]
    schema = pa.unify_schemas([d.schema for _, d in sets], promote_options="permissive")
    schema = pa.schema([pa.field("run", pa.string())] + [f for f in schema if f.name != "run"])
    heads = []
    with atomic_write(dest) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for name, d in sets:
            first = True
            for rb in d.to_batches():
                if rb.num_rows == 0:
                    continue
                cols = {"run": pa.array([name] * rb.num_rows, pa.string())}
                for f in schema:
                    if f.name == "run":
                        continue
                    i = rb.schema.get_field_index(f.name)
                    col = rb.column(i) if i >= 0 else pa.nulls(rb.num_rows, f.type)
                    cols[f.name] = col.cast(f.type) if col.type != f.type else col
                batch = pa.RecordBatch.from_pydict(cols, schema=schema)
                writer.write_batch(batch)
                if first:
                    heads.append(batch.slice(0, 1).to_pandas())
                    first = False
    return pd.concat(heads, ignore_index=True)


def collect(
    root: Path | str,
    *,
    x: str | None = None,
    y: str = "J",
    logx: bool = False,
    out: Path | str | None = None,
    fmt: str = "png",
    console=None,
    quiet: bool = False,
    rows: bool = True,
) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """Merge every complete run under ``root`` into ``root/results_all.parquet`` and summarize.

    Args:
      root: a multirun directory (or any folder holding run directories).
      x: a swept parameter (a result column, e.g. ``network.servers``) for the sweep figure.
      y: the metric on the figure's y axis.
      out: also write ``results.csv`` (summary), ``table.md`` and the figures here.
      rows: also return the merged rows as a DataFrame (False: only the summary, for sweeps
        larger than memory).

    Returns:
      ``(merged rows or None, summary by solver and swept parameters)``.

    Raises:
      ValueError: when ``root`` holds no complete run, or ``x``/``y`` is not a column.
    """
    import pyarrow.dataset as ds

    from slimjax import plots

    root = Path(root)
    runs = find_runs(root)
    if not runs:
        raise ValueError(f"collect: no complete runs (with {RESULTS} or {RESULTS_DIR}/, and {MARKER}) under {root}")
    heads = _merge(root, runs, root / MERGED)
    merged = ds.dataset(root / MERGED, format="parquet")
    columns = merged.schema.names
    if x is not None:
        for col, what in ((x, "x"), (y, "y")):
            if col not in columns:
                raise ValueError(f"collect: {what}={col!r} is not a result column; columns: {sorted(columns)}")
    swept = varying_columns(heads)
    summary = summarize_dataset(merged, by=swept + ["solver"])
    write_csv(summary, root / "summary_all.csv")
    nrows = merged.count_rows()
    if not quiet:
        print_summary(summary, f"slimjax-collect: {len(runs)} runs, {nrows} rows, swept {swept or 'nothing'}", console)
        from slimjax.app._progress import make_console

        (console or make_console()).print(f"merged: {root / MERGED}", soft_wrap=True, markup=False)
    dests = [root]
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(summary, out / "results.csv")
        with atomic_write(out / "table.md") as tmp:
            tmp.write_text(markdown_table(summary))
        dests.append(out)
    if x is not None:
        fig_df = merged.to_table(columns=list(dict.fromkeys(["solver", x, y]))).to_pandas()
        for d in dests:
            plots.sweep_figure(fig_df, x=x, y=y, path=d / f"sweep_{_safe(y)}_vs_{_safe(x)}.{fmt}", logx=logx)
    df = merged.to_table().to_pandas() if rows else None
    return df, summary


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


class CollectCallback(Callback):
    """Hydra callback: merge a finished multirun (``collect``), with the ``collect.*`` settings."""

    def on_multirun_end(self, config, **kw):
        root = Path(str(config.hydra.sweep.dir))
        c = config.get("collect") or {}
        try:
            collect(root, x=c.get("x"), y=c.get("y") or "J", logx=bool(c.get("logx", False)), out=c.get("out"),
                    rows=False)
        except ValueError as e:  # e.g. every job failed: the jobs' own errors matter more
            log.warning("collect after multirun: %s", e)
