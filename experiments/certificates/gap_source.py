#!/usr/bin/env python
"""Which side of a certified gap is loose: the threshold-LP bound or the ``successive-best`` solution?

    .venv/bin/python experiments/certificates/gap_source.py --preset olmoe_1b_7b --layers 2 --limit 600
    .venv/bin/python experiments/certificates/gap_source.py --kind qwen --layers 1 --patterns 400 --limit 600

Builds a reduced copy of an instance (its first ``--layers`` layers, storage scaled by the share
of the kept layers' bytes; optionally only the ``--patterns`` heaviest patterns per layer, weights
renormalised), then reports on it: J of ``successive-best``, the certified bound of ``certify``
(``auto``: the threshold LP by PDHG), the threshold LP on HiGHS, and the **threshold MILP** on
HiGHS (the same model with x binary: its LP relaxation is the threshold LP, so HiGHS starts from
the tightest bound we have; z stays continuous, which is exact at binary x). When HiGHS proves
optimality, J* is known and the gap splits into "bound below J*" and "J above J*".
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import jax
import numpy as np

import slimjax
from slimjax import _highs
from slimjax.bounds import _api, _threshold


def reduce(inst, layers, patterns):
    """The first ``layers`` layers (capacity scaled by their share of the bytes) and, optionally,
    the ``patterns`` heaviest patterns per (user, layer), renormalised."""
    f = {k: np.asarray(getattr(inst, k)) for k in ("latency", "fallback", "size", "capacity", "patterns", "weight",
                                                     "traffic", "base")}
    L = f["size"].shape[0]
    keep = min(layers or L, L)
    share = f["size"][:keep].sum() / f["size"].sum()
    pat, w = f["patterns"][:, :keep], f["weight"][:, :keep].astype(np.float64)
    if patterns and patterns < w.shape[-1]:
        top = np.argsort(-w, axis=-1, kind="stable")[..., :patterns]
        w = np.take_along_axis(w, top, -1)
        pat = np.take_along_axis(pat, top[..., None], -2)
    w = w / w.sum(-1, keepdims=True)
    return slimjax.Instance(latency=f["latency"][:, :, :keep], fallback=f["fallback"][:, :keep],
                            size=f["size"][:keep], capacity=f["capacity"] * share, patterns=pat,
                            weight=w.astype(np.float32), traffic=f["traffic"], base=f["base"])


def threshold_model(d, b=0):
    """The threshold LP of instance b as a HiGHS model, x marked integer: (model, offset)."""
    act, c, fidx, xg = d["act"][b], d["c"][b], d["fidx"][b], d["xgather"][b]
    L = act.shape[1]
    N = d["q_hat"].shape[-1]
    E = xg.shape[2]
    mdl = _highs.Model()
    xcol = mdl.cols(N * L * E, integer=True)
    zmask = c > 0
    zcol = np.full(c.shape, -1, np.int64)
    zcol[zmask] = mdl.cols(int(zmask.sum()), cost=-c[zmask])
    uu, ll, mm, kk, ii = np.nonzero(act > 0)
    r = mdl.rows(len(uu), -np.inf, 0.0)
    mdl.coef(r, zcol[uu, ll, mm, ii], 1.0)
    f = fidx[uu, ll, mm, kk, ii].astype(np.int64)
    rank, e = f % (N + 1), (f // (N + 1)) % E
    on = np.arange(N)[None, :] < rank[:, None]
    mdl.coef(np.broadcast_to(r[:, None], on.shape)[on], xcol[xg[uu, ll, e][:, :N]][on], -1.0)
    store = mdl.rows(N, -np.inf, d["q_hat"][b])
    mdl.coef(store[np.repeat(np.arange(N), L * E)], xcol, np.tile(np.repeat(d["s_hat"][b], E), N))
    return mdl, float(d["j0"][b])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset")
    ap.add_argument("--kind")
    ap.add_argument("--layers", type=int, default=0)
    ap.add_argument("--patterns", type=int, default=0)
    ap.add_argument("--limit", type=float, default=600.0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.preset:
        inst = slimjax.generate.instances(jax.random.key(0), 1, model=a.preset)[0]
        name = a.preset
    else:
        from tests.realistic import instance

        inst, name = instance(a.kind), a.kind
    inst = reduce(inst, a.layers, a.patterns)
    print(f"{name} reduced: shape {inst.shape} (layers {a.layers or 'all'}, patterns {a.patterns or 'all'})", flush=True)
    t = time.perf_counter()
    sol = slimjax.solve(inst, "successive-best")
    cert = slimjax.certify(inst, sol, target_gap=None)
    J, lb = float(cert.objective), float(cert.lower)
    print(f"successive-best J {J:.7g} ({time.perf_counter() - t:.1f} s); certified bound {lb:.7g} "
          f"({cert.status_names}), gap {100 * (J / lb - 1):.3f} %", flush=True)
    b, _ = _api._as_batch(inst)
    d = _threshold.build(_api.host_batch(b))
    mdl, off = threshold_model(d)
    h = _highs.new_highs(a.limit, a.threads)
    t = time.perf_counter()
    _highs.run(h, mdl, True, off)
    lp = float(h.getInfo().objective_function_value)
    print(f"threshold LP on HiGHS {lp:.7g} ({time.perf_counter() - t:.1f} s)", flush=True)
    h = _highs.new_highs(a.limit, a.threads)
    t = time.perf_counter()
    status = _highs.run(h, mdl, False, off)
    info = h.getInfo()
    inc, bnd = float(info.objective_function_value), float(info.mip_dual_bound)
    x = np.asarray(h.getSolution().col_value)[: mdl.ncol][: np.prod(inst.latency.shape[1:])] > 0.5
    N, L, E = inst.latency.shape[1:]
    Jx = float(slimjax.objective(inst, x.reshape(N, L, E))) if x.size == N * L * E else float("nan")
    print(f"threshold MILP on HiGHS ({a.limit:.0f} s limit, {time.perf_counter() - t:.1f} s): {status}; incumbent "
          f"{inc:.7g} (J {Jx:.7g}), dual bound {bnd:.7g}, nodes {int(info.mip_node_count)}", flush=True)
    print(f"  successive-best vs incumbent {100 * (J / inc - 1):+.3f} %; dual bound vs LP {100 * (bnd / lp - 1):+.3f} %; "
          f"certified gap against the MILP's dual bound {100 * (J / bnd - 1):.3f} %", flush=True)


if __name__ == "__main__":
    main()
