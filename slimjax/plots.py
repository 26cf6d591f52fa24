"""Figures (matplotlib, Agg backend: files only, no windows). Every function writes one image to
``path`` and returns the path.

Times are taken to be seconds and storage bytes, the units of :mod:`slimjax.generate`; every axis
says its unit. Bars start at zero. Nodes are shown in display order: the users' devices first,
then the servers fastest first (:func:`slimjax.ops.node_speed`), never by raw index.

- :func:`latency_per_solver`: mean J per solver (95% Student-t interval, instances as dots);
- :func:`placement_heatmap`: share of each layer's experts cached per node (mean over a batch),
  with :func:`nodes_by_speed` to average many chunks in display order;
- :func:`expert_placement`: one instance: which expert sits on which node, coloured by how often
  it is activated;
- :func:`layer_contribution`: one instance: each layer's latency split by the node that decides
  it (from :func:`slimjax.explain`), with storage used per node;
- :func:`token_cdf`: per-token latency CDF of replayed held-out tokens, one curve per solver;
- :func:`sweep_figure`: a metric against a swept parameter, one line per solver;
- :func:`run_figures`: the figures of one app run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import ArrayLike, Bool, Float

__all__ = [
    "expert_placement",
    "latency_per_solver",
    "layer_contribution",
    "nodes_by_speed",
    "placement_heatmap",
    "run_figures",
    "sweep_figure",
    "token_cdf",
]

_TIME_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6}
_SIZE_UNITS = {"B": 1.0, "MB": 1e-6, "GB": 1e-9}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    from slimjax._io import atomic_write

    path = Path(path)
    try:
        with atomic_write(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        _plt().close(fig)
    return path


def _time_unit(values, unit: str = "auto") -> tuple[float, str]:
    """(factor, name) to show times given in seconds: ``"auto"`` picks ms below 1 s."""
    if unit != "auto":
        if unit not in _TIME_UNITS:
            raise ValueError(f"time_unit: must be 'auto' or one of {tuple(_TIME_UNITS)}, got {unit!r}")
        return _TIME_UNITS[unit], unit
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    top = float(np.abs(v).max()) if v.size else 1.0
    return (1.0, "s") if top >= 1.0 else (1e3, "ms")


def _size_unit(unit: str) -> float:
    if unit not in _SIZE_UNITS:
        raise ValueError(f"size_unit: must be one of {tuple(_SIZE_UNITS)}, got {unit!r}")
    return _SIZE_UNITS[unit]


def _ci(a: np.ndarray | pd.Series) -> float:
    """Half-width of the 95% Student-t interval of the mean (0 for fewer than two values)."""
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    if len(a) < 2:
        return 0.0
    from scipy import stats

    return float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a)))


#: y labels of the app's metrics; ``{t}`` is replaced by the time unit
_LABEL = {
    "J": "J: expected MoE latency per token ({t})",
    "total": "total latency per token ({t})",
    "J_empty": "J with nothing cached ({t})",
    "p50": "median per-token latency, held-out tokens ({t})",
    "p95": "p95 per-token latency, held-out tokens ({t})",
    "p99": "p99 per-token latency, held-out tokens ({t})",
    "seconds": "solve time per instance ({t})",
    "compile_seconds": "compile time of the call ({t})",
    "gap_best": "gap to the best method, J / J_best − 1 (%)",
    "gap_opt": "gap to the proven optimum, J / J_opt − 1 (%)",
    "gap_lb": "certified gap, J / lower bound − 1 (%)",
    "gain_frac_opt": "share of the optimal gain (%)",
    "used_frac": "storage used (%)",
}
_TIME_METRICS = {"J", "total", "J_empty", "p50", "p95", "p99", "seconds", "compile_seconds"}
_PERCENT_METRICS = {"gap_best", "gap_opt", "gap_lb", "gain_frac_opt", "used_frac"}
#: x labels of common swept parameters
_XLABEL = {
    "network.servers": "edge servers",
    "network.storage_fraction": "edge storage (% of the model's expert bytes)",
    "network.users": "users",
    "batch_size": "instances per batch",
    "model.top_k": "K, experts per token",
    "model.experts": "E, experts per layer",
    "model.layers": "L, MoE layers",
    "routing.tokens": "routed tokens per instance",
    "model": "model preset",
}


def _metric_axis(ax, metric: str, values, time_unit: str = "auto") -> float:
    """Label ``ax``'s y axis for ``metric``; returns the factor to multiply the values by."""
    from matplotlib.ticker import PercentFormatter

    factor, tname = (1.0, "")
    if metric in _TIME_METRICS:
        factor, tname = _time_unit(values, time_unit)
    ax.set_ylabel(_LABEL.get(metric, metric).format(t=tname))
    if metric in _PERCENT_METRICS or metric.startswith("gap_"):
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        if metric not in _LABEL:
            ax.set_ylabel(f"{metric} (%)")
    return factor


def latency_per_solver(
    df: pd.DataFrame, path: str | Path, metric: str = "J", title: str | None = None, *, time_unit: str = "auto"
) -> Path:
    """Bars of the mean ``metric`` per solver (from zero), 95% Student-t intervals, instances as dots.

    Args:
      df: one row per instance × solver with columns ``solver`` and ``metric`` (the app's
        ``results.parquet``).
      path: the image file to write.
      metric: the column to show (``"J"``, ``"total"``, ``"p95"``, ``"gap_best"``, ...).
      title: the figure title (default: what is shown).
      time_unit: ``"auto"`` (ms below 1 s), ``"s"``, ``"ms"`` or ``"us"`` for time metrics.
    """
    plt = _plt()
    order = df.groupby("solver", sort=False)[metric].mean().sort_values().index.tolist()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(order) + 2), 3.6))
    factor = _metric_axis(ax, metric, df[metric].to_numpy(np.float64), time_unit)
    rng = np.random.default_rng(0)
    for i, s in enumerate(order):
        v = df.loc[df["solver"] == s, metric].to_numpy(np.float64) * factor
        ax.bar(i, np.nanmean(v), yerr=_ci(v), color=f"C{i % 10}", alpha=0.75, capsize=4)
        ax.scatter(i + rng.uniform(-0.25, 0.25, len(v)), v, s=4, color="k", alpha=0.25, linewidths=0)
    ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
    ax.set_xlabel("solver (sorted by mean)")
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(0.0, lo), hi)  # bars start at zero
    ax.set_title(title or f"{metric} per solver (mean, 95% CI; dots = instances)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _ordinal(i: int) -> str:
    return {1: "", 2: "2nd ", 3: "3rd "}.get(i, f"{i}th ")


def nodes_by_speed(
    placement: Bool[np.ndarray, "*B N L E"] | Float[np.ndarray, "*B N L E"], speed: Float[np.ndarray, "*B N"],
    users: int = 1,
) -> np.ndarray:
    """Reorder every instance's nodes into display order: the first ``users`` nodes (the devices),
    then the servers fastest first by ``speed`` (traffic-weighted mean latency per node,
    :func:`slimjax.ops.node_speed`).

    Use it to average placements over many chunks (sum the reordered chunks, divide by the count)
    and draw the mean with ``placement_heatmap(mean[None], ..., ordered=True)``.

    Args:
      placement: bool or float [B, N, L, E] (or [N, L, E] with speed [N]).
      speed: [B, N] (or [N]).
      users: how many of the first nodes are devices.

    Returns:
      the placement with the node axis permuted per instance, same dtype and shape.
    """
    from slimjax._explain import node_display_order

    x = np.asarray(placement)
    one = x.ndim == 3
    x = x.reshape((-1,) + x.shape[-3:])
    B, N = x.shape[:2]
    sp = np.asarray(speed, np.float64).reshape(-1, N)
    if sp.shape[0] != B:
        raise ValueError(f"speed: expected [B={B}, N={N}], got {list(np.shape(speed))}")
    order = np.stack([node_display_order(v, users) for v in sp])  # [B, N]
    out = np.take_along_axis(x, order[:, :, None, None], axis=1)
    return out[0] if one else out


def placement_heatmap(
    placement: Bool[np.ndarray, "*B N L E"] | Float[np.ndarray, "*B N L E"],
    path: str | Path,
    title: str = "",
    users: int = 1,
    *,
    batch=None,
    speed: Float[np.ndarray, "*B N"] | None = None,
    ordered: bool = False,
) -> Path:
    """Share of each layer's experts cached on each node, averaged over a batch [B, N, L, E].

    Rows are the users' devices (the first ``users`` nodes), then the servers **fastest first**:
    with ``batch`` (the instances, for :func:`slimjax.ops.node_speed`) or ``speed`` ([B, N]
    traffic-weighted mean latency per node), every instance's servers are sorted by speed
    before averaging (:func:`nodes_by_speed`), so row "fastest server" is the fastest server of
    each instance. ``ordered=True`` says the nodes already are in that order. Otherwise servers
    keep index order, and the axis says so.

    Args:
      placement: bool [B, N, L, E] (or [N, L, E]); floats in [0, 1] (e.g. a mean over many
        instances, shape [1, N, L, E]) work too.
      path: the image file to write.
      title: the figure title.
      users: how many of the first nodes are devices.
      batch: the :class:`~slimjax.Instance` batch the placement belongs to (optional).
      speed: per-instance node speed [B, N] (optional; computed from ``batch`` when omitted).
      ordered: the nodes of ``placement`` are already devices first, then servers fastest first.
    """
    plt = _plt()
    x = np.asarray(placement, np.float64)
    x = x.reshape((-1,) + x.shape[-3:])  # [B, N, L, E]
    B, N, L, _ = x.shape
    if speed is None and batch is not None:
        speed = _batch_speed(batch)
    if speed is not None:
        x = nodes_by_speed(x, speed, users)
    if speed is not None or ordered:
        servers = [f"{_ordinal(i)}fastest server" for i in range(1, N - users + 1)]
        ylabel = "node (devices, then servers fastest first)"
    else:
        servers = [f"server {i}" for i in range(1, N - users + 1)]
        ylabel = "node (index order)"
    share = x.mean(axis=(0, 3)) * 100.0  # [N, L] percent
    fig, ax = plt.subplots(figsize=(min(14, 2.5 + 0.25 * L), 1.4 + 0.42 * N))
    top = _nice_ceiling(float(share.max()))
    im = ax.imshow(share, aspect="auto", cmap="YlGnBu", vmin=0, vmax=top, interpolation="nearest")
    ax.set_xlabel("MoE layer (index)")
    ax.set_ylabel(ylabel)
    names = ["device"] if users == 1 else [f"device {u}" for u in range(users)]
    ax.set_yticks(range(N), (names + servers)[:N])
    if L <= 40:
        ax.set_xticks(range(L), [str(i) if L <= 16 or i % 2 == 0 else "" for i in range(L)])
    fig.colorbar(im, ax=ax, label="experts of the layer cached (%)")
    ax.set_title(title or f"placement: node x layer (mean over {B} instance{'s' if B != 1 else ''})")
    return _save(fig, path)


def _nice_ceiling(v: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k (percent, at most 100) at or above ``v``."""
    if not v > 0:
        return 1.0
    k = 10.0 ** np.floor(np.log10(v))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * k >= v - 1e-12:
            return float(min(100.0, m * k))
    return 100.0


def _batch_speed(batch) -> np.ndarray:
    """node_speed of every instance of a batch (or of one instance) -> [B, N]."""
    lat = np.asarray(batch.latency, np.float64)
    tr = np.asarray(batch.traffic, np.float64)
    lat = lat.reshape((-1,) + lat.shape[-4:])
    tr = tr.reshape((-1,) + tr.shape[-1:])
    from slimjax._explain import _speed

    return np.stack([_speed(a, t) for a, t in zip(lat, tr)])


def expert_placement(
    inst,
    placement,
    path: str | Path,
    title: str | None = None,
    *,
    devices: int | None = None,
    names=None,
) -> Path:
    """One instance: which expert is cached on which node, coloured by activation frequency.

    One panel per node (devices first, then servers fastest first) and a last panel "cloud"
    for the experts no node caches. In every panel a cell (layer, expert) is coloured by the
    share of the layer's tokens that activate that expert when the expert is there, and left
    light grey when it is not: hot experts far from the user stand out.

    Args:
      inst: one :class:`~slimjax.Instance`.
      placement: bool [N, L, E] or an unbatched :class:`~slimjax.Solution`.
      path: the image file to write.
      title: the figure title (default: J and the gain over caching nothing).
      devices: how many of the first nodes are devices (default U).
      names: node names (default ``"device"``, ``"server 1"``, ...).
    """
    from slimjax._explain import explain

    ex = explain(inst, placement, devices=devices, names=names)
    return _expert_panels(ex, path, title)


def _expert_panels(ex, path: str | Path, title: str | None) -> Path:
    plt = _plt()
    x = np.asarray(ex.placement, bool)  # [N, L, E]
    _, L, E = x.shape
    freq = ex.frequency * 100.0  # [L, E] percent
    panels = [(ex.names[n], x[n]) for n in ex.order] + [("cloud", ~x.any(0))]
    vmax = max(float(freq.max()), 1e-9)
    h = 0.55 + min(E, 64) * 0.045
    fig, axes = plt.subplots(len(panels), 1, figsize=(min(14, 3 + 0.22 * L), h * len(panels) + 0.9), sharex=True,
                             squeeze=False)
    cmap = plt.get_cmap("magma_r").with_extremes(bad="#e4e4e4")
    im = None
    for ax, (name, here) in zip(axes[:, 0], panels):
        img = np.where(here, freq, np.nan).T  # [E, L]
        im = ax.imshow(img, aspect="auto", cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest", origin="lower")
        ax.set_ylabel(f"{name}\nexpert id", fontsize=8)
        ax.tick_params(labelsize=7)
        if E <= 16:
            ax.set_yticks(range(E))
    axes[-1, 0].set_xlabel("MoE layer (index)")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="activation frequency (% of the layer's tokens)", shrink=0.8)
    t = title or (f"where each expert is cached (grey: not there; cloud = no copy at the edge)\n"
                  f"J = {_fmt_time(ex.J)} per token, {100 * ex.gain_frac:.1f} % below caching nothing")
    axes[0, 0].set_title(t, fontsize=10)
    return _save(fig, path)


def _fmt_time(seconds: float) -> str:
    return f"{seconds:.3g} s" if abs(seconds) >= 1 else f"{1e3 * seconds:.3g} ms"


def layer_contribution(
    explanation,
    path: str | Path,
    title: str | None = None,
    *,
    time_unit: str = "auto",
    size_unit: str = "GB",
) -> Path:
    """Per-layer latency by the node that decides it, and storage per node, for one instance.

    Left: stacked bars (from zero), one per MoE layer, of the layer's share of J split by the
    place serving the slowest expert of each routing pattern (devices, servers fastest first,
    the cloud); a black outline marks the layer's latency with nothing cached. The bars sum to J.
    Right: storage used and free per node.

    Args:
      explanation: what :func:`slimjax.explain` returned.
      path: the image file to write.
      title: the figure title (default: J and the gain over caching nothing).
      time_unit: ``"auto"`` (ms when J_empty per layer is below 1 s), ``"s"``, ``"ms"``, ``"us"``.
      size_unit: ``"GB"`` (default), ``"MB"`` or ``"B"``; sizes are taken to be bytes.
    """
    plt = _plt()
    ex = explanation
    c = ex.contribution  # [L, places]
    L = len(c)
    f, tname = _time_unit(ex.layers["J_empty"].to_numpy(), time_unit)
    g = _size_unit(size_unit)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(9.0, min(16.0, 5 + 0.28 * L)), 4.2),
                                  gridspec_kw={"width_ratios": [3, 1]})
    colours = _place_colours(list(c.columns))
    bottom = np.zeros(L)
    xs = np.arange(L)
    for place in c.columns:
        v = c[place].to_numpy() * f
        if not np.any(v > 0):
            continue
        ax.bar(xs, v, bottom=bottom, color=colours[place], label=place, width=0.85)
        bottom += v
    empty = ex.layers["J_empty"].to_numpy() * f
    ax.step(np.r_[xs - 0.5, xs[-1] + 0.5], np.r_[empty, empty[-1:]], where="post", color="k", lw=1.0,
            label="nothing cached")
    ax.set_ylim(0, None)
    ax.set_xlim(-0.6, L - 0.4)
    ax.set_xlabel("MoE layer (index)")
    ax.set_ylabel(f"latency per token ({tname})")
    ax.legend(title="slowest expert of the pattern served by", fontsize=7, title_fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.16), ncol=min(6, len(c.columns) + 1), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("latency of each layer, by the node that decides it", fontsize=9)

    nodes = ex.nodes
    ys = np.arange(len(nodes))[::-1]
    used = nodes["used"].to_numpy() * g
    free = np.maximum(nodes["free"].to_numpy(), 0) * g
    ax2.barh(ys, used, color=[colours[n] for n in nodes["name"]], label="used")
    ax2.barh(ys, free, left=used, color="none", edgecolor="0.5", hatch="///", lw=0.5, label="free")
    ax2.set_yticks(ys, nodes["name"].tolist(), fontsize=8)
    ax2.set_xlim(0, None)
    ax2.set_xlabel(f"expert storage ({size_unit})")
    ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    ax2.set_title("storage per node", fontsize=9)
    ax2.grid(axis="x", alpha=0.3)
    fig.suptitle(title or (f"J = {_fmt_time(ex.J)} per token, {100 * ex.gain_frac:.1f} % below "
                           f"{_fmt_time(ex.J_empty)} with nothing cached"), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _place_colours(places: list[str]) -> dict[str, Any]:
    """Devices green, servers blues (fastest darkest), cloud grey: the same in every figure."""
    plt = _plt()
    out: dict[str, Any] = {}
    servers = [p for p in places if p != "cloud" and not p.startswith("device")]
    devs = [p for p in places if p.startswith("device")]
    greens = plt.get_cmap("Greens")
    blues = plt.get_cmap("Blues")
    for i, p in enumerate(devs):
        out[p] = greens(0.75 - 0.4 * i / max(len(devs), 1))
    for i, p in enumerate(servers):
        out[p] = blues(0.9 - 0.6 * i / max(len(servers) - 1, 1))
    out["cloud"] = "#b0b0b0"
    return out


def token_cdf(token_lat: dict[str, Float[ArrayLike, " _t"]], path: str | Path, title: str = "", *, time_unit: str = "auto") -> Path:
    """Empirical CDF of per-token latency (replayed held-out tokens), one curve per solver.

    Args:
      token_lat: ``{solver: per-token latencies [T] in seconds}``.
      path: the image file to write.
      title: the figure title.
      time_unit: ``"auto"`` (ms below 1 s), ``"s"``, ``"ms"`` or ``"us"``.
    """
    plt = _plt()
    allv = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in token_lat.values()] or [np.zeros(0)])
    f, tname = _time_unit(allv, time_unit)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (s, lat) in enumerate(token_lat.items()):
        v = np.sort(np.asarray(lat, np.float64)) * f
        if v.size == 0:
            continue
        ax.step(v, np.arange(1, v.size + 1) / v.size * 100, where="post",
                label=f"{s} (p95 {np.percentile(v, 95):.3g} {tname})", color=f"C{i % 10}")
    ax.set_xlabel(f"per-token MoE latency ({tname})")
    ax.set_ylabel("tokens at or below (%)")
    ax.set_ylim(0, 100)
    ax.axhline(95, color="gray", lw=0.8, ls=":")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(title or "per-token latency of held-out tokens (instance 0)")
    return _save(fig, path)


def sweep_figure(df: pd.DataFrame, x: str, y: str, path: str | Path, logx: bool = False, logy: bool | None = None) -> Path:
    """Mean ``y`` (95% Student-t interval) against the swept parameter ``x``, one line per solver.

    Args:
      df: one row per instance × solver × grid point (``results_all.parquet`` of a multirun).
      x: the swept column (``"network.servers"``, ``"model"``, ...); non-numeric values are
        categories in order of appearance.
      y: the metric column (``"J"``, ``"gap_best"``, ``"seconds"``, ...).
      path: the image file to write.
      logx: a log x axis (numeric ``x`` only).
      logy: a log y axis; None = only for time-per-instance metrics.
    """
    plt = _plt()
    from matplotlib.ticker import PercentFormatter

    fig, ax = plt.subplots(figsize=(7, 4))
    factor = _metric_axis(ax, y, df[y].to_numpy(np.float64))
    xs = df[x]
    numeric = pd.api.types.is_numeric_dtype(xs)
    cats = None if numeric else list(dict.fromkeys(xs.astype(str)))
    for i, (s, g) in enumerate(df.groupby("solver", sort=False)):
        gx = g[x] if numeric else g[x].astype(str)
        vals = g[y].astype(np.float64) * factor
        st = vals.groupby(gx).agg(["mean", "count"])
        st["ci"] = vals.groupby(gx).agg(_ci)
        if cats is not None:
            st = st.reindex([c for c in cats if c in st.index])
            pos = [cats.index(c) for c in st.index]
        else:
            st = st.sort_index()
            pos = st.index.to_numpy(np.float64)
        ax.errorbar(pos, st["mean"], yerr=st["ci"], marker="o", ms=4, capsize=3, label=s, color=f"C{i % 10}")
    if cats is not None:
        ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right")
    if logx and numeric:
        ax.set_xscale("log")
    if numeric:
        vals = np.sort(xs.dropna().unique())
        if len(vals) <= 12:
            ax.set_xticks(vals, [f"{v:g}" for v in vals])
            ax.minorticks_off()
    if logy or (logy is None and y in ("seconds", "ms_per_instance", "batch_seconds", "compile_seconds")):
        ax.set_yscale("log")
    if x == "network.storage_fraction" and numeric:
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel(_XLABEL.get(x, x))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(f"{y} vs {_XLABEL.get(x, x)} (mean, 95% CI)")
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
    """The figures of one app run; returns ``{name: path}``.

    ``latency_per_solver`` (all solvers), ``placement_heatmap`` (the solver ``heatmap_solver``,
    default the one with the lowest mean J, over the batch), ``expert_placement`` and
    ``layer_contribution`` (that solver on instance 0), and ``token_cdf`` when ``token_lat``
    (``{solver: per-token latencies}``) is given.

    Args:
      df: the run's rows (one per instance × solver, columns ``solver`` and ``J``).
      sols: ``{solver: batched Solution}``.
      batch: the solved :class:`~slimjax.Instance` batch.
      out: the folder to write to.
      token_lat: per-token latencies of replayed held-out tokens (optional).
      fmt: the image format (``"png"``, ``"svg"``, ``"pdf"``).
      heatmap_solver: the solver whose placement the placement figures show.
    """
    from slimjax._explain import explain

    out = Path(out)
    figs = {"latency_per_solver": latency_per_solver(df, out / f"latency_per_solver.{fmt}")}
    means = df.groupby("solver")["J"].mean()
    s = heatmap_solver if heatmap_solver in sols else means.idxmin()
    users = int(batch.shape[0])
    figs["placement_heatmap"] = placement_heatmap(
        sols[s].placement,
        out / f"placement_heatmap.{fmt}",
        title=f"placement of {s}: node x layer (mean over {len(df[df.solver == s])} instances)",
        users=users,
        batch=batch,
    )
    ok = np.asarray(sols[s].ok).reshape(-1)
    if ok.size and ok[0]:
        ex = explain(batch[0], np.asarray(sols[s].placement)[0])
        figs["expert_placement"] = _expert_panels(
            ex, out / f"expert_placement.{fmt}",
            f"{s}, instance 0: where each expert is cached (grey: not there; cloud = no copy at the edge)\n"
            f"J = {_fmt_time(ex.J)} per token, {100 * ex.gain_frac:.1f} % below caching nothing")
        figs["layer_contribution"] = layer_contribution(ex, out / f"layer_contribution.{fmt}")
    if token_lat:
        figs["token_cdf"] = token_cdf(token_lat, out / f"token_cdf.{fmt}")
    return figs
