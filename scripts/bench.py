#!/usr/bin/env python
"""slimjax benchmark suite: side-by-side ratios measured in one run.

Every timing is the median of repeated runs after a warm-up call (compile excluded), except
``deepseek_v3_seconds`` which is end to end including compilation, as a user would see it.

    python scripts/bench.py --quick --json OUT.json      # < 10 min on 2 CPU cores
    python scripts/bench.py --json OUT.json             # full sizes

Parts:
  (a) objective: ``slimjax.objective`` on a batch of mixtral_8x7b instances vs the naive NumPy
      reference loop (tests/reference.py::latency_ref); also reported: vs a per-instance
      loop of a vectorized NumPy objective (tests/reference.py::latency_np), a harder baseline.
  (b) ``solve_batch(solver="successive")`` on mixtral_8x7b (1 device + 4 servers) vs the per-instance
      NumPy reference of the same algorithm (tests/reference_successive.py) and vs HiGHS ``milp``.
  (c) capacity-DP backends (``hull``, ``fptas``) vs ``dense`` at 8192 capacity units, L = 64, E = 64:
      speed and value lost on synthetic curves, value lost on the layer-oracle curves of generated
      mixtral_8x7b / olmoe_1b_7b / deepseek_v3 instances (tests/maxconv_curves.py) and J of the plain
      successive pass on mixtral_8x7b with each backend.
  (d) one deepseek_v3-scale instance (L=58, E=256, K=8, 9 nodes, 1024 tokens) with successive-fast.
  (r) the realistic setting (scripts/bench_parts/solvers.py): successive / greedy / successive-best
      on instances built from the shared real per-token traces (tests/realistic.py; skipped without
      ../shared) and successive-best end to end on deepseek_v3.
  (l) load-aware solving (scripts/bench_parts/load.py): a batch of 16 64-user mixtral instances,
      greedy on 4-user olmoe, the 4-user real-trace instance.
  (g) certificates (scripts/bench_parts/bounds.py): certify on the real-trace instances and the
      certified gap of successive-best on every model preset.
  (e) peak resident memory after each part (the process high-water mark).
  (f) what a user waits for: ``scripts/first_call.py`` in fresh subprocesses (import, generate one
      mixtral_8x7b instance, first ``solve`` of the default method and of ``successive``) with the
      persistent compilation cache off, with an empty cache and with the cache it filled, plus the
      warm single-instance ``solve`` (the same call again in the same process).
  (t) throughput of ``solve_batch(solver="successive")`` vs batch size, for several configurations.
  (s) scaling: time vs E (exact vs greedy oracle) and vs capacity units (dense vs hull DP).
      ``--plots DIR`` draws the curves of parts t and s.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
import _bootstrap  # noqa: E402  (a fresh clone: set up .venv and re-run there)

_bootstrap.ensure('dev,milp')

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import slimjax  # noqa: E402
from slimjax.ops._maxconv import capacity_dp  # noqa: E402
from tests.reference import latency_np  # noqa: E402

TARGETS = {
    "objective_speedup_vs_numpy": (">=", 50),
    "successive_speedup_vs_numpy": (">=", 100),
    "successive_speedup_vs_milp": (">=", 1000),
    "successive_speedup_vs_milp_medium": (">=", 1000),
    "hull_speedup_vs_dense": (">=", 20),
    "hull_value_loss_median": ("<=", 0.01),
    "fptas_speedup_vs_dense": (">=", 10),
    "fptas_J_loss_mixtral": ("<=", 0.01),
    "deepseek_v3_seconds": ("<=", 8),
    "first_solve_cold_s": ("<=", 6),
    "first_solve_plain_cold_s": ("<=", 2.5),
    "first_solve_warm_cache_s": ("<=", 1.5),
    "single_solve_ms": ("<=", 20),
    "import_s": ("<=", 1.5),
    "generate_one_s": ("<=", 1),
    # the realistic setting (parts r, l, g; scripts/bench_parts/)
    "deepseek_v3_successive_best_seconds": ("<=", 12),
    "load_mixtral64_s_per_instance": ("<=", 2),
    "load_greedy_olmoe4_s": ("<=", 30),
    "load_qwen4_s": ("<=", 60),
    "certify_real_trace_s": ("<=", 20),
    "certify_real_trace_gap_pct": ("<=", 0.5),
}


def log(*a):
    print(*a, flush=True)


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


def median_time(fn, reps: int) -> float:
    fn()  # warm-up (compile)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def block(x):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def machine() -> dict:
    dev = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
    }


def part_objective(B: int, ref_n: int, reps: int) -> dict:
    """JAX batched objective vs the naive NumPy reference (what speed is measured
    against) and, for context, vs a per-instance loop of a vectorized NumPy objective."""
    from tests.reference import latency_ref

    log(f"(a) objective: {B} mixtral_8x7b instances; naive NumPy reference on {ref_n}, vectorized NumPy on {4 * ref_n}")
    batch = slimjax.generate.instances(jax.random.key(1), B, model="mixtral_8x7b")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((B,) + batch.latency.shape[-3:]) < 0.3)
    f = jax.jit(slimjax.objective)
    t_jax = median_time(lambda: f(batch, x).block_until_ready(), reps) / B
    nv = 4 * ref_n
    host = [jax.tree_util.tree_map(np.asarray, batch[i]) for i in range(nv)]
    xh = np.asarray(x[:nv])
    t0 = time.perf_counter()
    Jn = np.array([latency_ref(host[i], xh[i]) for i in range(ref_n)])
    t_naive = (time.perf_counter() - t0) / ref_n
    t_vec = median_time(lambda: [latency_np(host[i], xh[i]) for i in range(nv)], 3) / nv
    J = np.asarray(f(batch, x))[:ref_n]
    err = float(np.max(np.abs(J - Jn) / np.abs(Jn)))
    log(f"    jax {t_jax*1e6:.2f} us/inst; naive NumPy {t_naive*1e6:.0f} us/inst; vectorized NumPy {t_vec*1e6:.1f} us/inst; rel err {err:.1e}")
    return {"objective_us_per_instance_jax": t_jax * 1e6, "objective_us_per_instance_numpy": t_naive * 1e6,
            "objective_us_per_instance_numpy_vectorized": t_vec * 1e6,
            "objective_speedup_vs_numpy": t_naive / t_jax, "objective_speedup_vs_numpy_vectorized": t_vec / t_jax,
            "objective_max_rel_err": err}


def part_successive(B: int, ref_n: int, milp_n: int, milp_limit: float, reps: int, medium_n: int = 0) -> dict:
    """successive (default options) vs HiGHS; the plain paper method (``order="fastest-first"``, no
    union-first, revisit or polish) vs its NumPy reference (tests/reference_successive.py, same options)."""
    from tests.reference_successive import successive_ref

    log(f"(b) successive: {B} mixtral_8x7b instances; NumPy reference on {ref_n}; HiGHS milp on {milp_n}")
    batch = slimjax.generate.instances(jax.random.key(2), B, model="mixtral_8x7b")
    grid = slimjax.ops.capacity_grid(batch)
    t_default = median_time(lambda: slimjax.solve_batch(batch, "successive-best", progress=False), reps) / B
    sol = slimjax.solve_batch(batch, "successive-best", progress=False)
    # The NumPy reference implements the plain paper method (one fastest-first pass, exact oracle,
    # dense DP, no union-first / revisit / polish) = the solver "successive": time JAX on exactly that.
    t_plain = median_time(lambda: slimjax.solve_batch(batch, "successive", progress=False), reps) / B
    plain = slimjax.solve_batch(batch, "successive", progress=False)
    host = [jax.tree_util.tree_map(np.asarray, batch[i]) for i in range(ref_n)]
    t0 = time.perf_counter()
    ref_J = []
    for i, h in enumerate(host):
        xr, _ = successive_ref(h, grid.size_units[i], grid.capacity_units[i], order="fastest-first",
                               oracle="exact", maxconv="dense", union_first="off", revisit=0)
        ref_J.append(latency_np(h, xr))
    t_ref = (time.perf_counter() - t0) / ref_n
    agree = float(np.max(np.abs(np.asarray(plain.objective[:ref_n]) / np.asarray(ref_J) - 1)))
    out = {"successive_instances": B, "successive_ms_per_instance": t_default * 1e3,
           "successive_instances_per_second": 1.0 / t_default,
           "successive_plain_ms_per_instance": t_plain * 1e3,
           "successive_ref_ms_per_instance": t_ref * 1e3, "successive_speedup_vs_numpy": t_ref / t_plain,
           "successive_vs_ref_max_rel_diff": agree,
           "successive_default_gain_vs_plain_mean": float(np.mean(1 - sol.objective / plain.objective))}
    log(f"    jax default {t_default*1e3:.3f} ms/inst ({1/t_default:.0f}/s); jax plain method {t_plain*1e3:.3f} ms/inst; "
        f"NumPy ref of the plain method {t_ref*1e3:.1f} ms/inst (same J within {agree:.1e})")
    if milp_n:
        ts, gaps, status = [], [], []
        for i in range(milp_n):
            m = slimjax.solve(batch[i], "milp", time_limit=milp_limit)
            ts.append(m.seconds)
            status.append(str(m.info.get("highs_status")))
            gaps.append(float(np.asarray(sol.objective[i]) / m.objective - 1))
        t_milp = statistics.median(ts)
        out.update({"milp_seconds_per_instance": t_milp, "milp_time_limit": milp_limit, "milp_status": status,
                    "successive_speedup_vs_milp": t_milp / t_default,
                    "successive_gap_to_milp_median": statistics.median(gaps)})
        log(f"    milp {t_milp:.2f} s/inst (status {status}), successive/milp J - 1 = {statistics.median(gaps):.2e}")
    if medium_n:
        out.update(part_medium(256, medium_n, reps))
    return out


def medium_batch(B: int) -> "slimjax.Instance":
    """Medium instances that HiGHS solves to optimality: N = 3 (device + 2 servers), L = 6, E = 8,
    K = 2, storage for 4 / 10 / 16 experts."""
    model = {"name": "medium", "layers": 6, "experts": 8, "top_k": 2, "hidden": 1024, "ffn": 2048}
    batch = slimjax.generate.instances(jax.random.key(7), B, model=model, network={"servers": 2})
    cap = jnp.asarray([4.0, 10.0, 16.0])[None, :] * batch.size[:, :1, 0]
    return batch.replace(capacity=cap.astype(batch.capacity.dtype))


def part_medium(B: int, milp_n: int, reps: int) -> dict:
    """The default method on B medium instances (batched) against HiGHS to optimality on milp_n
    of them, per instance, in this run."""
    batch = medium_batch(B)
    t_default = median_time(lambda: slimjax.solve_batch(batch, "successive-best", progress=False), reps) / B
    sol = slimjax.solve_batch(batch, "successive-best", progress=False)
    ts, gaps, status = [], [], []
    for i in range(milp_n):
        m = slimjax.solve(batch[i], "milp", time_limit=600.0)
        ts.append(m.seconds)
        status.append(str(m.info.get("highs_status")))
        gaps.append(float(np.asarray(sol.objective[i]) / m.objective - 1))
    t_milp = statistics.median(ts)
    out = {"medium_instances": B, "medium_ms_per_instance": t_default * 1e3, "medium_milp_seconds": ts,
           "medium_milp_status": status, "medium_gap_to_optimum": gaps,
           "successive_speedup_vs_milp_medium": t_milp / t_default}
    log(f"    medium (N=3, L=6, E=8, K=2, storage 4/10/16 experts): default {t_default*1e3:.3f} ms/inst on {B}; "
        f"HiGHS {t_milp:.2f} s/inst median of {milp_n} (status {status}); ratio {t_milp / t_default:.0f}x; "
        f"default J / optimum - 1: {', '.join(f'{g:.2e}' for g in gaps)}")
    return out


def random_curves(key, P: int, L: int, E: int):
    """P node problems: non-decreasing, mostly concave gain curves with some pair bumps [P, L, E+1]."""
    k1, k2, k3 = jax.random.split(key, 3)
    inc = jnp.sort(jax.random.exponential(k1, (P, L, E)) * jax.random.uniform(k2, (P, L, 1), minval=0.2, maxval=2.0), axis=-1)[..., ::-1]
    bump = (jax.random.uniform(k3, (P, L, E)) < 0.1) * inc * 0.5  # non-concave steps (co-activation)
    g = jnp.concatenate([jnp.zeros((P, L, 1)), jnp.cumsum(inc + bump, axis=-1)], axis=-1)
    return g


def interleaved_median(fns: dict, reps: int) -> dict:
    """Median seconds of each ``fn()`` after a warm-up, the functions timed in turn (round robin),
    so that a change of machine load hits all of them alike and their ratios stay meaningful."""
    for f in fns.values():
        f()
    ts = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in ts.items()}


def _dp_fn(backend: str, Qmax, eps: float | None = None):
    kw = {} if eps is None else {"eps": eps}
    return jax.jit(jax.vmap(lambda g, s, q: capacity_dp(g, s, q, Qmax=Qmax, backend=backend, **kw)))


def _losses(v, opt) -> dict:
    """Relative value lost against the optimum over the problems with a positive optimum."""
    v, opt = np.asarray(v, np.float64), np.asarray(opt, np.float64)
    ok = opt > 0
    loss = (opt[ok] - v[ok]) / opt[ok]
    return {"median": float(np.median(loss)), "mean": float(loss.mean()), "max": float(loss.max()),
            "total": float((opt[ok] - v[ok]).sum() / opt[ok].sum()), "problems": int(ok.sum())}


REAL_MODELS = (("mixtral_8x7b", 8), ("olmoe_1b_7b", 4), ("deepseek_v3", 1))  # (model, instances)


def part_hull(P: int, reps: int, Q: int = 8192, L: int = 64, E: int = 64, eps_sweep=(0.2, 0.05, 0.02)) -> dict:
    """Capacity-DP backends: ``hull`` and ``fptas`` (default eps, and an eps sweep) against ``dense``.

    Speed at Q, L, E on synthetic curves (times do not depend on the curve values, only the value
    lost does). Value lost on (1) the synthetic curves, (2) the layer-oracle curves of generated
    instances (``tests/maxconv_curves.py``: the node problems of the plain successive pass) at
    their own capacities, with ``fptas`` as used by the solver (exact when the capacity table is
    the smaller one) and forced onto its profit table (``Qmax=None``), (3) real olmoe curves at
    the speed-target scale (4 node problems stacked to L = 64, E = 64, 8 units per expert, Q),
    and (4) mean J of successive (fastest-first, no polish) on 8 mixtral_8x7b (exact oracle) and
    4 olmoe_1b_7b (greedy oracle) instances."""
    from slimjax.ops._maxconv import DEFAULT_EPS, _exact
    from tests.maxconv_curves import model_problems

    log(f"(c) capacity DP backends vs dense: {P} node problems, Q={Q}, L={L}, E={E}; fptas eps={DEFAULT_EPS}")
    g = random_curves(jax.random.key(3), P, L, E)
    s = jax.random.randint(jax.random.key(4), (P, L), 64, 257).astype(jnp.int32)
    Qs = jnp.full((P,), Q, jnp.int32)
    fns = {"dense": _dp_fn("dense", Q), "hull": _dp_fn("hull", Q), "fptas": _dp_fn("fptas", Q),
           "exact_fused": jax.jit(jax.vmap(lambda g, s, q: _exact(g, s, q, Q)))}
    fns.update({f"fptas_eps{e}": _dp_fn("fptas", Q, e) for e in eps_sweep})
    t = interleaved_median({k: (lambda f=f: block(f(g, s, Qs))) for k, f in fns.items()}, reps)
    res = {k: f(g, s, Qs) for k, f in fns.items()}
    vd = np.asarray(res["dense"].value)
    out = {"dense_ms_per_problem": t["dense"] / P * 1e3, "hull_ms_per_problem": t["hull"] / P * 1e3,
           "fptas_ms_per_problem": t["fptas"] / P * 1e3, "exact_fused_ms_per_problem": t["exact_fused"] / P * 1e3,
           "fptas_eps": DEFAULT_EPS, "hull_speedup_vs_dense": t["dense"] / t["hull"],
           "fptas_speedup_vs_dense": t["dense"] / t["fptas"], "fptas_speedup_vs_exact_fused": t["exact_fused"] / t["fptas"]}
    lh, lf = _losses(res["hull"].value, vd), _losses(res["fptas"].value, vd)
    out.update({"hull_value_loss_median": lh["median"], "hull_value_loss_max": lh["max"],
                "hull_value_loss_min": float(np.min((vd - np.asarray(res["hull"].value)) / vd)),
                "fptas_value_loss_median": lf["median"], "fptas_value_loss_max": lf["max"],
                "fptas_certified_gap_median": float(np.median(np.asarray(res["fptas"].bound) / np.asarray(res["fptas"].value) - 1))})
    log(f"    dense {out['dense_ms_per_problem']:.2f} ms, exact fused {out['exact_fused_ms_per_problem']:.2f} ms, "
        f"hull {out['hull_ms_per_problem']:.3f} ms ({out['hull_speedup_vs_dense']:.1f}x), fptas {out['fptas_ms_per_problem']:.2f} ms "
        f"({out['fptas_speedup_vs_dense']:.1f}x dense, {out['fptas_speedup_vs_exact_fused']:.1f}x exact fused) per problem")
    log(f"    synthetic value loss: hull median {lh['median']:.2e} max {lh['max']:.2e}; fptas median {lf['median']:.2e} max {lf['max']:.2e}, "
        f"certified gap median {out['fptas_certified_gap_median']:.2e}")
    sweep = []
    for e in eps_sweep:
        r = res[f"fptas_eps{e}"]
        le = _losses(r.value, vd)
        sweep.append({"eps": e, "ms_per_problem": t[f"fptas_eps{e}"] / P * 1e3, "speedup_vs_dense": t["dense"] / t[f"fptas_eps{e}"],
                      "value_loss_median": le["median"], "value_loss_max": le["max"]})
        log(f"    fptas eps={e}: {sweep[-1]['ms_per_problem']:.2f} ms ({sweep[-1]['speedup_vs_dense']:.1f}x), loss median {le['median']:.2e} max {le['max']:.2e}")
    out["fptas_eps_sweep"] = sweep

    # (2) real layer-oracle curves at their own capacities
    real = {}
    for model, B in REAL_MODELS:
        pr = model_problems(model, B)
        ga, sa, qa = jnp.asarray(pr.g), jnp.asarray(pr.s), jnp.asarray(pr.Q)
        rf = {"dense": _dp_fn("dense", pr.Qmax), "hull": _dp_fn("hull", pr.Qmax), "fptas": _dp_fn("fptas", pr.Qmax),
              "fptas_profit_table": _dp_fn("fptas", None)}
        tr = interleaved_median({k: (lambda f=f, a=(ga, sa, qa): block(f(*a))) for k, f in rf.items()}, reps)
        vals = {k: f(ga, sa, qa) for k, f in rf.items()}
        opt = np.asarray(vals["dense"].value)
        row = {"problems": int(len(opt)), "L": int(pr.g.shape[1]), "E": int(pr.g.shape[2] - 1), "Qmax": pr.Qmax,
               "dense_ms_per_problem": tr["dense"] / len(opt) * 1e3}
        for k in ("hull", "fptas", "fptas_profit_table"):
            row[k] = _losses(vals[k].value, opt)
            row[k]["speedup_vs_dense"] = tr["dense"] / tr[k]
        row["fptas_profit_table"]["certified_gap_max"] = float(np.max(np.asarray(vals["fptas_profit_table"].bound)
                                                                    / np.maximum(np.asarray(vals["fptas_profit_table"].value), 1e-30) - 1))
        real[model] = row
        log(f"    {model} curves ({row['problems']} node problems, L={row['L']}, E={row['E']}, Qmax={pr.Qmax}): value loss mean/max "
            f"hull {row['hull']['mean']:.2e}/{row['hull']['max']:.2e}, fptas {row['fptas']['mean']:.2e}/{row['fptas']['max']:.2e}, "
            f"fptas on its profit table {row['fptas_profit_table']['mean']:.2e}/{row['fptas_profit_table']['max']:.2e}; "
            f"speed vs dense: hull {row['hull']['speedup_vs_dense']:.1f}x, fptas {row['fptas']['speedup_vs_dense']:.1f}x, "
            f"profit table {row['fptas_profit_table']['speedup_vs_dense']:.1f}x")
        if model == "olmoe_1b_7b":
            olmoe = pr
    out["real_curves"] = real
    out["fptas_value_loss_real_max"] = max(r["fptas"]["max"] for r in real.values())
    out["fptas_profit_table_value_loss_real_max"] = max(r["fptas_profit_table"]["max"] for r in real.values())
    out["hull_value_loss_real_mean"] = {m: r["hull"]["mean"] for m, r in real.items()}

    # (3) real olmoe curves at the speed-target scale
    k = L // olmoe.g.shape[1]
    n = olmoe.g.shape[0] // k
    if n and olmoe.g.shape[2] == E + 1:
        gs = jnp.asarray(olmoe.g[: n * k].reshape(n, k * olmoe.g.shape[1], E + 1))
        ss = jnp.full((n, L), 8, jnp.int32)
        qs = jnp.full((n,), Q, jnp.int32)
        opt = np.asarray(fns["dense"](gs, ss, qs).value)
        ls = {b: _losses(fns[b](gs, ss, qs).value, opt) for b in ("hull", "fptas")}
        out["real_at_scale"] = {"problems": n, **ls}
        out["fptas_value_loss_real_at_scale_max"] = ls["fptas"]["max"]
        log(f"    olmoe curves stacked to L={L}, E={E}, 8 units per expert, Q={Q} ({n} problems): value loss median/max "
            f"hull {ls['hull']['median']:.2e}/{ls['hull']['max']:.2e}, fptas {ls['fptas']['median']:.2e}/{ls['fptas']['max']:.2e}")

    # (4) J of the plain successive pass with each backend: mixtral_8x7b (exact oracle), olmoe_1b_7b (greedy)
    for model, B, oracle, tag in (("mixtral_8x7b", 8, "exact", "mixtral"), ("olmoe_1b_7b", 4, "greedy", "olmoe")):
        batch = slimjax.generate.instances(jax.random.key(0), B, model=model)
        J = {b: float(np.mean(slimjax.solve_batch(batch, "successive", maxconv=b,
                                                  oracle=oracle, progress=False).objective)) for b in ("dense", "hull", "fptas")}
        out[f"successive_J_{tag}"] = J
        out[f"hull_J_loss_{tag}"] = J["hull"] / J["dense"] - 1
        out[f"fptas_J_loss_{tag}"] = J["fptas"] / J["dense"] - 1
        log(f"    successive (fastest-first, no polish, {oracle} oracle) on {B} {model}: mean J dense {J['dense']:.6f}, "
            f"hull {J['hull']:.6f} ({out[f'hull_J_loss_{tag}']:+.2%}), fptas {J['fptas']:.6f} ({out[f'fptas_J_loss_{tag}']:+.2%})")
    return out


def part_deepseek(tokens: int = 1024) -> dict:
    log(f"(d) deepseek_v3 scale: 1 instance, 8 servers + device, {tokens} tokens, successive-fast (end to end)")
    t0 = time.perf_counter()
    inst = slimjax.generate.instance(jax.random.key(5), model="deepseek_v3", network={"servers": 8},
                                     routing={"tokens": tokens})
    block(inst)
    t_gen = time.perf_counter() - t0
    sol = slimjax.solve(inst, "successive-fast")
    t_total = time.perf_counter() - t0
    pop = slimjax.solve(inst, "popularity")
    U, N, L, E, M, K = inst.shape
    log(f"    shape U={U} N={N} L={L} E={E} M={M} K={K}: generate {t_gen:.1f}s, end to end {t_total:.1f}s; "
        f"J successive-fast {sol.objective:.4g} vs popularity {pop.objective:.4g}")
    out = {"deepseek_v3_seconds": t_total, "deepseek_v3_generate_seconds": t_gen,
           "deepseek_v3_solve_seconds": sol.seconds, "deepseek_v3_compile_seconds": sol.compile_seconds,
           "deepseek_v3_J": float(sol.objective),
           "deepseek_v3_J_popularity": float(pop.objective), "deepseek_v3_shape": [U, N, L, E, M, K]}
    # the default method at the largest scales (end to end in this process: generate + solve)
    for model in ("qwen3_30b_a3b", "deepseek_v3"):
        t0 = time.perf_counter()
        inst = slimjax.generate.instance(jax.random.key(5), model=model, network={"servers": 8}, routing={"tokens": tokens})
        best = slimjax.solve(inst, "successive-best")
        fast = slimjax.solve(inst, "successive-fast")
        t = time.perf_counter() - t0 - fast.seconds - fast.compile_seconds
        out[f"{model}_successive_best_seconds"] = t
        out[f"{model}_successive_best_compile_seconds"] = best.compile_seconds
        out[f"{model}_successive_best_gain_vs_fast"] = float(1 - best.objective / fast.objective)
        log(f"    {model} successive-best end to end {t:.1f}s (compile {best.compile_seconds:.1f}s): "
            f"J {float(best.objective):.4g}, {out[f'{model}_successive_best_gain_vs_fast']:.2%} below successive-fast")
    return out


def _first_call(method: str, env: dict) -> dict:
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        full = {k: v for k, v in os.environ.items() if not k.startswith(("SLIMJAX_CACHE", "JAX_COMPILATION_CACHE"))}
        full.update(env)
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "first_call.py"), "--method", method,
                        "--json", f.name], env=full, check=True, capture_output=True)
        with open(f.name) as g:
            return json.load(g)


def part_first_call(reps: int) -> dict:
    """Fresh processes, each figure the minimum over ``reps`` repetitions (a loaded machine only
    ever adds time): the default method with the cache off ("cold") and with the cache an earlier
    process filled ("warm cache"), the plain method cold, and the same call again in-process."""
    import tempfile

    log(f"(f) first call in a fresh process (mixtral_8x7b, 1 instance; min of {reps})")
    runs: dict = {"cold": [], "warm": [], "plain": [], "empty": []}
    for _ in range(reps):
        runs["cold"].append(_first_call("successive-best", {"SLIMJAX_CACHE": "0"}))
        runs["plain"].append(_first_call("successive", {"SLIMJAX_CACHE": "0"}))
        with tempfile.TemporaryDirectory() as d:
            runs["empty"].append(_first_call("successive-best", {"SLIMJAX_CACHE_DIR": d}))
            runs["warm"].append(_first_call("successive-best", {"SLIMJAX_CACHE_DIR": d}))
    lo = lambda k, f: min(r[f] for r in runs[k])
    out = {
        "import_s": lo("cold", "import_s"),
        "generate_one_s": lo("cold", "generate_s"),
        "first_solve_cold_s": lo("cold", "first_solve_s"),
        "first_solve_empty_cache_s": lo("empty", "first_solve_s"),
        "first_solve_warm_cache_s": lo("warm", "first_solve_s"),
        "first_solve_plain_cold_s": lo("plain", "first_solve_s"),
        "single_solve_ms": lo("cold", "second_solve_ms"),
        "single_solve_plain_ms": lo("plain", "second_solve_ms"),
        "first_call_runs": runs,
    }
    for k, v in out.items():
        if k != "first_call_runs":
            log(f"    {k}: {v:.3f}")
    return out


def part_scaling(B: int, experts, units, reps: int) -> dict:
    """Scaling curves: time per instance vs the number of experts E with the
    exact and the greedy layer oracle (plain successive, mixtral_8x7b with E changed), and time per
    node problem vs capacity units with the dense and the hull DP (random curves, L = 32, E = 16)."""
    import dataclasses

    from slimjax.generate import MODELS

    log(f"(s) scaling: E in {list(experts)} (exact vs greedy oracle, {B} instances); capacity units in {list(units)} (dense vs hull)")
    rows_e = []
    for E in experts:
        model = dataclasses.replace(MODELS["mixtral_8x7b"], experts=E, name=f"mixtral_E{E}")
        b = slimjax.generate.instances(jax.random.key(7), B, model=model, routing={"tokens": 256})
        block(b)
        for oracle in ("exact", "greedy"):
            run = lambda b=b, oracle=oracle: slimjax.solve_batch(  # noqa: E731
                b, "successive", oracle=oracle, progress=False)
            t = median_time(run, reps) / B
            J = float(np.mean(run().objective))
            rows_e.append({"E": E, "oracle": oracle, "ms_per_instance": t * 1e3, "mean_J": J})
            log(f"    E={E} {oracle}: {t*1e3:.3f} ms/inst, mean J {J:.6f}")
    rows_q = []
    P, L, Ec = 16, 32, 16
    g = random_curves(jax.random.key(8), P, L, Ec)
    s = jax.random.randint(jax.random.key(9), (P, L), 1, 5).astype(jnp.int32)
    for Q in units:
        Qs = jnp.full((P,), Q, jnp.int32)
        vals = {}
        for backend in ("dense", "hull"):
            f = jax.jit(jax.vmap(lambda g, s, q, backend=backend, Q=Q: capacity_dp(g, s, q, Qmax=Q, backend=backend).value))
            t = median_time(lambda f=f: f(g, s, Qs).block_until_ready(), reps) / P
            vals[backend] = np.asarray(f(g, s, Qs))
            rows_q.append({"units": Q, "backend": backend, "ms_per_problem": t * 1e3})
        loss = float(np.median((vals["dense"] - vals["hull"]) / vals["dense"]))
        rows_q[-1]["value_loss_median"] = loss
        log(f"    Q={Q}: dense {rows_q[-2]['ms_per_problem']:.3f} ms, hull {rows_q[-1]['ms_per_problem']:.3f} ms per problem, hull loss median {loss:.2e}")
    return {"scaling_experts": rows_e, "scaling_units": rows_q}


def write_plots(res: dict, folder: str) -> list[str]:
    """Figures of the scaling curves present in ``res`` (PNG files in ``folder``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    dev = res["machine"]["device"]
    written = []

    def save(fig, name):
        path = os.path.join(folder, name)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    def curves(rows, group, x, y, label, xlabel, ylabel, title, name, xscale="log"):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for g in dict.fromkeys(r[group] for r in rows):
            rs = [r for r in rows if r[group] == g]
            ax.plot([r[x] for r in rs], [r[y] for r in rs], "o-", label=label(g))
        ax.set(xscale=xscale, yscale="log", xlabel=xlabel, ylabel=ylabel, title=f"{title} ({dev})")
        ax.legend()
        save(fig, name)

    if res.get("throughput"):
        curves(res["throughput"], "method", "batch", "ms_per_instance", str, "batch size", "ms per instance",
               "successive, mixtral_8x7b", "scaling_batch.png")
    if res.get("scaling_experts"):
        curves(res["scaling_experts"], "oracle", "E", "ms_per_instance", lambda o: f"{o} oracle", "experts per layer E",
               "ms per instance", "plain successive vs E", "scaling_experts.png", xscale="linear")
    if res.get("scaling_units"):
        curves(res["scaling_units"], "backend", "units", "ms_per_problem", str, "capacity units Q",
               "ms per node problem", "capacity DP, L=32, E=16", "scaling_units.png")
    return written


_BEST = slimjax.methods()["successive-best"].stages()[0]
#: Configurations of the throughput part: label -> solver.
THROUGHPUT_CONFIGS = {
    "successive": slimjax.methods()["successive-best"],  # the default solver (successive-best)
    "plain": slimjax.solvers.Successive(),  # the paper method ("successive")
    "plain+polish": slimjax.chain(slimjax.solvers.Successive(), slimjax.solvers.Polish(rounds=16)),
    "best-of": _BEST,  # successive-best's candidates (orders, union-first, revisit, restarts), no polish
    "best-of-norevisit": _BEST.replace(revisit=0),
}


def part_throughput(sizes, chunk: int, configs=("successive", "plain")) -> dict:
    """Time per instance of ``solve_batch`` vs batch size (where batching saturates), for the
    default ``successive`` and other configurations (:data:`THROUGHPUT_CONFIGS`)."""
    log(f"(t) successive throughput vs batch size {list(sizes)}, configurations {list(configs)}")
    big = slimjax.generate.instances(jax.random.key(6), max(sizes), model="mixtral_8x7b")
    block(big)
    rows = []
    for label in configs:
        solver = THROUGHPUT_CONFIGS[label]
        for B in sizes:
            b = big[:B]
            run = lambda b=b, B=B, solver=solver: slimjax.solve_batch(b, solver, progress=False, chunk_size=min(B, chunk))  # noqa: E731
            run()  # warm-up (compile)
            ts = []
            for _ in range(2):
                t0 = time.perf_counter()
                sol = run()
                ts.append(time.perf_counter() - t0)
            t, J = statistics.median(ts), float(np.mean(sol.objective))
            rows.append({"method": label, "batch": B, "seconds": t, "ms_per_instance": t / B * 1e3,
                         "instances_per_second": B / t, "mean_J": J})
            log(f"    {label} B={B}: {t:.3f}s, {t/B*1e3:.4f} ms/inst, {B/t:.0f} inst/s, mean J {J:.6f}")
    out = {"throughput": rows}
    for label in configs:
        key = "successive" if label == "successive" else f"successive_{label.replace('+', '_').replace('-', '_')}"
        out[f"{key}_max_instances_per_second"] = max(r["instances_per_second"] for r in rows if r["method"] == label)
    return out


def part_module(name: str, quick: bool) -> dict:
    """``scripts/bench_parts/<name>.py``'s ``measure(quick)`` (the realistic setting's parts)."""
    import importlib

    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)  # bench_parts reads the real-trace instances of tests/realistic.py
    mod = importlib.import_module(f"bench_parts.{name}")
    return mod.measure(quick)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller reference loops; < 10 min on 2 CPU cores")
    ap.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    ap.add_argument("--parts", default="abcdfrlg", help="which parts to run (subset of 'abcdfrlgts'; f = first call in fresh processes, r = real-trace instances and deepseek_v3 (bench_parts/solvers.py), l = load-aware (bench_parts/load.py), g = certificates (bench_parts/bounds.py), t = throughput vs batch size, s = scaling in E and capacity units)")
    ap.add_argument("--successive-batch", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=8192, help="chunk_size cap of the throughput part")
    ap.add_argument("--milp-n", type=int, default=None, help="instances solved by HiGHS in part b")
    ap.add_argument("--milp-limit", type=float, default=None, help="HiGHS time limit per instance (s)")
    ap.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[16, 64, 256, 1024],
                    help="batch sizes of the throughput part 't' (comma-separated)")
    ap.add_argument("--reps", type=int, default=None,
                    help="timing repetitions of parts c and f (default 7 and 2 with --quick, else 9 and 3; more under a loaded machine)")
    ap.add_argument("--plots", metavar="DIR", help="write the figures of the scaling curves (parts t, s) to DIR")
    ap.add_argument("--experts", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="E values of the scaling part 's' (default 4,8,12,16; --quick 4,8,12)")
    ap.add_argument("--scaling-batch", type=int, default=None, help="instances per point of part 's' (default 256; --quick 64)")
    ap.add_argument("--units", type=lambda v: [int(x) for x in v.split(",")], default=[256, 1024, 4096, 16384],
                    help="capacity units of the scaling part 's'")
    ap.add_argument("--configs", type=lambda v: v.split(","), default=["successive", "plain"],
                    help=f"configurations of the throughput part 't' (comma-separated; from {list(THROUGHPUT_CONFIGS)})")
    args = ap.parse_args(argv)
    bad = [c for c in args.configs if c not in THROUGHPUT_CONFIGS]
    if bad:
        ap.error(f"--configs: unknown {bad}; choose from {list(THROUGHPUT_CONFIGS)}")
    q = args.quick
    res: dict = {"machine": machine(), "quick": q}
    log(f"machine: {res['machine']}")
    parts = {
        "a": lambda: part_objective(4096, 8 if q else 32, 5 if q else 10),
        "b": lambda: part_successive(args.successive_batch, 2 if q else 8, args.milp_n if args.milp_n is not None else (1 if q else 3),
                                     args.milp_limit if args.milp_limit else (60.0 if q else 300.0), 2 if q else 5,
                                     3 if q else 8),
        "c": lambda: part_hull(8 if q else 32, args.reps or (11 if q else 9)),
        "d": lambda: part_deepseek(),
        "f": lambda: part_first_call(args.reps or (2 if q else 3)),
        "t": lambda: part_throughput(args.sizes, args.chunk, args.configs),
        "r": lambda: part_module("solvers", q),
        "l": lambda: part_module("load", q),
        "g": lambda: part_module("bounds", q),
        "s": lambda: part_scaling(args.scaling_batch or (64 if q else 256), args.experts or ([4, 8, 12] if q else [4, 8, 12, 16]), args.units, 2 if q else 3),
    }
    for p in args.parts:
        t0 = time.perf_counter()
        res.update(parts[p]())
        res[f"peak_rss_mb_after_{p}"] = peak_rss_mb()
        log(f"    part {p}: {time.perf_counter() - t0:.1f}s wall, peak RSS so far {peak_rss_mb():.0f} MB")
        if args.json:  # the parts done so far survive an interrupted run (rewritten in full at the end)
            _write_json(args.json, {**res, "parts_done": args.parts[: args.parts.index(p) + 1]})
    res["peak_rss_mb"] = peak_rss_mb()
    log("\n| figure | value | target | met |\n|---|---|---|---|")
    met_all = True
    for k, (op, thr) in TARGETS.items():
        if k not in res:
            continue
        v = res[k]
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        met = v >= thr if op == ">=" else v <= thr
        met_all &= met
        log(f"| {k} | {v:.4g} | {op} {thr} | {'yes' if met else 'NO'} |")
    log(f"| peak_rss_mb | {res['peak_rss_mb']:.0f} | | |")
    res["all_targets_met"] = bool(met_all)
    if args.plots:
        for path in write_plots(res, args.plots):
            log(f"wrote {path}")
    if args.json:
        _write_json(args.json, res)
        log(f"wrote {args.json}")
    return 0


def _write_json(path: str, res: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=2, default=str)
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
