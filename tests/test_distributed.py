"""Two real JAX processes (jax.distributed on CPU, gloo) solve one run; results equal one process's."""

from __future__ import annotations

import itertools
import json
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


GATHER = r"""
import json, sys
import numpy as np
from slimjax import distributed as d

port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
d.initialize(f"127.0.0.1:{port}", 2, pid)
res = {}
full = 1 + np.arange(5) * 1e-12                          # float64 digits a float32 trip would lose
lo, hi = d.rows(5)
g = d.gather({"J": full[lo:hi], "x": np.arange(lo, hi)[:, None] % 2 == 0}, n=5)
res["rows_n"] = [g["J"].dtype.str, (g["J"] - full).tolist(), g["x"].ravel().tolist()]
res["uneven"] = d.gather(np.arange(10 * pid, 10 * pid + 1 + 2 * pid)).tolist()   # 1 row and 3 rows
for name, x, n in [("short", full[lo:hi][:1], 5),                # process 0 holds 1 row, rows(5) gives it 3
                   ("leaves", {"a": np.zeros(2), "b": np.zeros(2 + pid)}, None),
                   ("dtype", np.zeros(2, np.float32 if pid else np.float64), None)]:
    try:
        got = d.gather(x, n=n)
        res[name] = ["returned", str(got)]
    except ValueError as e:
        res[name] = ["ValueError", str(e)]
open(f"{out}/{pid}.json", "w").write(json.dumps(res))
"""


def test_gather_keeps_dtypes_and_checks_row_counts(tmp_path):
    """Two processes: gather(x, n) returns exactly the rows (float64 stays float64), rows may differ
    in number, and a process holding other rows than rows(n) (or leaves/dtypes that disagree) gets
    the same ValueError on every process instead of padding rows or a hang."""
    script = tmp_path / "gather.py"
    script.write_text(GATHER)
    env = dict(os.environ, XLA_FLAGS="")
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        logs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    for i in range(2):
        r = json.loads((tmp_path / f"{i}.json").read_text())
        assert r["rows_n"] == ["<f8", [0.0] * 5, [True, False, True, False, True]]
        assert r["uneven"] == [0, 10, 11, 12]
        assert r["short"][0] == "ValueError", r["short"]
        assert "process 0: 1 (rows(n) gives 3)" in r["short"][1]
        assert r["leaves"][0] == "ValueError" and "same number of rows" in r["leaves"][1]
        assert r["dtype"][0] == "ValueError" and "dtypes" in r["dtype"][1]


def test_gather_one_process_checks_n():
    x = np.arange(3.0)
    np.testing.assert_array_equal(distributed.gather(x, n=3), x)
    with pytest.raises(ValueError, match="n: the only process holds 3 rows"):
        distributed.gather(x, n=4)
    with pytest.raises(ValueError, match="same number of rows"):
        distributed.gather({"a": x, "b": x[:2]})


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
