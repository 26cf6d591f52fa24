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
    wait_all(procs, 120)
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


def run_distributed(out: Path, args: list[str], nproc: int = 2, timeout: float = 600,
                    per_process: list[list[str]] | None = None) -> list[str]:
    """``slimjax distributed=true`` as ``nproc`` local processes (one CPU device each);
    ``per_process[i]``: overrides of process i only."""
    env = dict(os.environ, WANDB_MODE="offline", XLA_FLAGS="")
    env.pop("SLIMJAX_RUN", None)
    port = free_port()
    own = per_process or [[] for _ in range(nproc)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "slimjax.app", *args, *own[i], "distributed=true",
             f"coordinator.address=127.0.0.1:{port}", f"coordinator.num_processes={nproc}",
             f"coordinator.process_id={i}", f"hydra.run.dir={out}", "paths.jax_cache=null"],
            cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(nproc)
    ]
    return wait_all(procs, timeout)


def wait_all(procs, timeout: float) -> list[str]:
    """The output of every process (killed when one runs past ``timeout``); each must exit 0."""
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


ARGS = [*TINY, "batch_size=4", "solvers=[popularity,layer-uniform]", "output.figures=false", "bound.method=null"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference for the multi-process runs: ``ARGS`` run by one process (this one)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from slimjax import app

    out = tmp_path_factory.mktemp("one")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=app.CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*ARGS, f"paths.output_dir={out}", "paths.jax_cache=null"])
    GlobalHydra.instance().clear()
    app.run(cfg)
    return out, cfg


def assert_rows_equal_one_process(two: Path, one: Path) -> pd.DataFrame:
    """Every (solver, instance) of the multi-process run ``two`` exactly once, equal to ``one``'s."""
    from slimjax import app

    a = pd.read_parquet(one / "results.parquet").sort_values(["solver", "instance"])
    b = app.read_results(two).sort_values(["solver", "instance"])
    for s, g in b.groupby("solver"):
        assert g.instance.tolist() == list(range(4)), (s, g.instance.tolist())  # each row once, none missing
    assert len(b) == len(a) == 8
    # other batch shapes compile other programs: J equal to float32 rounding
    np.testing.assert_allclose(b.J.to_numpy(), a.J.to_numpy(), rtol=1e-6)
    for s in ("popularity", "layer-uniform"):
        np.testing.assert_array_equal(app.read_placements(two, s), app.read_placements(one, s))
    return b


def test_two_processes_equal_one(tmp_path, one_process):
    """The app with distributed=true over 2 processes: chunk c on process c % 2, every process
    writes its chunks; J and the placements equal a one-process run of the same config."""
    from slimjax import app

    one, cfg = one_process
    logs = run_distributed(tmp_path / "two", ARGS)
    assert "over 2 processes" in logs[0] and "J mean" in logs[0]  # process 0 reports and summarizes
    assert "J mean" not in logs[1]
    two = assert_rows_equal_one_process(tmp_path / "two", one)
    assert sorted(set(two.chunk)) == [0, 1]
    assert app.is_complete(tmp_path / "two", cfg)  # the same config hash: a rerun would skip it


@pytest.mark.slow  # two more processes; the default run keeps test_two_processes_equal_one
def test_processes_with_different_memory_budgets_agree_on_one_layout(tmp_path, one_process):
    """Process 1's memory budget holds one instance per chunk, process 0's the whole batch. Each
    used to cut the batch by its own budget (process 0: 2 chunks of 2, process 1: 4 chunks of 1),
    so rows were solved twice or never. Process 0 now decides for all (the smallest budget's
    chunk): every row exactly once, equal to one process's run row for row."""
    one, _ = one_process
    out = tmp_path / "two"
    run_distributed(out, ARGS, per_process=[[], ["solve_options.memory_budget_mb=0.005"]])
    stream = json.loads((out / ".stream.json").read_text())
    assert (stream["chunk"], stream["chunks"]) == (1, 4)
    two = assert_rows_equal_one_process(out, one)
    assert (two.chunk == two.instance).all()


def test_layout_is_decided_by_process_0(monkeypatch):
    """The layout rule on the exchanged proposals [batch, resumed chunk, stream.chunk, rows the
    budget holds] (one row per process), as every process computes it: process 0's resume record,
    else the common stream.chunk, else the smallest budget's chunk, at most ceil(batch / processes)."""
    from types import SimpleNamespace

    from slimjax.app import _run

    def layout(rows, index=1):
        every = np.array(rows, np.int64)
        monkeypatch.setattr(_run, "_exchange", lambda row, topo: every)  # what the processes proposed
        shape = (1, 2, 2, 4, 8, 2)
        plan = SimpleNamespace(names=["a"], budget_bytes=2**20, chunk=int(every[index, 2]) or "auto")
        src = SimpleNamespace(size=int(every[0, 0]), shape=shape)
        lay = _run._Layout(plan, src, distributed.Topology(index, len(rows), 1, len(rows)), None, "h")
        return lay.chunk, lay.chunks

    assert layout([[100, 0, 0, 40], [100, 0, 0, 7]]) == (7, 15)  # the smallest budget, on either process
    assert layout([[100, 0, 0, 7], [100, 0, 0, 40]], index=0) == (7, 15)
    assert layout([[100, 0, 0, 80], [100, 0, 0, 90]]) == (50, 2)  # at most ceil(B / P)
    assert layout([[100, 9, 0, 40], [100, 0, 0, 7]]) == (9, 12)  # process 0's finished chunks
    assert layout([[100, 0, 5, 40], [100, 0, 5, 7]]) == (5, 20)  # the stream.chunk all processes give
    with pytest.raises(ValueError, match=r"stream\.chunk: the processes ask for different chunk sizes \[5, 'auto'\]"):
        layout([[100, 0, 5, 40], [100, 0, 0, 7]])
    with pytest.raises(ValueError, match="batch_size: the processes have different batches"):
        layout([[100, 0, 0, 40], [99, 0, 0, 7]])
