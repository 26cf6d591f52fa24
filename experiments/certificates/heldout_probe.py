"""A held-out probe for issue 29's certify targets: an instance from a per-token trace that no
tuning saw.

The trace is synthetic: a latent router per layer (token vectors z ~ N(0, I_16), router weights
~ N(0, 1.5²), a bias ~ N(0, 0.8²) per expert, Gumbel noise of scale 0.5, top-K), so co-activation
within a layer is structured but unlike the OLMoE/Qwen traces the defaults were tuned on. It is
turned into an instance by ``slimjax.generate.instance_from_trace`` exactly as
``tests/realistic.py`` does (a device and 2 servers, edge storage half the logged layers' bytes,
network seed 0). For ``--shape``:

- ``dsv2``: L = 26, E = 64, K = 6 (deepseek_v2_lite, the shape of the issue's instance);
- ``qwen3``: L = 48, E = 128, K = 8 (qwen3_30b_a3b).

Reported (wall seconds on this machine; "first" includes compiling or loading the program, "warm"
is the second call): ``successive`` and ``successive-best``, J; ``certify`` of ``successive-best``
with the defaults and with the coarse warm start off (``Auto(coarse_patterns=None)``), its gap,
status, PDHG iterations and the LP's own gap.

    .venv/bin/python experiments/certificates/heldout_probe.py --shape dsv2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import slimjax
from slimjax.bounds import Auto
from slimjax.generate import instance_from_trace

SHAPES = {"dsv2": (26, 64, 6, "deepseek_v2_lite"), "qwen3": (48, 128, 8, "qwen3_30b_a3b")}


def synthetic_trace(tokens: int, L: int, E: int, K: int, dim: int = 16, seed: int = 0) -> slimjax.traces.Trace:
    """Per-token top-K expert ids from a latent router per layer (see the module docstring)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((tokens, dim))
    ids = np.empty((tokens, L, K), np.int32)
    for layer in range(L):
        logits = z @ (1.5 * rng.standard_normal((dim, E))) + 0.8 * rng.standard_normal(E)
        logits = logits + 0.5 * rng.gumbel(size=(tokens, E))
        ids[:, layer] = np.argsort(-logits, axis=1)[:, :K]
    return slimjax.traces.Trace(expert_ids=ids, num_experts=E, source="synthetic latent router")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="dsv2")
    ap.add_argument("--tokens", type=int, default=8192)
    args = ap.parse_args()
    L, E, K, model = SHAPES[args.shape]
    tr = synthetic_trace(args.tokens, L, E, K)
    inst = instance_from_trace(tr, model=model, network={"servers": 2, "users": 1, "storage_fraction": 0.5}, key=0)
    out: dict = {"shape": args.shape, "instance_shape": list(inst.shape)}
    sol = None
    for m in ("successive", "successive-best"):
        _, first = timed(lambda m=m: slimjax.solve(inst, m))
        sol, warm = timed(lambda m=m: slimjax.solve(inst, m))
        out[m] = {"first_s": first, "warm_s": warm, "J": float(sol.objective)}
        print(m, out[m], flush=True)
    for name, method in (("certify_default", "auto"), ("certify_no_coarse", Auto(coarse_patterns=None))):
        _, first = timed(lambda method=method: slimjax.certify(inst, sol, method))
        c, warm = timed(lambda method=method: slimjax.certify(inst, sol, method))
        out[name] = {"first_s": first, "warm_s": warm, "gap_pct": 100 * float(c.gap), "status": int(c.bound.status),
                     "iterations": int(c.bound.iterations), "lp_gap": float(c.bound.lp_gap)}
        print(name, out[name], flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
