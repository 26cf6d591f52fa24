"""Bench part: certified bounds (issue 29 part 3).

``measure(quick)`` returns:

* ``certify_real_trace_s_<kind>`` / ``certify_real_trace_gap_pct_<kind>``: wall seconds of
  ``slimjax.certify`` of ``successive-best`` on the real-trace instance ``tests.realistic.instance(kind)``
  (warm: a first call compiles, the second is timed) and its certified gap in %; plus the status
  and the PDHG iterations; kinds ``deepseek_v2_lite`` (L = 26, E = 64, K = 6), ``qwen``,
  ``olmoe`` (skipped when ../shared is absent). ``certify_real_trace_s`` /
  ``certify_real_trace_gap_pct``: the deepseek_v2_lite figures (the issue's instance).
* ``certify_gap_pct_<preset>``: the certified gap (%) of ``successive-best`` on a generated
  instance of every model preset (``slimjax.generate.instances(jax.random.key(0), B, model=preset)``,
  B = 1 with ``quick``, else 4: the largest gap of the batch), and ``certify_s_<preset>`` the warm
  certify time.

Measured under whatever load the machine has: compare figures from one run only.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _certify(batch, sol):
    import slimjax

    slimjax.certify(batch, sol)  # compile
    t0 = time.perf_counter()
    c = slimjax.certify(batch, sol)
    return c, time.perf_counter() - t0


def measure(quick: bool) -> dict:
    """The certificate figures (see the module docstring)."""
    import jax
    import numpy as np

    import slimjax
    from slimjax.generate import MODELS

    out: dict = {}
    try:
        from tests.realistic import instance, shared_traces
        have = shared_traces() is not None
    except Exception:  # noqa: BLE001 - the tests package is not importable: no real traces
        have = False
    kinds = ("deepseek_v2_lite", "qwen", "olmoe") if have else ()
    for kind in kinds:
        inst = instance(kind)
        sol = slimjax.solve(inst, "successive-best")
        c, secs = _certify(inst, sol)
        out[f"certify_real_trace_s_{kind}"] = secs
        out[f"certify_real_trace_gap_pct_{kind}"] = 100 * float(c.gap)
        out[f"certify_real_trace_status_{kind}"] = str(c.status_names)
        out[f"certify_real_trace_iterations_{kind}"] = int(c.bound.iterations)
    if have:
        out["certify_real_trace_s"] = out["certify_real_trace_s_deepseek_v2_lite"]
        out["certify_real_trace_gap_pct"] = out["certify_real_trace_gap_pct_deepseek_v2_lite"]
    B = 1 if quick else 4
    for preset in MODELS:
        batch = slimjax.generate.instances(jax.random.key(0), B, model=preset)
        sol = slimjax.solve_batch(batch, "successive-best")
        c, secs = _certify(batch, sol)
        out[f"certify_gap_pct_{preset}"] = 100 * float(np.max(c.gap))
        out[f"certify_s_{preset}"] = secs
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(measure("--full" not in sys.argv), indent=1))
