#!/usr/bin/env python
"""``certify`` of ``successive-best`` under several initial primal weights of the threshold LP's
PDHG (``_threshold.OMEGA_SCALE``, :attr:`slimjax.bounds._pdhg.PDHG.omega_scale`), side by side in
one process, the scales interleaved per instance:

    .venv/bin/python experiments/certificates/omega_scale.py deepseek_v2_lite 1,100,30,300
    .venv/bin/python experiments/certificates/omega_scale.py qwen,olmoe,qwen1_5_moe_a2_7b,olmoe_1b_7b,gpt_oss_20b 1,100,30

Instances: the real traces (``tests.realistic.instance(kind)``) by kind, the presets by name
(``generate.instances(jax.random.key(0), 1, model=preset)``). Prints the certified gap, the PDHG
iterations, the status and the bound's seconds (warm after the first scale).
"""

import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import jax

import slimjax
from slimjax.bounds import _threshold


def main():
    names, scales = sys.argv[1].split(","), [float(a) for a in sys.argv[2].split(",")]
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    runs = []
    for name in names:
        if name in ("qwen", "olmoe", "deepseek_v2_lite"):
            from tests.realistic import instance

            inst = jax.tree_util.tree_map(lambda a: a[None], instance(name))
        else:
            inst = slimjax.generate.instances(jax.random.key(0), 1, model=name)
        runs.append((name, inst, slimjax.solve_batch(inst, "successive-best")))
    for _ in range(repeats):
        for name, inst, sol in runs:
            for s in scales:
                _threshold.OMEGA_SCALE = s
                t = time.perf_counter()
                c = slimjax.certify(inst, sol)
                print(f"{name} scale {s:g}: gap {100 * float(c.gap[0]):.4f} % iterations {int(c.bound.iterations[0])} "
                      f"{c.status_names[0]} bound {float(c.lower[0]):.7g} seconds {c.bound.seconds:.1f} "
                      f"(call {time.perf_counter() - t:.1f})", flush=True)


if __name__ == "__main__":
    main()
