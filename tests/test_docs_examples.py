"""Every script in examples/ runs (small arguments; the GPU one on the CPU). One runs in the
default suite (gpu_batch.py, the quickest); the others, which repeat what the solver and app tests
check, run under ``--slow``. Split from test_docs.py so that they spread over the test workers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_docs import EXAMPLES, ROOT, _env

#: the example kept in the default run
FAST_EXAMPLES = {"gpu_batch.py"}


def _trace_file(path: Path) -> Path:
    """A small trace in the canonical format, from generated latent routing (K = 2 of 8)."""
    import slimjax
    from slimjax import traces

    inst = slimjax.generate.instance(0, model={"name": "mixtral_8x7b", "layers": 4}, routing={"tokens": 400})
    traces.Trace(np.asarray(inst.patterns[0]).transpose(1, 0, 2), num_experts=8).save(path)
    return path


def _run_example(args: list[str], cwd: Path, timeout: int = 900) -> str:
    res = subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


EXAMPLE_ARGS = {
    "own_instance.py": lambda tmp: ["--out", str(tmp / "figs")],
    "gpu_batch.py": lambda tmp: ["--batch", "32", "--solver", "successive"],
    "sweep_to_pandas.py": lambda tmp: ["--figure", str(tmp / "sweep.png")],
    "real_trace.py": lambda tmp: [str(_trace_file(tmp / "trace.npz")), "--model", "mixtral_8x7b"],
}


def test_every_example_is_run():
    assert sorted(EXAMPLE_ARGS) == EXAMPLES


@pytest.mark.parametrize("name", [n if n in FAST_EXAMPLES else pytest.param(n, marks=pytest.mark.slow) for n in EXAMPLES])
def test_examples(name, tmp_path):
    out = _run_example([str(ROOT / "examples" / name), *EXAMPLE_ARGS[name](tmp_path)], tmp_path)
    if name == "own_instance.py":
        assert "successive: J =" in out and (tmp_path / "figs" / "own_layer_contribution.png").is_file()
    elif name == "gpu_batch.py":
        assert "instances/s" in out
    elif name == "sweep_to_pandas.py":
        assert "network.servers" in out and "popularity" in out and (tmp_path / "sweep.png").is_file()
    elif name == "real_trace.py":
        assert "p95" in out and "successive" in out


def test_real_trace_example_on_a_real_trace(shared_dir, tmp_path):
    trace = Path(shared_dir) / "traces" / "raw" / "weiran0129__vLLM-MoE-Logger"
    if not trace.is_dir():
        pytest.skip(f"{trace} not found")
    out = _run_example([str(ROOT / "examples" / "real_trace.py"), str(trace)], tmp_path)
    saved = {m.group(1): float(m.group(2)) for m in re.finditer(r"(\w+): test mean .*?saved\s+([\d.]+) %", out)}
    assert saved["successive"] > saved["popularity"]  # co-activation-aware beats LFU on real routing


