"""``slimjax.app.run`` end to end on tiny configs: outputs, resume, streaming, collect, loggers, traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from scipy import stats

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
PREFERRED = ["popularity", "layer-uniform", "greedy", "random", "successive", "polish", "relaxed"]  # cheapest to compile first


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
    """A solver that fails mid-run (brute force refuses N·L·E > 20) closes the wandb run as failed and
    leaves no results and no marker, so a rerun recomputes."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make(tmp_path, "logger=wandb", "network.servers=2", solvers=["brute-force"])
    with pytest.raises(ValueError, match="brute-force"):
        app.run(cfg)
    assert wandb.run is None
    assert not (tmp_path / ".complete.json").exists() and not (tmp_path / "results.parquet").exists()
    assert list((tmp_path / "wandb").glob("offline-run-*"))  # the failed run is on record


def test_invalid_config_fails_before_any_work(tmp_path):
    """Solver names and options are checked before a batch is generated: nothing is written."""
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="unknown name 'no-such-method'"):
        app.run(make(out, solvers=pick(1) + ["no-such-method"]))
    with pytest.raises(ValueError, match="enum_budget"):
        app.run(make(out, "solver.greedy.enum_budget=-1", solvers=["greedy"]))
    with pytest.raises(ValueError, match="stream.chunk"):
        app.run(make(out, "stream.chunk=0"))
    with pytest.raises(ValueError, match="instance.path"):
        app.run(make(out, f"instance.path={tmp_path / 'missing.npz'}"))
    assert not out.exists()


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
    assert (df.ref_status == "optimal").all() and (df.gap_lb >= 0).all()  # float64 J over a capped bound
    assert (df[df.solver == "milp"].gap_lb == 0).all()


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
    assert "gap opt = J / proven optimum - 1" in printed and "gap lb = J / best certified lower bound - 1" in printed
    md = app.markdown_table(app.summarize(df))
    assert "| gap opt |" in md and "proven optimum" in md


def test_certified_gap_for_every_solver(tmp_path):
    """Without an exact solver, gap_lb comes from slimjax.lower_bound for every solver: a valid
    certificate (J >= bound, recomputed here from the columns), its time apart from the solvers';
    bound.method=null leaves no gap_lb column rather than a made-up one."""
    cfg = make(tmp_path / "a", solvers=pick(2))
    app.run(cfg)
    df = pd.read_parquet(tmp_path / "a" / "results.parquet")
    assert {"gap_lb", "lower_bound", "bound_status", "bound_seconds", "bound_compile_seconds"} <= set(df)
    assert df.lower_bound.notna().all() and (df.lower_bound > 0).all()
    # J is float32 from the solvers, the bound float64: allow float32 rounding
    assert (df.J >= df.lower_bound * (1 - 1e-6)).all()
    # gap_lb is certify's: the float64 J of each row's placement over the bound
    batch = slimjax.load(tmp_path / "a" / "instances.npz")
    for s in pick(2):
        rows = df[df.solver == s].sort_values("instance")
        J64 = slimjax.bounds.objective64(batch, app.read_placements(tmp_path / "a", s))
        np.testing.assert_allclose(rows.gap_lb, J64 / rows.lower_bound - 1, rtol=0, atol=1e-15)
        assert (rows.gap_lb >= 0).all()
    # one bound per instance, shared by the solvers
    assert (df.groupby("instance").lower_bound.nunique() == 1).all()
    cfg = make(tmp_path / "b", "bound.method=null", solvers=pick(1))
    app.run(cfg)
    df = pd.read_parquet(tmp_path / "b" / "results.parquet")
    assert "gap_lb" not in df and "bound_seconds" not in df


def test_certified_gap_is_never_negative_with_a_tight_bound(tmp_path):
    """Every node can hold every expert: the bound is the optimum exactly (float64), and J of
    the solver's placement equals it. The solver's float32 J lies up to a float32 rounding either
    side of it, so J / bound - 1 came out as -7e-8; gap_lb uses the float64 J and is exactly 0."""
    rng = np.random.default_rng(0)
    B, U, N, L, E, M, K = 3, 1, 2, 2, 4, 8, 2  # TINY's shapes (its programs are compiled)
    batch = slimjax.stack([slimjax.Instance(
        latency=rng.uniform(0.01, 1, (U, N, L, E)).astype(np.float32),
        fallback=rng.uniform(1, 3, (U, L, E)).astype(np.float32), size=np.ones((L, E), np.float32),
        capacity=np.full(N, 100.0, np.float32),
        patterns=np.array([[[rng.permutation(E)[:K] for _ in range(M)] for _ in range(L)]], np.int32),
        weight=rng.dirichlet(np.ones(M), (U, L)).astype(np.float32)) for _ in range(B)])
    path = tmp_path / "roomy.npz"
    slimjax.save(path, batch)
    out = tmp_path / "run"
    app.run(make(out, f"instance.path={path}", "output.figures=false", solvers=["popularity"]))
    df = pd.read_parquet(out / "results.parquet")
    assert (df.J / df.lower_bound - 1 < 0).any()  # the float32 J: what gap_lb used to be
    assert (df.gap_lb == 0).all()


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


def test_resume_follows_the_trace_content(tmp_path):
    """routing.path is hashed by content: a trace re-recorded in place (same size and even the same
    mtime) is recomputed, an unchanged one is skipped; for a folder of traces every file's name and
    bytes count, its mtimes do not."""
    import os

    traces = slimjax.traces
    rng = np.random.default_rng(1)
    T, L, E, K = 16, 2, 4, 2  # the shapes of TINY (no recompile)

    def record(path, seed):
        r = np.random.default_rng(seed)
        ids = np.stack([r.permutation(E)[:K] for _ in range(T * L)]).reshape(T, L, K)
        traces.Trace(expert_ids=ids, num_experts=E).save(path)

    path = tmp_path / "t.npz"
    record(path, 0)
    out = tmp_path / "run"
    cfg = make(out, "routing=trace", f"routing.path={path}", "routing.merge=false", "bound.method=null",
               solvers=pick(1))
    assert app.run(cfg)["skipped"] is False
    first = pd.read_parquet(out / "results.parquet")
    assert app.run(cfg)["skipped"] is True  # unchanged: skipped
    before = path.stat()
    seed = next(k for k in range(1, 200) if record(tmp_path / "other.npz", k) or  # a new recording of
                (tmp_path / "other.npz").stat().st_size == before.st_size)        # the same size
    record(path, seed)  # re-recorded in place
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    res = app.run(cfg)
    assert res["skipped"] is False
    again = pd.read_parquet(out / "results.parquet")
    assert not np.allclose(again.replay_mean.to_numpy(), first.replay_mean.to_numpy())  # the new trace's tokens
    assert app.run(cfg)["skipped"] is True
    # a folder of traces (JSONL, one per layer): each file's name and content, not its mtime
    folder = tmp_path / "logs"
    folder.mkdir()
    for layer in range(2):
        (folder / f"layer{layer}.jsonl").write_text("".join(
            f'{{"layer": {layer}, "experts": {rng.permutation(E)[:K].tolist()}}}\n' for _ in range(4)))
    fcfg = make(tmp_path / "f", "routing=trace", f"routing.path={folder}")
    h0 = app.config_hash(fcfg)
    os.utime(folder / "layer0.jsonl", ns=(1, 1))
    assert app.config_hash(fcfg) == h0
    (folder / "layer1.jsonl").write_text((folder / "layer1.jsonl").read_text().replace("[", "[ ", 1))
    h1 = app.config_hash(fcfg)
    assert h1 != h0
    (folder / "layer1.jsonl").rename(folder / "layer2.jsonl")
    assert app.config_hash(fcfg) not in (h0, h1)
    assert app.hashed_fields(fcfg)["routing"]["content"]["bytes"] == sum(
        f.stat().st_size for f in folder.iterdir())


def test_placements_and_instances_recompute_each_rows_J(tmp_path):
    """placements.npz (one [B, N, L, E] array per solver name) and instances.npz (slimjax.save) hold
    what was solved: J recomputed from them equals every row's J."""
    from slimjax._io import load

    solvers = pick(2)
    app.run(make(tmp_path, solvers=solvers))
    df = pd.read_parquet(tmp_path / "results.parquet")
    batch = load(tmp_path / "instances.npz")
    with np.load(tmp_path / "placements.npz") as z:
        assert sorted(z.files) == sorted(df.solver.unique())
        for s in solvers:
            x = z[s]
            assert x.dtype == bool and x.shape == (3,) + batch.latency.shape[2:] and x.shape[1:] == batch.shape[1:4]
            rows = df[df.solver == s].sort_values("instance")
            # the app's J comes from solve_batch's evaluation program, this from slimjax.objective:
            # two compiled float32 programs, equal to float rounding
            np.testing.assert_allclose(np.asarray(slimjax.objective(batch, x)), rows.J, rtol=1e-6)
            np.testing.assert_allclose(np.asarray(slimjax.feasible(batch, x).used).sum(-1), rows.used, rtol=1e-6)
    assert app.read_placements(tmp_path, solvers[0]).shape == x.shape


def test_instance_path_solves_saved_instances(tmp_path):
    """`instance.path=FILE` runs a user's saved batch through the same app."""
    solvers = pick(1)
    app.run(make(tmp_path / "a", solvers=solvers))
    path = tmp_path / "a" / "instances.npz"
    res = app.run(make(tmp_path / "b", f"instance.path={path}", solvers=solvers))
    a = pd.read_parquet(tmp_path / "a" / "results.parquet")
    b = pd.read_parquet(tmp_path / "b" / "results.parquet")
    assert res["skipped"] is False and (b.routing == "file").all() and (b["instance.path"] == str(path)).all()
    np.testing.assert_allclose(b.J, a.J, rtol=1e-6)
    assert "model.layers" not in b.columns  # the generator's settings did not make these instances


def test_resume_recomputes_only_what_changes_results(tmp_path):
    """Adding a logger or changing an execution option finds the stored results (and logs them);
    a changed solver option, or results from other code, are recomputed."""
    base = ["network.servers=1"]
    cfg = make(tmp_path, *base, solvers=["greedy"])
    app.run(cfg)
    results = tmp_path / "results.parquet"
    mtime = results.stat().st_mtime_ns
    for extra in (["logger=csv"], ["solve_options.chunk_size=1", "solve_options.memory_budget_mb=64"],
                  ["output.figures=false", "stream.chunk=1", "warmup=true"]):
        res = app.run(make(tmp_path, *base, *extra, solvers=["greedy"]))
        assert res["skipped"] is True, extra
    assert results.stat().st_mtime_ns == mtime
    m = pd.read_csv(tmp_path / "metrics.csv")  # the logger added later got the stored results
    assert list(m.solver) == ["greedy"] and np.isclose(m.J_mean[0], pd.read_parquet(results).J.mean())
    assert json.loads((tmp_path / ".complete.json").read_text())["logged"] == ["csv"]
    assert app.run(make(tmp_path, *base, "logger=csv", solvers=["greedy"]))["skipped"] is True
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == 1  # logged once, not on every rerun
    # a solver option is part of the hash
    changed = make(tmp_path, *base, "solver.greedy.enum_budget=128", solvers=["greedy"])
    assert app.config_hash(changed) != app.config_hash(cfg)
    assert app.run(changed)["skipped"] is False and results.stat().st_mtime_ns != mtime
    # results made by other code (another source fingerprint) are recomputed
    other = dict(app.code_fingerprint(), sources="0" * 16)
    marker = json.loads((tmp_path / ".complete.json").read_text())
    marker["config_hash"] = app.config_hash(changed, code=other)
    (tmp_path / ".complete.json").write_text(json.dumps(marker))
    assert app.run(changed)["skipped"] is False


def test_code_fingerprint_follows_the_sources(tmp_path):
    """The fingerprint changes with any edit of a package .py file (committed or not), not with docs
    or configs; from a git checkout it records the commit and whether the package is dirty."""
    import shutil
    import subprocess

    from slimjax.app import _hash

    pkg = Path(slimjax.__file__).parent
    copy = tmp_path / "repo" / "slimjax"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("__pycache__"))
    h0 = app.source_hash(copy)
    assert h0 == app.source_hash(pkg)
    (copy / "conf" / "config.yaml").write_text((copy / "conf" / "config.yaml").read_text() + "\n# a comment\n")
    assert app.source_hash(copy) == h0
    (copy / "_io.py").write_text((copy / "_io.py").read_text() + "\n# an edit\n")
    h1 = app.source_hash(copy)
    assert h1 != h0
    cfg = make(tmp_path)
    code = app.code_fingerprint()
    assert app.config_hash(cfg, code=dict(code, sources=h0)) != app.config_hash(cfg, code=dict(code, sources=h1))
    assert app.config_hash(cfg, code=dict(code, commit="x", dirty=True)) == app.config_hash(cfg, code=code)
    # installed (no git): no commit; in a checkout: the commit and the dirty flag, for the record
    assert "commit" not in _hash._fingerprint.__wrapped__(str(copy))
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-C", str(copy.parent)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    rec = dict(_hash._fingerprint.__wrapped__(str(copy)))
    assert len(rec["commit"]) == 40 and rec["dirty"] is False and rec["sources"] == h1
    (copy / "_io.py").write_text((copy / "_io.py").read_text() + "\n# another edit\n")
    rec2 = dict(_hash._fingerprint.__wrapped__(str(copy)))
    assert rec2["dirty"] is True and rec2["sources"] != h1


def test_padded_last_chunk_equals_the_same_rows(tmp_path):
    """A last chunk shorter than the chunk size is drawn padded to one shape (one compilation) and
    cut back: equal to the same rows drawn alone (the same program, so exactly), optional fields
    (service, rate) absent as before."""
    import jax

    cfg = make(tmp_path, "batch_size=5")
    src = app.BatchSource(cfg, jax.random.key(0))
    padded, plain_rows = src.rows(3, 5, pad_to=4), src.rows(3, 5, pad_to=None)
    assert padded.batch_shape == (2,) and padded.service is None and padded.rate is None
    # both are drawn by the vmapped sampler; rows are independent, so padding cannot change them
    np.testing.assert_allclose(np.asarray(padded.latency), np.asarray(plain_rows.latency), rtol=1e-6)


def test_streamed_run_matches_one_piece_and_resumes_by_chunk(tmp_path):
    """A run in chunks (stream.chunk) writes a Parquet dataset with the rows a run in one piece
    writes; its summary is computed from the dataset; a lost chunk is the only one recomputed."""
    solvers = pick(2)
    app.run(make(tmp_path / "whole", solvers=solvers))
    out = tmp_path / "streamed"
    app.run(make(out, "stream.chunk=1", solvers=solvers))  # 3 chunks of one instance
    parts = sorted((out / "results").glob("part-*.parquet"))
    assert [p.name for p in parts] == [f"part-00000{c}.parquet" for c in range(3)]
    assert len(list((out / "placements").glob("part-*.npz"))) == 3 and not (out / "results.parquet").exists()
    whole = pd.read_parquet(tmp_path / "whole" / "results.parquet").sort_values(["solver", "instance"])
    streamed = app.read_results(out).sort_values(["solver", "instance"])
    assert list(streamed.instance) == list(whole.instance) and set(streamed.chunk) == {0, 1, 2}
    # rows generated chunk by chunk are the rows of the whole batch; solved by programs of other
    # batch shapes, J agrees to float32 rounding
    np.testing.assert_allclose(streamed.J, whole.J, rtol=1e-6)
    np.testing.assert_allclose(streamed.J_empty, whole.J_empty, rtol=1e-6)
    assert app.read_placements(out, solvers[0]).shape[0] == 3
    summ = pd.read_csv(out / "summary.csv").set_index("solver").loc[solvers]
    direct = app.summarize(streamed).set_index("solver").loc[solvers]
    np.testing.assert_allclose(summ.J_mean, direct.J_mean, rtol=1e-12)
    np.testing.assert_allclose(summ.J_ci95, direct.J_ci95, rtol=1e-9)
    assert list(summ.n) == [3] * len(solvers)
    for name in ("latency_per_solver.png", "placement_heatmap.png", "expert_placement.png",
                 "layer_contribution.png", ".complete.json"):
        assert (out / name).is_file(), name
    # a lost chunk (and an unfinished run) -> only that chunk is recomputed
    keep = [p.stat().st_mtime_ns for p in parts]
    parts[1].unlink()
    (out / ".complete.json").unlink()
    assert app.run(make(out, "stream.chunk=1", solvers=solvers))["skipped"] is False
    assert [parts[0].stat().st_mtime_ns, parts[2].stat().st_mtime_ns] == [keep[0], keep[2]] and parts[1].is_file()
    # the chunk layout of the finished chunks is kept even when the command asks for another
    (out / ".complete.json").unlink()
    parts[1].unlink()
    app.run(make(out, "stream.chunk=2", solvers=solvers))
    assert parts[0].stat().st_mtime_ns == keep[0] and len(list((out / "results").glob("part-*"))) == 3
    # another config in one piece in the same directory: no stale chunk is left to be read with it
    app.run(make(out, "seed=1", solvers=solvers))
    assert not list((out / "results").glob("part-*")) and not (out / ".stream.json").exists()
    assert set(app.read_results(out).seed) == {1}


def test_summary_of_a_dataset_equals_the_summary_of_its_table():
    """The streamed summary (partial aggregates merged across record batches) equals the direct one."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    rng = np.random.default_rng(0)
    n = 1000
    df = pd.DataFrame({
        "solver": rng.choice(["a", "b", "c"], n), "servers": rng.choice([2, 4], n), "J": rng.uniform(1, 2, n),
        "gap_best": rng.uniform(0, 0.1, n), "seconds": rng.uniform(0, 1e-3, n), "chunk": np.arange(n) // 100,
        "compile_seconds": np.repeat(rng.uniform(0, 5, n // 100), 100), "gap_opt": rng.uniform(0, 0.1, n),
    })
    df.loc[rng.choice(n, 50), "J"] = np.nan
    df.loc[rng.choice(n, 300), "gap_opt"] = np.nan
    direct = app.summarize(df, by=["servers", "solver"])
    streamed = app.summarize_dataset(ds.dataset(pa.Table.from_pandas(df)), by=["servers", "solver"], batch_rows=37)
    key = ["servers", "solver"]
    direct, streamed = direct.sort_values(key).reset_index(drop=True), streamed.sort_values(key).reset_index(drop=True)
    assert list(direct.columns) == list(streamed.columns)
    for c in direct.columns:
        if c in key:
            assert list(direct[c]) == list(streamed[c])
        else:
            np.testing.assert_allclose(direct[c].astype(float), streamed[c].astype(float), rtol=1e-9, err_msg=c)
    # the t interval and the compile total are what their labels say
    g = df[(df.servers == 2) & (df.solver == "a")]
    row = direct[(direct.servers == 2) & (direct.solver == "a")].iloc[0]
    J = g.J.dropna()
    assert row.n == len(J) and np.isclose(row.J_ci95, stats.t.ppf(0.975, len(J) - 1) * J.std() / np.sqrt(len(J)))
    assert np.isclose(row.compile_s, g.groupby("chunk").compile_seconds.first().sum())
    assert row.n_opt == g.gap_opt.notna().sum()


@pytest.mark.slow  # the default run keeps tests/test_dynamic_app.py's experiment=dynamic run
def test_dynamic_experiment_rows_and_resume(tmp_path):
    """experiment=dynamic: one row per (policy, share, timeline, window), totals per timeline, a
    marker (a rerun is skipped) and budgets that hold in every evaluated window."""
    out = tmp_path / "dyn"
    cfg = make(out, "experiment=dynamic", "model=mixtral_8x7b", "model.layers=4", "network.servers=2",
               "dynamic.timelines=2", "dynamic.windows=4", "dynamic.tokens=32", "dynamic.solver=successive",
               "dynamic.policies=[static,incremental]", "dynamic.budget_shares=[0.1,null]", "logger=csv")
    res = app.run(cfg)
    rows = pd.read_parquet(out / "results.parquet")
    totals = pd.read_parquet(out / "totals.parquet")
    assert len(rows) == 2 * 2 * 2 * 4 and len(totals) == 2 * 2 * 2
    assert set(rows.solver) == {"static@0.1", "static@inf", "incremental@0.1", "incremental@inf"}
    assert (rows[rows.policy == "static"].moved[rows.evaluated] == 0).all()
    assert (out / "dynamic_windows.png").is_file() and (out / "metrics.csv").is_file()
    assert not res["skipped"] and app.run(cfg)["skipped"]
    bad = make(tmp_path / "bad", "experiment=dynamic", "dynamic.policies=[nope]")
    with pytest.raises(ValueError, match="policies"):
        app.run(bad)


def test_dynamic_experiment_refuses_distributed(tmp_path, monkeypatch):
    """experiment=dynamic with distributed=true would run the whole study on every process (each
    logging its own wandb run): refused before any process joins or any work starts."""
    from slimjax import distributed

    monkeypatch.setattr(distributed, "initialize", lambda *a, **k: pytest.fail("joined a multi-process job"))
    out = tmp_path / "dyn"
    cfg = make(out, "experiment=dynamic", "distributed=true", "logger=csv")
    with pytest.raises(ValueError, match=r"distributed: experiment=dynamic runs its whole study in one process.*"
                                         r"set distributed=false.*slimjax -m experiment=dynamic"):
        app.run(cfg)
    assert not out.exists()
