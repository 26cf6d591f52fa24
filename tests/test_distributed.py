"""Two real JAX processes (jax.distributed on CPU, gloo) solve one run; results equal one process's."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slimjax import distributed

TINY = ["model.layers=2", "model.experts=4", "model.top_k=2", "routing.tokens=8", "network.servers=1",
        "network.storage_fraction=0.4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rows_cover_a_batch_once():
    for n in (1, 5, 8, 13):
        for k in (1, 2, 3):
            parts = [distributed.rows(n, p, k) for p in range(k)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
    with pytest.raises(ValueError, match="process_index"):
        distributed.rows(4, 2, 2)


def test_initialize_refuses_inconsistent_settings():
    with pytest.raises(ValueError, match="process_id"):
        distributed.initialize("127.0.0.1:1", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="coordinator_address"):
        distributed.initialize("localhost", num_processes=2, process_id=0)


def run_distributed(out: Path, args: list[str], nproc: int = 2, timeout: float = 600) -> list[str]:
    """``slimjax distributed=true`` as ``nproc`` local processes (one CPU device each)."""
    env = dict(os.environ, WANDB_MODE="offline", XLA_FLAGS="")
    env.pop("SLIMJAX_RUN", None)
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "slimjax.app", *args, "distributed=true", f"coordinator.address=127.0.0.1:{port}",
             f"coordinator.num_processes={nproc}", f"coordinator.process_id={i}", f"hydra.run.dir={out}",
             "paths.jax_cache=null"],
            cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(nproc)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return logs


def test_two_processes_equal_one(tmp_path):
    """The app with distributed=true over 2 processes: chunk c on process c % 2, every process
    writes its chunks; J and the placements equal a one-process run of the same config."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from slimjax import app

    args = [*TINY, "batch_size=4", "solvers=[popularity,layer-uniform]", "output.figures=false"]
    logs = run_distributed(tmp_path / "two", args)
    assert "over 2 processes" in logs[0] and "J mean" in logs[0]  # process 0 reports and summarizes
    assert "J mean" not in logs[1]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=app.CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*args, f"paths.output_dir={tmp_path / 'one'}", "paths.jax_cache=null"])
    GlobalHydra.instance().clear()
    app.run(cfg)
    one = pd.read_parquet(tmp_path / "one" / "results.parquet").sort_values(["solver", "instance"])
    two = app.read_results(tmp_path / "two").sort_values(["solver", "instance"])
    assert sorted(set(two.chunk)) == [0, 1] and len(two) == len(one) == 8
    # other batch shapes compile other programs: J equal to float32 rounding
    np.testing.assert_allclose(two.J.to_numpy(), one.J.to_numpy(), rtol=1e-6)
    for s in ("popularity", "layer-uniform"):
        np.testing.assert_array_equal(app.read_placements(tmp_path / "two", s), app.read_placements(tmp_path / "one", s))
    assert app.is_complete(tmp_path / "two", cfg)  # the same config hash: a rerun would skip it
