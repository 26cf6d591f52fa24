"""Figures of the experiment app (matplotlib, Agg backend; files only, no windows).

- :func:`latency_per_solver`: J per solver (mean with 95% interval, and the spread of instances);
- :func:`placement_heatmap`: node x layer share of experts cached (mean over the batch);
- :func:`token_cdf`: per-token latency CDF of replayed trace tokens, one curve per solver;
- :func:`sweep_figure`: a metric against a swept parameter, one line per solver (``slimjax-collect``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["latency_per_solver", "placement_heatmap", "run_figures", "sweep_figure", "token_cdf"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from slimjax._io import atomic_write

    path = Path(path)
    try:
        with atomic_write(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        _plt().close(fig)
    return path


_YLABEL = {
    "J": "expected MoE latency per token J",
    "total": "total latency per token",
    "gap_best": "gap to the best method (J / J_best - 1)",
    "gap_opt": "gap to the optimum (J / J_milp - 1)",
    "gain_frac_opt": "share of the optimal gain",
    "seconds": "seconds per instance",
    "p95": "p95 per-token latency (held-out tokens)",
}


def _ci(a: np.ndarray) -> float:
    a = np.asarray(a, np.float64)
    return float(1.96 * a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else 0.0


def latency_per_solver(df: pd.DataFrame, path: Path, metric: str = "J", title: str | None = None) -> Path:
    """Bars of mean ``metric`` per solver with 95% intervals, instances as dots; sorted by mean."""
    plt = _plt()
    order = df.groupby("solver", sort=False)[metric].mean().sort_values().index.tolist()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(order) + 2), 3.6))
    rng = np.random.default_rng(0)
    for i, s in enumerate(order):
        v = df.loc[df["solver"] == s, metric].to_numpy(np.float64)
        ax.bar(i, v.mean(), yerr=_ci(v), color=f"C{i % 10}", alpha=0.75, capsize=4)
        ax.scatter(i + rng.uniform(-0.25, 0.25, len(v)), v, s=4, color="k", alpha=0.25, linewidths=0)
    ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
    lo = df[metric].min()
    hi = df[metric].max()
    if np.isfinite(lo) and lo > 0 and hi > lo:
        ax.set_ylim(max(0.0, lo - 0.15 * (hi - lo)), hi + 0.05 * (hi - lo))
    ax.set_ylabel({"J": "expected MoE latency per token J", "total": "total latency per token"}.get(metric, metric))
    ax.set_title(title or f"{metric} per solver (mean, 95% CI; dots = instances)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def placement_heatmap(placement: np.ndarray, path: Path, title: str = "", users: int = 1) -> Path:
    """Share of each layer's experts cached on each node, averaged over the batch [B, N, L, E].

    The first ``users`` nodes are the users' devices, the rest edge servers.
    """
    plt = _plt()
    x = np.asarray(placement)
    share = x.reshape((-1,) + x.shape[-3:]).mean(axis=(0, 3))  # [N, L]
    N, L = share.shape
    fig, ax = plt.subplots(figsize=(min(14, 2 + 0.25 * L), 1.2 + 0.4 * N))
    im = ax.imshow(share, aspect="auto", cmap="viridis", vmin=0, vmax=max(share.max(), 1e-9), interpolation="nearest")
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("node")
    names = ["device"] if users == 1 else [f"device {u}" for u in range(users)]
    ax.set_yticks(range(N), (names + [f"server {i}" for i in range(1, N - users + 1)])[:N])
    fig.colorbar(im, ax=ax, label="share of the layer's experts cached")
    ax.set_title(title or "placement: node x layer")
    return _save(fig, path)


def token_cdf(token_lat: dict[str, np.ndarray], path: Path, title: str = "") -> Path:
    """Empirical CDF of per-token latency (replayed held-out tokens), one curve per solver."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (s, lat) in enumerate(token_lat.items()):
        v = np.sort(np.asarray(lat, np.float64))
        if v.size == 0:
            continue
        ax.step(
            v,
            np.arange(1, v.size + 1) / v.size,
            where="post",
            label=f"{s} (p95 {np.percentile(v, 95):.3g})",
            color=f"C{i % 10}",
        )
    ax.set_xlabel("per-token MoE latency")
    ax.set_ylabel("CDF")
    ax.axhline(0.95, color="gray", lw=0.8, ls=":")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(title or "per-token latency of held-out tokens (instance 0)")
    return _save(fig, path)


def sweep_figure(df: pd.DataFrame, x: str, y: str, path: Path, logx: bool = False, logy: bool | None = None) -> Path:
    """Mean ``y`` (95% interval) against the swept parameter ``x``, one line per solver."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = df[x]
    numeric = pd.api.types.is_numeric_dtype(xs)
    cats = None if numeric else list(dict.fromkeys(xs.astype(str)))
    for i, (s, g) in enumerate(df.groupby("solver", sort=False)):
        gx = g[x] if numeric else g[x].astype(str)
        st = g.groupby(gx)[y].agg(["mean", "std", "count"])
        if cats is not None:
            st = st.reindex([c for c in cats if c in st.index])
            pos = [cats.index(c) for c in st.index]
        else:
            st = st.sort_index()
            pos = st.index.to_numpy(np.float64)
        ci = 1.96 * st["std"].fillna(0) / np.sqrt(st["count"].clip(lower=1))
        ax.errorbar(pos, st["mean"], yerr=ci, marker="o", ms=4, capsize=3, label=s, color=f"C{i % 10}")
    if cats is not None:
        ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
    if logx and numeric:
        ax.set_xscale("log")
    if numeric:
        vals = np.sort(xs.dropna().unique())
        if len(vals) <= 12:
            ax.set_xticks(vals, [f"{v:g}" for v in vals])
            ax.minorticks_off()
    if logy or (logy is None and y in ("seconds", "ms_per_instance", "batch_seconds")):
        ax.set_yscale("log")
    if y.startswith(("gap_", "used_frac")):
        from matplotlib.ticker import PercentFormatter

        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel(x)
    ax.set_ylabel(_YLABEL.get(y, y))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(f"{y} vs {x} (mean, 95% CI)")
    return _save(fig, path)


def run_figures(
    df: pd.DataFrame,
    sols: dict,
    batch,
    out: Path,
    token_lat: dict | None = None,
    fmt: str = "png",
    heatmap_solver: str | None = None,
) -> dict[str, Path]:
    """The figures of one run; returns ``{name: path}``."""
    out = Path(out)
    figs = {"latency_per_solver": latency_per_solver(df, out / f"latency_per_solver.{fmt}")}
    means = df.groupby("solver")["J"].mean()
    s = heatmap_solver if heatmap_solver in sols else means.idxmin()
    figs["placement_heatmap"] = placement_heatmap(
        sols[s].placement,
        out / f"placement_heatmap.{fmt}",
        title=f"placement of {s}: node x layer (mean over {len(df[df.solver == s])} instances)",
        users=int(batch.shape[0]),
    )
    if token_lat:
        figs["token_cdf"] = token_cdf(token_lat, out / f"token_cdf.{fmt}")
    return figs
