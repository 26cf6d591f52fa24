"""Summary tables: mean J with a Student-t 95% interval per solver (and swept parameter).

One implementation for a DataFrame and for a Parquet dataset too large to load: the table is
built from per-group partial aggregates (count, mean and sum of squared deviations of J, sums
and counts of the other columns), which combine exactly across record batches (Chan et al.'s
pairwise update), so :func:`summarize_dataset` reads one record batch at a time and gives what
:func:`summarize` gives on the whole table. pyarrow's dataset scanner does the reading: it is
already a dependency and the aggregates are simple, so DuckDB would add a dependency for nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

__all__ = ["markdown_table", "print_summary", "summarize", "summarize_dataset", "summary_caption"]

#: columns averaged over the instances of a group
MEANS = ("gap_best", "gain_frac_best", "gap_opt", "gain_frac_opt", "gap_lb", "p95", "seconds")

_DISPLAY = {  # summary column -> (header, format)
    "n": ("n", "{:d}"),
    "J_mean": ("J mean", "{:.5g}"),
    "J_ci95": ("±95%", "{:.2g}"),
    "J_rel": ("vs best", "{:.4f}"),
    "gap_best": ("gap best", "{:.2%}"),
    "gap_opt": ("gap opt", "{:.2%}"),
    "n_opt": ("n opt", "{:d}"),
    "gain_frac_opt": ("gain/opt", "{:.4f}"),
    "gap_lb": ("gap lb", "{:.2%}"),
    "p95": ("p95", "{:.4g}"),
    "ms_per_instance": ("ms/inst", "{:.3g}"),
    "compile_s": ("compile s", "{:.3g}"),
}


def _partials(df: pd.DataFrame, by: list[str]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Per group: ``n``, ``mean``, ``m2`` of J and ``<c>:sum``/``<c>:cnt`` of the other columns; and
    the compile seconds per (group, chunk)."""
    g = df.groupby(by, sort=False, dropna=False)
    J = df["J"].astype(np.float64)
    out = pd.DataFrame({"n": g["J"].count(), "mean": g["J"].mean()})
    dev = (J - g["J"].transform("mean")) ** 2
    out["m2"] = dev.groupby([df[b] for b in by], sort=False, dropna=False).sum()
    for c in MEANS:
        if c in df:
            out[f"{c}:sum"] = g[c].sum()
            out[f"{c}:cnt"] = g[c].count()
    comp = None
    if "compile_seconds" in df:
        keys = by + [c for c in ("run", "chunk") if c in df and c not in by]
        comp = df.groupby(keys, sort=False, dropna=False)["compile_seconds"].first().to_frame()
    return out, comp


def _combine(parts: list[pd.DataFrame], by: list[str]) -> pd.DataFrame:
    """Merge partial aggregates of disjoint row sets (exact for n, sums; Chan's update for m2)."""
    cat = pd.concat(parts)
    level = list(range(len(by)))
    g = cat.groupby(level=level, sort=False, dropna=False)
    n = g["n"].sum()
    nmean = (cat["n"] * cat["mean"].fillna(0.0)).groupby(level=level, sort=False, dropna=False).sum()
    mean = nmean / n.where(n > 0)
    shift = cat["n"] * (cat["mean"] - mean.reindex(cat.index)) ** 2
    m2 = (cat["m2"] + shift.fillna(0.0)).groupby(level=level, sort=False, dropna=False).sum()
    out = pd.DataFrame({"n": n, "mean": mean, "m2": m2})
    for c in cat.columns:
        if ":" in c:
            out[c] = g[c].sum()
    return out


def _finish(part: pd.DataFrame, comp: pd.DataFrame | None, by: list[str]) -> pd.DataFrame:
    from scipy import stats

    out = pd.DataFrame(index=part.index)
    out["n"] = part["n"].astype(np.int64)
    out["J_mean"] = part["mean"]
    std = np.sqrt(part["m2"] / (part["n"] - 1).where(part["n"] > 1))
    tq = np.where(out["n"] > 1, stats.t.ppf(0.975, np.maximum(out["n"] - 1, 1)), np.nan)
    out["J_ci95"] = tq * std / np.sqrt(out["n"].clip(lower=1))
    out = out.reset_index()
    rest = [b for b in by if b != "solver"]
    best = out.groupby(rest, sort=False, dropna=False)["J_mean"].transform("min") if rest else out["J_mean"].min()
    out["J_rel"] = out["J_mean"] / best
    flat = part.reset_index()
    for c in MEANS:
        if f"{c}:sum" in flat:
            cnt = flat[f"{c}:cnt"]
            out[c] = (flat[f"{c}:sum"] / cnt.where(cnt > 0)).to_numpy()
            if c == "gap_opt":
                out["n_opt"] = cnt.astype(np.int64).to_numpy()
    if comp is not None:
        total = comp.groupby(level=list(range(len(by))), sort=False, dropna=False)["compile_seconds"].sum()
        out["compile_s"] = total.reindex(part.index).to_numpy()
    if "seconds" in out:
        out["ms_per_instance"] = 1e3 * out.pop("seconds")
    return out


def summarize(df: pd.DataFrame, by: Iterable[str] = ("solver",)) -> pd.DataFrame:
    """Mean and 95% interval of J per group, relative to the best group (by mean J).

    Columns: n, J_mean, J_ci95 (half width of Student's t interval over the instances, which are
    independent draws), J_rel (mean J / best mean J), gap_best (mean), gap_opt and gain_frac_opt
    (means over the ``n_opt`` instances with a proven optimum), gap_lb (mean certified gap to the
    best lower bound), ms_per_instance (solve time without compilation), compile_s (compilation
    of the run: the sum over its chunks), p95 (traces).
    """
    by = list(by)
    part, comp = _partials(df, by)
    return _finish(part, comp, by)


def summarize_dataset(dataset, by: Iterable[str] = ("solver",), batch_rows: int = 1 << 16) -> pd.DataFrame:
    """:func:`summarize` of a ``pyarrow.dataset.Dataset`` (or anything with ``to_batches``), one
    record batch of ``batch_rows`` rows at a time; memory is one batch plus one row per group."""
    by = list(by)
    names = set(dataset.schema.names)
    cols = [c for c in dict.fromkeys(by + ["J", "run", "chunk", "compile_seconds", *MEANS]) if c in names]
    parts, comps = [], []
    for rb in dataset.to_batches(columns=cols, batch_size=batch_rows):
        if rb.num_rows == 0:
            continue
        part, comp = _partials(rb.to_pandas(), by)
        parts.append(part)
        if comp is not None:
            comps.append(comp)
        if len(parts) >= 64:  # keep the partials small on a long scan
            parts = [_combine(parts, by)]
    if not parts:
        raise ValueError("summary: the results hold no rows")
    comp = None
    if comps:
        cat = pd.concat(comps)
        comp = cat.groupby(level=list(range(cat.index.nlevels)), sort=False, dropna=False).first()
    return _finish(_combine(parts, by), comp, by)


def _summary_cells(row, keys, vals) -> list[str]:
    """One summary row as display strings: the key columns, then the formatted value columns."""
    cells = [str(row[c]) for c in keys]
    for c in vals:
        v = row[c]
        try:
            if not np.isfinite(float(v)):
                cells.append("–")  # nothing to show (e.g. no proven optimum)
            else:
                cells.append(_DISPLAY[c][1].format(int(v) if c in ("n", "n_opt") else float(v)))
        except (TypeError, ValueError):
            cells.append(str(v))
    return cells


def summary_caption(summary: pd.DataFrame) -> str:
    """What the summary's gap and time columns mean (printed under the table, and in markdown)."""
    notes = []
    if "gap_opt" in summary:
        notes.append("gap opt = J / proven optimum - 1, over the 'n opt' instances with one")
    if "gap_lb" in summary:
        notes.append("gap lb = J / best certified lower bound - 1 (slimjax.lower_bound and the exact solvers' bounds; "
                     "the bound's time is in the bound_seconds column, not in ms/inst)")
    if "ms_per_instance" in summary:
        notes.append("ms/inst = solve time without compilation; compile s = compilation of the run")
    return "; ".join(notes)


def _columns(summary: pd.DataFrame) -> tuple[list[str], list[str]]:
    keys = [c for c in summary.columns if c not in _DISPLAY and c != "gain_frac_best"]
    return keys, [c for c in _DISPLAY if c in summary.columns]


def print_summary(summary: pd.DataFrame, title: str, console=None) -> None:
    """A rich table of :func:`summarize`'s output (the best row per group in bold green)."""
    from rich.table import Table

    from slimjax.app._progress import make_console

    console = console or make_console()
    t = Table(title=title, title_justify="left", caption=summary_caption(summary), caption_justify="left")
    keys, vals = _columns(summary)
    for c in keys:
        t.add_column(c, justify="left")
    for c in vals:
        t.add_column(_DISPLAY[c][0], justify="right")
    for _, row in summary.iterrows():
        best = bool(np.isclose(float(row["J_rel"]), 1.0))
        t.add_row(*_summary_cells(row, keys, vals), style="bold green" if best else None)
    console.print(t)


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (the columns of the printed one)."""
    keys, vals = _columns(summary)
    head = keys + [_DISPLAY[c][0] for c in vals]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(keys) + ["---:"] * len(vals)) + "|"]
    for _, row in summary.iterrows():
        lines.append("| " + " | ".join(_summary_cells(row, keys, vals)) + " |")
    caption = summary_caption(summary)
    return "\n".join(lines) + "\n" + (f"\n{caption}.\n" if caption else "")
