"""A large batch on whatever accelerator JAX finds (a GPU or TPU; the CPU works too, slowly).

    python examples/gpu_batch.py                       # 16384 mixtral_8x7b instances
    python examples/gpu_batch.py --batch 64            # a quick run on a CPU

The batch is generated on the device, solved in chunks that fit ``memory_budget_mb`` (``"auto"``:
40 % of an accelerator's memory), each chunk sharded over all local devices. The first call
compiles; the second shows the throughput of a warm process.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import slimjax


def main(batch_size: int = 16384, solver: str = "successive", model: str = "mixtral_8x7b") -> dict:
    print("devices:", jax.devices())
    t0 = time.perf_counter()
    batch = slimjax.generate.instances(jax.random.key(0), batch_size, model=model, validate=False)
    jax.block_until_ready(batch.latency)
    print(f"generated {batch_size} {model} instances in {time.perf_counter() - t0:.2f} s; (U,N,L,E,M,K) = {batch.shape}")

    first = slimjax.solve_batch(batch, solver)  # compiles, then solves
    again = slimjax.solve_batch(batch, solver)  # the same programs: no compilation
    assert np.allclose(first.objective, again.objective, rtol=1e-6)
    assert bool(np.all(first.ok))
    rate = batch_size / again.seconds
    print(f"{solver}: compile {first.compile_seconds:.1f} s; solve {again.seconds:.3f} s "
          f"= {rate:,.0f} instances/s; mean J {float(np.mean(again.objective)):.4f} s per token")
    return {"instances_per_second": rate, "J": float(np.mean(again.objective))}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16384, help="instances (default 16384)")
    ap.add_argument("--solver", default="successive", help="a name from slimjax.methods() (default successive)")
    ap.add_argument("--model", default="mixtral_8x7b", help="a model preset (default mixtral_8x7b)")
    a = ap.parse_args()
    main(a.batch, a.solver, a.model)
