"""The ``slimjax`` and ``slimjax-collect`` commands, run as subprocesses from other directories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import slimjax
from slimjax.cli import collect_main

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
PREFERRED = ["greedy", "popularity", "random", "layer-uniform", "successive", "polish", "relaxed"]


def solvers(n=2) -> str:
    return "solvers=[" + ",".join(PREFERRED[:n]) + "]"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e.update(WANDB_MODE="offline", WANDB_SILENT="true", SLIMJAX_JAX_CACHE=str(tmp_path_factory.mktemp("jaxcache")))
    e.pop("SLIMJAX_SWEEP", None)
    return e


def slimjax_cmd(args, cwd, env, exe="slimjax", timeout=900):
    p = subprocess.run([str(BIN / exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{exe} {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def test_cli_single_run_from_another_directory(tmp_path, env):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    p = slimjax_cmd([*TINY, solvers(), "hydra.run.dir=out"], cwd, env)
    out = cwd / "out"
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 2 * len(df.solver.unique()) and len(df.solver.unique()) >= 1
    assert (out / "latency_per_solver.png").is_file() and (out / "placement_heatmap.png").is_file()
    assert (out / "config.yaml").is_file() and (out / ".complete.json").is_file()
    assert "J mean" in p.stdout  # the summary table
    # slimjax-collect on a directory holding that run
    assert collect_main([str(cwd)]) == 0
    assert (cwd / "results_all.parquet").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert collect_main([str(empty)]) == 2
    # an unknown key is refused with Hydra's message and a non-zero exit code
    bad = subprocess.run(
        [str(BIN / "slimjax"), "bogus_key=1"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode != 0 and "Could not override 'bogus_key'" in bad.stderr + bad.stdout


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
    assert (runs[1] / ".complete.json").is_file() and (runs[0] / "results.parquet").stat().st_mtime_ns == mtimes[
        runs[0]
    ]
    c = slimjax_cmd([str(sweep), "--plot", "x=network.servers"], tmp_path, env, exe="slimjax-collect")
    merged = pd.read_parquet(sweep / "results_all.parquet")
    assert (
        len(merged) == 4 * 2 and set(merged["network.servers"]) == {1, 2} and set(merged.routing) == {"latent", "zipf"}
    )
    assert (sweep / "sweep_J_vs_network.servers.png").is_file()
    assert "slimjax-collect: 4 runs" in c.stdout


@pytest.mark.slow
def test_multirun_joblib_launcher(tmp_path, env):
    slimjax_cmd(["-m", "hydra/launcher=local", *TINY, solvers(1), "seed=0,1", "logger=wandb"], tmp_path, env)
    runs = list((tmp_path / "multirun").glob("*/*/.complete.json"))
    assert len(runs) == 2
    assert len(list((tmp_path / "multirun").glob("*/*/wandb/offline-run-*"))) == 2


@pytest.mark.slow
def test_installed_package_finds_its_config(tmp_path, env):
    """A non-editable install (wheel) runs from an unrelated directory."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    target = tmp_path / "site"
    whl = next(wheel_dir.glob("slimjax-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(whl)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert (target / "slimjax" / "conf" / "config.yaml").is_file()
    assert (target / "slimjax" / "conf" / "hydra" / "launcher" / "local.yaml").is_file()
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    e = dict(env, PYTHONPATH=str(target))
    code = (
        "import sys, slimjax.cli as c; assert c.__file__.startswith(sys.argv[1]), c.__file__; "
        "sys.argv = ['slimjax'] + sys.argv[2:]; c.main()"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(target), *TINY, solvers(1), "hydra.run.dir=out"],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert (cwd / "out" / "results.parquet").is_file()
