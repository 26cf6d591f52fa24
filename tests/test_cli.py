"""The ``slimjax`` and ``slimjax-collect`` commands, run as subprocesses from other directories."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import slimjax
from slimjax.app import INSTANCES, PLACEMENTS, collect_main
from slimjax.app._cli import INTERRUPTED

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.layers=2",
    "model.experts=4",
    "model.top_k=2",
    "routing.tokens=8",
    "network.servers=1",
    "network.storage_fraction=0.4",
    "batch_size=2",
]
PREFERRED = ["popularity", "layer-uniform", "greedy", "random", "successive", "polish", "relaxed"]  # cheapest to compile first


def solvers(n=2) -> str:
    have = [m for m in PREFERRED if m in slimjax.methods()]
    return "solvers=[" + ",".join(have[:n]) + "]"


def command(exe: str = "slimjax") -> list[str]:
    """The console script when it is installed for this tree, else the same entry point via ``-m``."""
    script = BIN / exe
    if script.is_file() and "slimjax.app" in script.read_text(errors="ignore"):
        return [str(script)]
    if exe == "slimjax":
        return [sys.executable, "-m", "slimjax.app"]
    return [sys.executable, "-c", "import sys; from slimjax.app import collect_main; sys.exit(collect_main())"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e.update(WANDB_MODE="offline", WANDB_SILENT="true", SLIMJAX_JAX_CACHE=str(tmp_path_factory.mktemp("jaxcache")))
    e.pop("SLIMJAX_SWEEP", None)
    e.pop("SLIMJAX_RUN", None)
    return e


def slimjax_cmd(args, cwd, env, exe="slimjax", timeout=900, ok=True):
    p = subprocess.run([*command(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                       check=False)
    if ok:
        assert p.returncode == 0, f"{exe} {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def test_entry_points_are_the_app():
    text = (REPO / "pyproject.toml").read_text()
    assert 'slimjax = "slimjax.app:main"' in text and 'slimjax-collect = "slimjax.app:collect_main"' in text


def test_cli_single_run_from_another_directory(tmp_path, env):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    from slimjax.app import sweep_slug

    p = slimjax_cmd([*TINY, solvers(), "logger=wandb"], cwd, env)
    runs = list((cwd / "outputs").iterdir())
    assert [r.name for r in runs] == [sweep_slug([*TINY, solvers()])]  # named by the command (logger left out)
    out = runs[0]
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 2 * len(df.solver.unique()) and len(df.solver.unique()) == 2
    for name in ("latency_per_solver.png", "placement_heatmap.png", "config.yaml", ".complete.json", PLACEMENTS,
                 INSTANCES, "slimjax.log"):
        assert (out / name).is_file(), name
    # what it did: the summary, then where the results, figures and the wandb run are
    assert "J mean" in p.stdout
    tail = p.stdout[p.stdout.index("J mean"):]
    assert f"results: {out.resolve() / 'results.parquet'}" in tail.replace("\n", "")
    assert "figures: " in tail and str(out.resolve() / "placement_heatmap.png") in tail.replace("\n", "")
    wandb_dir = next((out / "wandb").glob("offline-run-*"))
    assert f"wandb: {wandb_dir.resolve()}" in tail.replace("\n", "")
    # nothing printed twice (the job log gets the lines; the console shows each once)
    lines = [ln.strip() for ln in p.stdout.splitlines() if ln.strip() and ln.strip()[0].isalpha()]  # not the table
    assert len(lines) == len(set(lines)) and len([ln for ln in lines if ln.startswith("results:")]) == 1
    assert "[slimjax][INFO]" not in p.stdout + p.stderr
    assert "results:" in (out / "slimjax.log").read_text()
    # the same command again finds the results
    again = slimjax_cmd([*TINY, solvers(), "logger=wandb"], cwd, env)
    assert "already holds complete results" in again.stdout and len(list((out / "wandb").glob("offline-run-*"))) == 1
    # slimjax-collect on a directory holding that run
    assert collect_main([str(cwd)]) == 0
    assert (cwd / "results_all.parquet").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert collect_main([str(empty)]) == 2
    # an unknown key is refused with Hydra's message and a non-zero exit code
    bad = slimjax_cmd(["bogus_key=1"], cwd, env, ok=False)
    assert bad.returncode != 0 and "Could not override 'bogus_key'" in bad.stderr + bad.stdout


def test_bad_solver_fails_fast_and_leaves_no_folder(tmp_path, env):
    """Solver names are checked before any instance is generated; the failed run leaves no folder
    (a bad option value is refused the same way: tests/test_experiment.py)."""
    p = slimjax_cmd([*TINY, "solvers=[popularity,no-such-solver]", "hydra.run.dir=out"], tmp_path, env, ok=False)
    assert p.returncode != 0 and "unknown name 'no-such-solver'" in p.stdout + p.stderr
    assert "instances (U,N,L,E,M,K" not in p.stdout  # nothing was generated
    assert not (tmp_path / "out").exists()


def test_help_lists_solver_options(tmp_path, env):
    from slimjax.solvers import Successive

    p = slimjax_cmd(["--help"], tmp_path, env)
    assert "== Solvers ==" in p.stdout and "successive-best" in p.stdout
    for name, doc in Successive.option_docs().items():
        assert f"{name} (default" in p.stdout and doc.split("$")[0][:40] in p.stdout, name


def _ctrl_c_deliverable() -> None:
    """In the child before exec: SIGINT unblocked and at its default disposition. Both are
    inherited across exec, and the test process's threads (JAX's, the test runner's) may have
    changed them, in which case the child would never see the Ctrl-C this test sends."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_prints_one_line_and_rerun_resumes_without_losing_a_chunk(tmp_path, env):
    """SIGINT mid-run: one line, no traceback, exit 130, finished chunks kept; rerunning the same
    command finishes the run and recomputes no finished chunk."""
    n = 250  # enough chunks that the run cannot finish between the poll that sees two parts and the signal
    args = [*TINY, f"batch_size={n}", "stream.chunk=1", "solvers=[popularity]", "output.figures=false"]
    proc = subprocess.Popen([*command(), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_deliverable)
    parts = None
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            runs = list((tmp_path / "outputs").glob("*/results"))
            if runs and len(list(runs[0].glob("part-*.parquet"))) >= 2:
                parts = runs[0]
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert parts is not None, "no chunk finished in time"
        # A Ctrl-C that lands inside a library's own signal window (Arrow's stop handler during a
        # Parquet call) can be consumed there; a user presses again, and so does this test.
        proc.send_signal(signal.SIGINT)
        for _ in range(12):  # 10 s apart: longer than a clean stop takes, so one press is handled once
            try:
                out, err = proc.communicate(timeout=10)
                break
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
        else:
            out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert INTERRUPTED in err and "Traceback" not in out + err and err.count(INTERRUPTED) == 1
    done = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.parquet")}
    assert 2 <= len(done) < n and not (parts.parent / ".complete.json").exists()
    assert not list(parts.parent.rglob(".*tmp*"))  # the files being written were dropped, not left half-done
    again = slimjax_cmd(args, tmp_path, env)
    assert "chunks already done; continuing" in again.stdout
    after = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.parquet")}
    assert len(after) == n and all(after[k] == v for k, v in done.items())
    df = pd.read_parquet(parts)  # the dataset of parts reads as one table
    assert sorted(df.instance) == list(range(n)) and (parts.parent / ".complete.json").is_file()


SUBMITIT = ["-m", "hydra/launcher=submitit_local", *TINY, "solvers=[popularity]", "seed=0,1", "output.figures=false",
            "hydra.launcher.timeout_min=10"]


def test_submitit_local_multirun_resume_and_collect(tmp_path, env):
    """Hydra's submitit launcher (its local executor: the submitit code path without a scheduler)
    runs a 2-point multirun; resume recognises what its jobs wrote, and collect merges it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from slimjax.app import CONF_DIR, is_complete

    slimjax_cmd(SUBMITIT, tmp_path, env)
    sweep = next((tmp_path / "multirun").iterdir())
    assert (sweep / ".submitit").is_dir() and len(list(sweep.glob(".submitit/*/*_log.out"))) == 2
    runs = sorted(p.parent for p in sweep.glob("*/.complete.json"))
    assert [r.name for r in runs] == ["0", "1"]
    assert (sweep / "results_all.parquet").is_file()  # merged by the multirun callback
    # each job's marker matches the config that job ran: rerunning the command skips both
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for r in runs:
            cfg = compose("config", overrides=[o for o in SUBMITIT[2:] if not o.startswith(("hydra", "seed"))]
                          + [f"seed={r.name}"])
            assert is_complete(r, cfg)
    GlobalHydra.instance().clear()
    assert collect_main([str(sweep), "--plot", "x=seed"]) == 0
    merged = pd.read_parquet(sweep / "results_all.parquet")
    assert len(merged) == 2 * 2 and set(merged.seed) == {0, 1} and set(merged.run) == {"0", "1"}
    assert (sweep / "sweep_J_vs_seed.png").is_file()


@pytest.mark.slow
def test_submitit_local_rerun_skips_finished_points(tmp_path, env):
    slimjax_cmd(SUBMITIT, tmp_path, env)
    sweep = next((tmp_path / "multirun").iterdir())
    runs = sorted(p.parent for p in sweep.glob("*/.complete.json"))
    mtimes = {r: (r / "results.parquet").stat().st_mtime_ns for r in runs}
    (runs[1] / ".complete.json").unlink()  # an unfinished point
    slimjax_cmd(SUBMITIT, tmp_path, env)
    assert (runs[0] / "results.parquet").stat().st_mtime_ns == mtimes[runs[0]]
    assert (runs[1] / ".complete.json").is_file() and (runs[1] / "results.parquet").stat().st_mtime_ns != mtimes[runs[1]]
    logs = " ".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.out"))
    assert logs.count("already holds complete results") == 1
    c = slimjax_cmd([str(sweep)], tmp_path, env, exe="slimjax-collect")
    assert "slimjax-collect: 2 runs" in c.stdout


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c(tmp_path, env):
    """`kill` (a scheduler's stop) ends a streamed run like Ctrl-C: one line, exit 143, chunks kept."""
    args = [*TINY, "batch_size=120", "stream.chunk=1", "solvers=[popularity]", "output.figures=false"]
    proc = subprocess.Popen([*command(), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        while not list(tmp_path.glob("outputs/*/results/part-000001.parquet")):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and INTERRUPTED in err and "Traceback" not in out + err
    parts = next(tmp_path.glob("outputs/*/results"))
    done = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.parquet")}
    assert not list(parts.parent.rglob(".*tmp*"))  # no half-written file left behind
    slimjax_cmd(args, tmp_path, env)
    after = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.parquet")}
    assert len(after) == 120 and all(after[k] == v for k, v in done.items())


@pytest.mark.slow
def test_multirun_wandb_resume_collect(tmp_path, env):
    args = ["-m", *TINY, solvers(1), "network.servers=1,2", "routing=latent,zipf", "logger=wandb"]
    slimjax_cmd(args, tmp_path, env)
    sweeps = list((tmp_path / "multirun").iterdir())
    assert len(sweeps) == 1
    sweep = sweeps[0]
    runs = sorted(p.parent for p in sweep.glob("*/results.parquet"))
    assert len(runs) == 4
    offline = sorted(sweep.glob("*/wandb/offline-run-*"))
    assert len(offline) == 4 and {p.parent.parent for p in offline} == set(runs)
    assert (sweep / "results_all.parquet").is_file()  # merged by the multirun callback
    mtimes = {r: (r / "results.parquet").stat().st_mtime_ns for r in runs}
    # the same command again: same directory, every point skipped, no new wandb runs
    p = slimjax_cmd(args, tmp_path, env)
    assert p.stdout.count("skipped") >= 4
    assert {r: (r / "results.parquet").stat().st_mtime_ns for r in runs} == mtimes
    assert len(sorted(sweep.glob("*/wandb/offline-run-*"))) == 4
    # a missing point is recomputed
    (runs[1] / ".complete.json").unlink()
    slimjax_cmd(args, tmp_path, env)
    assert (runs[1] / ".complete.json").is_file()
    assert (runs[0] / "results.parquet").stat().st_mtime_ns == mtimes[runs[0]]
    c = slimjax_cmd([str(sweep), "--plot", "x=network.servers"], tmp_path, env, exe="slimjax-collect")
    merged = pd.read_parquet(sweep / "results_all.parquet")
    assert len(merged) == 4 * 2 and set(merged["network.servers"]) == {1, 2}
    assert set(merged.routing) == {"latent", "zipf"}
    assert (sweep / "sweep_J_vs_network.servers.png").is_file()
    assert "slimjax-collect: 4 runs" in c.stdout


@pytest.mark.slow
def test_multirun_without_logger_then_with_wandb_recomputes_nothing(tmp_path, env):
    """Adding logger=wandb to a finished grid: same directory, every point skipped and logged."""
    args = ["-m", *TINY, solvers(1), "seed=0,1", "output.figures=false"]
    slimjax_cmd(args, tmp_path, env)
    sweep = next((tmp_path / "multirun").iterdir())
    mtimes = {r: r.stat().st_mtime_ns for r in sweep.glob("*/results.parquet")}
    slimjax_cmd([*args, "logger=wandb"], tmp_path, env)
    assert {r: r.stat().st_mtime_ns for r in sweep.glob("*/results.parquet")} == mtimes
    assert len(list(sweep.glob("*/wandb/offline-run-*"))) == 2


@pytest.mark.slow
def test_multirun_joblib_launcher(tmp_path, env):
    slimjax_cmd(["-m", "hydra/launcher=local", *TINY, solvers(1), "seed=0,1", "logger=wandb"], tmp_path, env)
    runs = list((tmp_path / "multirun").glob("*/*/.complete.json"))
    assert len(runs) == 2
    assert len(list((tmp_path / "multirun").glob("*/*/wandb/offline-run-*"))) == 2


@pytest.mark.slow
def test_installed_package_finds_its_config(tmp_path, env):
    """A non-editable install (wheel) runs from an unrelated directory, with its console scripts."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(REPO)], check=True, capture_output=True, timeout=600)
    target = tmp_path / "site"
    whl = next(wheel_dir.glob("slimjax-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(whl)],
                   check=True, capture_output=True, timeout=600)
    assert (target / "slimjax" / "conf" / "config.yaml").is_file()
    assert (target / "slimjax" / "conf" / "hydra" / "launcher" / "local.yaml").is_file()
    assert (target / "slimjax" / "conf" / "hydra" / "job_logging" / "slimjax.yaml").is_file()
    assert "slimjax.app" in (target / "bin" / "slimjax").read_text()
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    e = dict(env, PYTHONPATH=str(target))
    code = (
        "import sys, slimjax.app as a; assert a.__file__.startswith(sys.argv[1]), a.__file__; "
        "sys.argv = ['slimjax'] + sys.argv[2:]; a.main()"
    )
    p = subprocess.run([sys.executable, "-c", code, str(target), *TINY, solvers(1), "hydra.run.dir=out"], cwd=cwd,
                       env=e, capture_output=True, text=True, timeout=900, check=False)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert (cwd / "out" / "results.parquet").is_file()
    with np.load(cwd / "out" / "placements.npz") as z:
        assert z.files == [solvers(1)[len("solvers=["):-1]]
