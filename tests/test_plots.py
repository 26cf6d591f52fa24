"""slimjax.plots: the figures say what they show (units, bars from zero, nodes by role and speed)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

import slimjax
from slimjax import plots


@pytest.fixture
def figures(monkeypatch):
    """Capture every figure a plot function saves (the file is still written)."""
    seen = []
    save = plots._save

    def capture(fig, path):
        seen.append(fig)
        fig.canvas.draw()  # lay out (tick labels) before the figure is closed
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", capture)
    return seen


@pytest.fixture(scope="module")
def run():
    batch = slimjax.generate.instances(jax.random.key(1), 4, model={"name": "mixtral_8x7b", "layers": 6},
                                       routing={"tokens": 32}, network={"storage_fraction": 0.3})
    sols = {s: slimjax.solve_batch(batch, s) for s in ("greedy", "popularity")}
    df = pd.DataFrame([{"solver": s, "J": float(J), "gap_best": 0.0} for s, r in sols.items() for J in np.asarray(r.objective)])
    return batch, sols, df


def _png(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    return path


def test_latency_per_solver_bars_from_zero_with_units(run, figures, tmp_path):
    df = run[2]
    _png(plots.latency_per_solver(df, tmp_path / "lat.png"))
    ax = figures[-1].axes[0]
    assert ax.get_ylim()[0] == 0.0
    assert "(s)" in ax.get_ylabel() or "(ms)" in ax.get_ylabel()
    heights = sorted(p.get_height() for p in ax.patches)
    means = df.groupby("solver")["J"].mean().to_numpy()
    factor = 1e3 if "(ms)" in ax.get_ylabel() else 1.0
    np.testing.assert_allclose(heights, np.sort(means) * factor, rtol=1e-9)
    plots.latency_per_solver(df, tmp_path / "gap.png", metric="gap_best")
    assert "%" in figures[-1].axes[0].get_ylabel()


def test_heatmap_orders_servers_by_speed(figures, tmp_path):
    """Servers fastest first per instance: a placement on each instance's fastest server lands in one row."""
    batch = slimjax.generate.instances(jax.random.key(2), 3, model={"name": "mixtral_8x7b", "layers": 4},
                                       routing={"tokens": 16})
    speed = np.asarray(jax.vmap(slimjax.ops.node_speed)(batch.latency, batch.traffic))  # [B, N]
    fastest = 1 + speed[:, 1:].argmin(-1)
    x = np.zeros((3,) + batch.latency.shape[-3:], bool)
    x[np.arange(3), fastest] = True
    plots.placement_heatmap(x, tmp_path / "h.png", batch=batch)
    ax = figures[-1].axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[:2] == ["device", "fastest server"] and labels[-1].endswith("fastest server")
    img = ax.images[0].get_array()
    assert np.allclose(img[1], 100.0) and np.allclose(np.delete(np.asarray(img), 1, axis=0), 0.0)
    assert "%" in figures[-1].axes[1].get_ylabel()  # the colour bar
    assert "layer" in ax.get_xlabel()
    # explicit speeds: server 3 fastest in instance 0, server 1 in 1, server 2 in 2
    sp = np.array([[0.0, 3, 2, 1, 4], [0.0, 1, 2, 3, 4], [0.0, 2, 1, 3, 4]])
    y = np.zeros_like(x)
    y[np.arange(3), [3, 1, 2]] = True
    plots.placement_heatmap(y, tmp_path / "h1.png", speed=sp)
    img = np.asarray(figures[-1].axes[0].images[0].get_array())
    assert np.allclose(img[1], 100.0) and np.allclose(img[2:], 0.0)
    # averaged in chunks (the app's streamed runs): reorder each chunk, sum, draw the mean
    mean = (plots.nodes_by_speed(y[:2], sp[:2]).sum(0) + plots.nodes_by_speed(y[2:], sp[2:]).sum(0)) / 3
    plots.placement_heatmap(mean[None], tmp_path / "h3.png", ordered=True)
    np.testing.assert_allclose(np.asarray(figures[-1].axes[0].images[0].get_array()), img)
    assert "fastest first" in figures[-1].axes[0].get_ylabel()
    plots.placement_heatmap(x, tmp_path / "h2.png")  # without speeds: index order, and it says so
    assert "index order" in figures[-1].axes[0].get_ylabel()


def test_layer_contribution_sums_to_J(run, figures, tmp_path):
    batch, sols, _ = run
    ex = slimjax.explain(batch[0], sols["greedy"].placement[0])
    _png(plots.layer_contribution(ex, tmp_path / "c.png"))
    ax, ax2 = figures[-1].axes[:2]
    factor = 1e3 if "(ms)" in ax.get_ylabel() else 1.0
    assert ax.get_ylim()[0] == 0.0 and ax2.get_xlim()[0] == 0.0
    tops = {}
    for p in ax.patches:
        x = round(p.get_x() + p.get_width() / 2)
        tops[x] = tops.get(x, 0.0) + p.get_height()
    L = len(ex.layers)
    np.testing.assert_allclose([tops.get(l, 0.0) for l in range(L)], ex.layers["J"].to_numpy() * factor, rtol=1e-9)
    assert "(GB)" in ax2.get_xlabel()
    rows = dict(zip(ax2.get_yticks(), [t.get_text() for t in ax2.get_yticklabels()]))
    assert [rows[y] for y in sorted(rows, reverse=True)] == ex.nodes["name"].tolist()  # top to bottom: device first


def test_expert_placement_panels(run, figures, tmp_path):
    batch, sols, _ = run
    x = np.asarray(sols["greedy"].placement[0])
    _png(plots.expert_placement(batch[0], x, tmp_path / "e.png"))
    fig = figures[-1]
    panels = [a for a in fig.axes if a.images and "expert" in a.get_ylabel()]
    N = x.shape[0]
    assert len(panels) == N + 1
    ex = slimjax.explain(batch[0], x)
    for a, n in zip(panels, ex.order):
        shown = ~np.ma.getmaskarray(a.images[0].get_array()) & np.isfinite(a.images[0].get_array().filled(np.nan))
        assert (shown.T == x[n]).all()  # coloured exactly where node n holds the expert
    cloud = panels[-1].images[0].get_array()
    assert (np.isfinite(cloud.filled(np.nan)).T == ~x.any(0)).all()
    assert any("activation frequency" in a.get_ylabel() for a in fig.axes)


def test_token_cdf_and_sweep_units(figures, tmp_path):
    lat = {"a": np.linspace(0.01, 0.2, 50), "b": np.linspace(0.02, 0.3, 50)}
    _png(plots.token_cdf(lat, tmp_path / "cdf.png"))
    ax = figures[-1].axes[0]
    assert "(ms)" in ax.get_xlabel() and "%" in ax.get_ylabel() and ax.get_ylim() == (0.0, 100.0)
    df = pd.DataFrame({"solver": ["a", "b"] * 6, "network.servers": [1, 1, 2, 2, 4, 4] * 2,
                       "J": np.linspace(1.0, 2.0, 12), "gap_best": np.linspace(0, 0.1, 12)})
    plots.sweep_figure(df, x="network.servers", y="J", path=tmp_path / "s.png")
    ax = figures[-1].axes[0]
    assert ax.get_xlabel() == "edge servers" and "(s)" in ax.get_ylabel()
    plots.sweep_figure(df, x="network.servers", y="gap_best", path=tmp_path / "g.png")
    assert "%" in figures[-1].axes[0].get_ylabel()


def test_run_figures_writes_every_figure(run, tmp_path):
    batch, sols, df = run
    figs = plots.run_figures(df, sols, batch, tmp_path, token_lat={"greedy": np.ones(10) * 0.1})
    assert set(figs) == {"latency_per_solver", "placement_heatmap", "expert_placement", "layer_contribution", "token_cdf"}
    for p in figs.values():
        _png(p)


def test_units_are_validated(run, tmp_path):
    batch, sols, df = run
    with pytest.raises(ValueError, match="time_unit"):
        plots.latency_per_solver(df, tmp_path / "x.png", time_unit="hours")
    ex = slimjax.explain(batch[0], sols["greedy"].placement[0])
    with pytest.raises(ValueError, match="size_unit"):
        plots.layer_contribution(ex, tmp_path / "y.png", size_unit="TB")
