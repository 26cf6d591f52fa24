"""Bench part (issue 29, parts 2 and 4): the solvers on real-trace instances with thousands of
patterns, and ``successive-best`` end to end on deepseek_v3.

``measure(quick)`` returns, per kind of :func:`tests.realistic.instance` (``qwen``, ``olmoe``,
``deepseek_v2_lite``; skipped when ``../shared/traces`` is absent):

- ``real_<kind>_<method>_seconds``: warm ``solve`` of one instance (the second call; the first
  one compiles), for ``successive``, ``greedy`` and ``successive-best``;
- ``real_<kind>_<method>_compile_seconds``: the first call's compile seconds;
- ``real_<kind>_<method>_J``: J of the solution (fixed seed; tests/test_regression.py pins them);

and ``deepseek_v3_successive_best_seconds`` end to end as a new user meets it: in a fresh process
with slimjax's persistent compilation cache off (``SLIMJAX_CACHE=0``), generate the instance as
``scripts/bench.py`` part (d) does, then ``solve(inst, "successive-best")``, compile included (the
clock starts after the imports), with ``..._compile_seconds`` and ``..._J``. ``quick`` skips the
largest kind's ``greedy``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

METHODS = ("successive", "greedy", "successive-best")


def _realistic(out: dict, quick: bool) -> None:
    import slimjax
    from tests.realistic import KINDS, instance, shared_traces

    if shared_traces() is None:
        out["real_skipped"] = "../shared/traces/raw is absent"
        return
    for kind in KINDS:
        inst = instance(kind)
        out[f"real_{kind}_shape"] = list(inst.shape)
        for m in METHODS:
            if quick and kind == "deepseek_v2_lite" and m == "greedy":
                continue
            first = slimjax.solve(inst, m)
            t0 = time.perf_counter()
            sol = slimjax.solve(inst, m)
            out[f"real_{kind}_{m}_seconds"] = time.perf_counter() - t0
            out[f"real_{kind}_{m}_compile_seconds"] = first.compile_seconds
            out[f"real_{kind}_{m}_J"] = float(sol.objective)


def _deepseek(out: dict, tokens: int = 1024) -> None:
    import jax

    import slimjax

    t0 = time.perf_counter()
    inst = slimjax.generate.instance(jax.random.key(5), model="deepseek_v3", network={"servers": 8},
                                     routing={"tokens": tokens})
    jax.block_until_ready(inst.latency)
    best = slimjax.solve(inst, "successive-best")
    out["deepseek_v3_successive_best_seconds"] = time.perf_counter() - t0
    out["deepseek_v3_successive_best_compile_seconds"] = best.compile_seconds
    out["deepseek_v3_successive_best_J"] = float(best.objective)


def _deepseek_cold(out: dict) -> None:
    """:func:`_deepseek` in a fresh process with the persistent cache off (its keys, or an error)."""
    env = dict(os.environ, SLIMJAX_CACHE="0")
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--deepseek"], capture_output=True, text=True,
                       env=env, timeout=1800, check=False)
    if r.returncode != 0:
        out["deepseek_v3_successive_best_error"] = r.stderr[-2000:]
        return
    out.update(json.loads(r.stdout.strip().splitlines()[-1]))


def measure(quick: bool) -> dict:
    """The part's keys (see the module docstring); seconds are wall-clock on this machine."""
    out: dict = {}
    _realistic(out, quick)
    _deepseek_cold(out)
    return out


if __name__ == "__main__":
    if "--deepseek" in sys.argv:  # the fresh process of _deepseek_cold: one line of JSON
        one: dict = {}
        _deepseek(one)
        print(json.dumps(one))
    else:
        print(json.dumps(measure("--quick" in sys.argv), indent=1))
