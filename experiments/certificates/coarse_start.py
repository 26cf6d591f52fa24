"""Warm-starting the threshold LP's PDHG from a coarse LP (issue 29 item 3, fourth pass).

The coarse LP keeps the ``--keep`` heaviest patterns of every (user, layer), their weights
rescaled to the layer's total; it is solved by the same PDHG (from the placement, as ``certify``
starts), then the full LP starts from the coarse primal x, z = min(1, min_k F(x)) and
  - ``mu=coarse``: the coarse μ on the kept patterns (divided by the weight scale, so μ/c is kept),
    the complementary-slackness guess at x elsewhere; the coarse storage prices λ;
  - ``mu=cs``: the complementary-slackness guess at x everywhere, the coarse λ.
The bound stays valid (the float64 dual value at the best dual point). Reported: full-LP
iterations, seconds (coarse + full, warm: the second of two runs in one process), certified gap.

    .venv/bin/python experiments/certificates/coarse_start.py --inst trace --keep 0 512 --coarse-iters 512

(--inst: trace, trace@SEED, trace_qwen, trace_olmoe or a preset name). The library form is
``ThresholdLP(coarse_patterns=..., coarse_iters=...)`` (see README.md, fourth pass).
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import slimjax  # noqa: E402
from slimjax.bounds import _api, _pdhg as pdhg, _threshold as th  # noqa: E402


def load(name: str):
    cache = Path(f"/tmp/coarse_start_{name}.pkl")
    if cache.exists():
        return pickle.loads(cache.read_bytes())
    if name.startswith("trace"):
        from tests.realistic import instance
        kind, _, seed = name.partition("@")  # trace@1: the deepseek trace with network seed 1
        inst = instance({"trace": "deepseek_v2_lite", "trace_qwen": "qwen", "trace_olmoe": "olmoe"}[kind],
                        seed=int(seed or 0))
    else:
        inst = slimjax.generate.instance(jax.random.key(0), model=name)
    sol = slimjax.solve(inst, "successive-best")
    b, _ = _api._as_batch(inst)
    x = np.asarray(sol.placement).reshape((1,) + tuple(b.latency.shape[2:])).astype(bool)
    obj = _api.objective64(b, x, "max")
    cache.write_bytes(pickle.dumps((b, x, obj)))
    return b, x, obj


def coarse_host(host, keep: int):
    w = host.weight  # [B, U, L, M]
    M = w.shape[-1]
    if keep >= M:
        return host, np.ones(w.shape, bool), np.ones(w.shape[:-1])
    top = np.argsort(-w, axis=-1, kind="stable")[..., :keep]
    wt = np.take_along_axis(w, top, -1)
    scale = w.sum(-1) / np.maximum(wt.sum(-1), 1e-300)  # [B, U, L]
    pat = np.take_along_axis(host.patterns, top[..., None], -2)
    has = np.zeros(w.shape, bool)
    np.put_along_axis(has, top, True, -1)
    return host._replace(patterns=pat, weight=wt * scale[..., None]), top, scale


def identity_start(d, s):
    return s


def run_pdhg(data64, dt, start, obj, max_iters, omega_scale=1.0, m=None, fn=th.start_from):
    m = m or slimjax.bounds.ThresholdLP()
    solver = pdhg.PDHG(th.FORMULATION, int(m.check_every), int(m.patience), halpern=True,
                       omega_scale=float(omega_scale))
    data = th.to_device(data64, dt)
    B = 1
    ctl = pdhg.Controls(jnp.asarray(obj / (1 + 1e-5), dt), jnp.asarray(m.rtol, dt), jnp.asarray(m.stall_rtol, dt),
                        jnp.int32(max_iters), upper=jnp.asarray(obj, dt), gap_rtol=jnp.asarray(m.gap_rtol, dt))
    st = pdhg.INIT_PROGRAM(solver, fn, data, jnp.full(B, -jnp.inf, dt), start)
    while True:
        st = pdhg.RUN_PROGRAM(solver, _api.CHECKS_PER_RUN, data, st, ctl)
        s = np.asarray(st.status)
        if not ((s == pdhg.STATUS_RUNNING) & (np.asarray(st.iters) < max_iters)).any():
            break
    return st


def full_start(full64, dt, st_c, top, scale, mode):
    """The full LP's start from the coarse state."""
    xc = st_c.v[0]  # [B, N, L, E]
    data = th.to_device(full64, dt)
    (x, z), (mu, _) = jax.vmap(th.start_from)(data, xc)
    lam = st_c.y[1]
    if mode == "coarse":
        muc = np.asarray(st_c.y[0])  # [B, U, L, Mc, K, Ic]
        mu = np.array(mu)
        If, Ic = mu.shape[-1], muc.shape[-1]
        n = min(If, Ic)
        muc = muc[..., :n] / scale[..., None, None, None]
        act = full64["act"]
        for b in range(mu.shape[0]):
            for u in range(mu.shape[1]):
                for l in range(mu.shape[2]):
                    mu[b, u, l, top[b, u, l], :, :n] = muc[b, u, l] * act[b, u, l, top[b, u, l], :, :n]
        mu = jnp.asarray(mu, dt)
    return (x, z), (mu, lam)


def once(name, keep, coarse_iters, mode, omega_carry):
    b, x, obj = load(name)
    dt = jnp.float32
    out = {}
    t0 = time.perf_counter()
    host = _api.host_batch(b, "max", True)
    full64 = th.build(host, "max")
    if keep == 0:  # baseline: certify's own start
        st = run_pdhg(full64, dt, jnp.asarray(x, dt), obj, 20000)
        st_c = None
    else:
        ch, top, scale = coarse_host(host, keep)
        c64 = th.build(ch, "max")
        st_c = run_pdhg(c64, dt, jnp.asarray(x, dt), obj, coarse_iters)
        out["coarse_iters"] = int(st_c.iters[0])
        out["coarse_s"] = time.perf_counter() - t0
        start = full_start(full64, dt, st_c, top, scale, mode)
        om = 1.0
        if omega_carry:
            d = th.to_device(full64, dt)
            nc = float(jnp.sqrt(jnp.sum(d.c[0] ** 2)))
            nq = float(jnp.sqrt(jnp.sum(d.q_hat[0] ** 2)))
            om = float(st_c.omega[0]) / (nc / nq)
        st = run_pdhg(full64, dt, start, obj, 20000, omega_scale=om, fn=identity_start)
    val = th.dual_value64(full64, jax.tree_util.tree_map(np.asarray, st.best_y))
    out["iters"] = int(st.iters[0])
    out["status"] = int(st.status[0])
    out["gap_pct"] = 100 * float(obj[0] / val[0] - 1)
    out["seconds"] = time.perf_counter() - t0
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--inst", default="trace")
    ap.add_argument("--keep", type=int, nargs="+", default=[0, 1024])
    ap.add_argument("--coarse-iters", type=int, default=512)
    ap.add_argument("--mu", default="coarse", choices=("coarse", "cs"))
    ap.add_argument("--omega-carry", action="store_true")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    for keep in a.keep:
        for r in range(a.reps):
            o = once(a.inst, keep, a.coarse_iters, a.mu, a.omega_carry)
            print(a.inst, f"keep={keep}", f"coarse_iters={a.coarse_iters}", f"mu={a.mu}", f"omega={a.omega_carry}",
                  f"rep={r}", o, flush=True)


if __name__ == "__main__":
    main()
