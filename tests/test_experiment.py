"""``slimjax.app.run`` end to end on tiny configs: outputs, resume, streaming, collect, loggers, traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import slimjax
from slimjax import app
from slimjax.app import CONF_DIR

TINY = [
    "model.layers=2",
    "model.experts=4",
    "model.top_k=2",
    "routing.tokens=8",
    "network.servers=1",
    "network.storage_fraction=0.4",
    "batch_size=3",
    "output.summary=false",
]
PREFERRED = ["greedy", "popularity", "random", "layer-uniform", "successive", "polish", "relaxed"]


def pick(n: int = 2) -> list[str]:
    """The n cheapest solvers."""
    return PREFERRED[:n]


def make(tmp: Path, *overrides: str, solvers: list[str] | None = None):
    solvers = solvers or pick()
    tiny = [o for o in TINY if not ("routing=trace" in overrides and o.startswith("routing."))]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(
                "config",
                overrides=tiny
                + [f"paths.output_dir={tmp}", f"solvers=[{','.join(solvers)}]", "paths.jax_cache=null"]
                + list(overrides),
            )
    finally:
        GlobalHydra.instance().clear()


def test_run_end_to_end(tmp_path):
    solvers = pick(3)
    cfg = make(tmp_path, solvers=solvers)
    res = app.run(cfg)
    assert res["skipped"] is False and set(res["summary"]) == set(solvers)
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert len(df) == 3 * len(solvers)
    assert sorted(df.solver.unique()) == sorted(solvers)
    for c in (
        "J",
        "total",
        "used",
        "seconds",
        "gap_best",
        "J_empty",
        "model",
        "network",
        "routing",
        "network.servers",
        "seed",
        "N",
        "L",
        "E",
        "K",
    ):
        assert c in df.columns, c
    assert (df.L == 2).all() and (df.E == 4).all() and (df.N == 2).all() and (df.model == "mixtral_8x7b").all()
    # the best method on each instance has gap 0, others >= 0; caching never hurts
    assert np.allclose(df.groupby("instance").gap_best.min(), 0.0, atol=1e-12)
    assert (df.gap_best >= -1e-9).all()
    assert (df.J <= df.J_empty * (1 + 1e-5)).all()
    assert np.isfinite(df[["J", "total", "used", "seconds"]].to_numpy()).all()
    for name in (
        "results.parquet",
        "summary.csv",
        "config.yaml",
        "latency_per_solver.png",
        "placement_heatmap.png",
        ".complete.json",
    ):
        assert (tmp_path / name).is_file(), name
    summ = pd.read_csv(tmp_path / "summary.csv")
    assert set(summ.solver) == set(solvers)
    best = summ.J_mean.min()
    assert np.allclose(summ.J_rel, summ.J_mean / best)
    for s in solvers:
        sub = df[df.solver == s].J
        assert np.isclose(res["summary"][s]["J_mean"], sub.mean())
        # Student's t interval: 3 instances are far too few for the normal 1.96
        t = stats.t.ppf(0.975, len(sub) - 1)
        assert np.isclose(res["summary"][s]["J_ci95"], t * sub.std() / np.sqrt(len(sub)))


def test_results_match_solve_batch(tmp_path):
    import jax

    solvers = pick(1)
    cfg = make(tmp_path, solvers=solvers)
    app.run(cfg)
    df = pd.read_parquet(tmp_path / "results.parquet")
    k_gen, k_solve = jax.random.split(jax.random.key(cfg.seed))
    batch, _ = app.make_batch(cfg, k_gen)
    sol = slimjax.solve_batch(batch, app.make_solver(cfg, solvers[0]), key=k_solve,
                              **app.execution_options(cfg))
    np.testing.assert_allclose(df.J.to_numpy(), np.asarray(sol.objective), rtol=1e-6)
    np.testing.assert_allclose(df.used.to_numpy(), np.asarray(sol.used).sum(-1), rtol=1e-6)


def test_resume_skips_complete_and_redoes_incomplete(tmp_path):
    cfg = make(tmp_path, solvers=pick(1))
    app.run(cfg)
    mtime = (tmp_path / "results.parquet").stat().st_mtime_ns
    res = app.run(cfg)
    assert res["skipped"] is True
    assert (tmp_path / "results.parquet").stat().st_mtime_ns == mtime
    # a different config in the same directory is recomputed
    cfg2 = make(tmp_path, "seed=1", solvers=pick(1))
    assert app.run(cfg2)["skipped"] is False
    assert json.loads((tmp_path / ".complete.json").read_text())["config_hash"] == app.config_hash(cfg2)
    # an interrupted run (no marker) is recomputed; resume=false always recomputes
    (tmp_path / ".complete.json").unlink()
    assert app.run(cfg2)["skipped"] is False
    cfg3 = make(tmp_path, "seed=1", "resume=false", solvers=pick(1))
    assert app.run(cfg3)["skipped"] is False


def test_collect_merges_runs(tmp_path):
    for seed in (0, 1):  # a 2-point sweep over the seed (same shapes: no recompilation)
        app.run(make(tmp_path / "sweep" / str(seed), f"seed={seed}", solvers=pick(2)))
    (tmp_path / "sweep" / "2").mkdir()  # an unfinished point is ignored
    df, summary = app.collect(tmp_path / "sweep", x="seed", y="J", out=tmp_path / "study", quiet=True)
    assert len(df) == 2 * 3 * len(pick(2))
    assert set(df.run) == {"0", "1"}
    assert "seed" in summary.columns and len(summary) == 2 * len(pick(2))
    for (seed, solver), g in df.groupby(["seed", "solver"]):
        row = summary[(summary.seed == seed) & (summary.solver == solver)].iloc[0]
        assert np.isclose(row.J_mean, g.J.mean()) and row.n == len(g)
    merged = pd.read_parquet(tmp_path / "sweep" / "results_all.parquet")
    assert len(merged) == len(df)
    assert (tmp_path / "sweep" / "sweep_J_vs_seed.png").is_file()
    assert (tmp_path / "study" / "results.csv").is_file() and (tmp_path / "study" / "sweep_J_vs_seed.png").is_file()
    with pytest.raises(ValueError, match="not a result column"):
        app.collect(tmp_path / "sweep", x="nope", quiet=True)
    with pytest.raises(ValueError, match="no complete runs"):
        app.collect(tmp_path / "sweep" / "2")


def test_csv_logger(tmp_path):
    cfg = make(tmp_path, "logger=csv", solvers=pick(2))
    app.run(cfg)
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert set(m.solver) == set(pick(2)) and "J_mean" in m.columns and "network.servers" in m.columns


def test_wandb_offline_run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make(tmp_path, "logger=wandb", solvers=pick(2))
    app.run(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = {p.name for p in runs[0].rglob("*")}
    assert any(f.endswith(".wandb") for f in files)
    import wandb

    assert wandb.run is None  # finished


def test_failure_finishes_wandb_and_leaves_no_marker(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make(tmp_path, "logger=wandb", solvers=pick(1) + ["no-such-method"])
    with pytest.raises(ValueError, match="unknown name"):
        app.run(cfg)
    assert wandb.run is None
    assert not (tmp_path / ".complete.json").exists() and not (tmp_path / "results.parquet").exists()


def test_bad_config_values(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        app.run(make(tmp_path, "batch_size=0"))
    with pytest.raises(ValueError, match="precision"):
        app.run(make(tmp_path, "precision=float16"))
    with pytest.raises(ValueError, match="solvers: the list is empty"):
        app.run(make(tmp_path, "solvers=[]"))


def test_float64_precision(tmp_path):
    import jax

    old = jax.config.jax_enable_x64
    try:
        cfg = make(tmp_path, "precision=float64", solvers=pick(1))
        app.run(cfg)
        assert jax.config.jax_enable_x64
    finally:
        jax.config.update("jax_enable_x64", old)
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert (df.precision == "float64").all() and np.isfinite(df.J).all()


def test_milp_gap_to_optimum(tmp_path):
    pytest.importorskip("highspy")
    cfg = make(tmp_path, solvers=["milp"] + pick(1))
    app.run(cfg)
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert "gap_opt" in df and "gain_frac_opt" in df
    assert np.allclose(df[df.solver == "milp"].gap_opt, 0.0, atol=1e-9)
    assert (df.gap_opt >= -1e-5).all()
    assert (df.ref_status == "optimal").all() and (df.gap_lb >= -1e-5).all()


def test_time_limited_milp_is_no_optimum(tmp_path, capsys):
    """A MILP stopped by its time limit never fills gap_opt: its dual bound certifies gap_lb,
    its status is a column, and the printed table says which gap it shows."""
    pytest.importorskip("highspy")
    out = tmp_path / "run"
    cfg = make(out, "model=mixtral_8x7b", "model.layers=8", "routing.tokens=64", "network.servers=2",
               "batch_size=2", "solver.milp.time_limit=0.5", "output.summary=true", "output.figures=false",
               solvers=["milp", "popularity"])
    app.run(cfg)
    df = pd.read_parquet(out / "results.parquet")
    milp = df[df.solver == "milp"]
    assert set(milp.status) <= {"time-limit", "failed"} and set(df.ref_status) <= {"time-limit", "failed"}
    assert df.gap_opt.isna().all() and df.gain_frac_opt.isna().all()
    ok = milp.status == "time-limit"
    assert (milp[ok].gap_lb >= -1e-6).all() and milp[ok]["info.bound"].notna().all()
    assert milp[~ok].J.isna().all()  # no incumbent: no number passed off as milp's J
    printed = " ".join(capsys.readouterr().out.split())
    assert "gap opt = J / proven optimum - 1" in printed and "gap lb = J / best lower bound - 1 (certified)" in printed
    md = app.markdown_table(app.summarize(df))
    assert "| gap opt |" in md and "proven optimum" in md


def test_trace_routing_replays_held_out_tokens(tmp_path):
    traces = slimjax.traces
    rng = np.random.default_rng(0)
    T, L, E, K = 16, 2, 4, 2  # 8 training tokens, unmerged: the same shapes as TINY (no recompile)
    ids = np.stack([rng.permutation(E)[:K] for _ in range(T * L)]).reshape(T, L, K)
    path = tmp_path / "t.npz"
    traces.Trace(expert_ids=ids, num_experts=E).save(path)
    out = tmp_path / "run"
    cfg = make(out, "routing=trace", f"routing.path={path}", "routing.merge=false", solvers=pick(2))
    app.run(cfg)
    df = pd.read_parquet(out / "results.parquet")
    for c in ("p50", "p95", "p99", "replay_mean"):
        assert c in df.columns
    assert (df.p95 >= df.p50 - 1e-12).all() and (df.p99 >= df.p95 - 1e-12).all()
    assert (out / "token_cdf.png").is_file()
    assert (df.routing == "trace").all() and (df.K == K).all() and (df.E == E).all()
