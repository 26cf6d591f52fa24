"""``run(cfg)``: one study point, in one piece or streamed chunk by chunk, resumable.

Order of work: validate everything (:func:`~slimjax.app.preflight`), skip if the directory holds
complete results for this config's hash, generate and solve, write, summarize, mark complete.

*In one piece* when the batch fits half the memory budget (and one process runs): the files of
:mod:`slimjax.app._results` for a run in one piece. *In chunks* otherwise (or with
``stream.chunk``): each chunk is generated, solved by every solver, evaluated and written as its
own part files before the next starts; the solver gets the other half of the budget. So memory
is bounded by ``solve_options.memory_budget_mb`` whatever ``batch_size`` is, and an interrupted
run keeps every finished chunk: rerunning the same command continues with the next one. The
summary is computed from the written dataset without loading it.

*Several processes* (``distributed=true``): chunk c runs on process ``c % process_count``. Process
0 decides for all what must be the same everywhere: whether the run is skipped (its view of the
completion marker) and the chunk layout (:class:`_Layout`: the smallest memory budget of all
processes, or the layout of the finished chunks process 0 finds), after every process has checked
that all run the same config (the completion hash, which leaves the memory budget out).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from slimjax._io import atomic_write
from slimjax._memory import instance_bytes
from slimjax.app import _results as R
from slimjax.app._batch import BatchSource
from slimjax.app._config import output_dir_for, plain, preflight, sweep_name
from slimjax.app._evaluate import evaluate
from slimjax.app._hash import MARKER, SUMMARY, code_fingerprint, config_hash, is_complete, read_marker, resume_or_run
from slimjax.app._progress import Reporter, make_console
from slimjax.app._solve import solve_rows
from slimjax.app._summary import print_summary, summarize, summarize_dataset

__all__ = ["SUMMARY", "run"]

log = logging.getLogger("slimjax")
#: what a run directory holds before any result (a failed run's folder holding only these is removed)
_BOOKKEEPING = (".hydra", "config.yaml", ".stream.json")
#: share of the memory budget for a chunk's own data (the rest is the solver's working memory)
DATA_SHARE = 0.5
#: bytes the app holds per instance of a chunk, as a multiple of the instance's own arrays
#: (generation temporaries, device and host copies, merged patterns, evaluation)
DATA_FACTOR = 8.0


@runtime_checkable
class _Rows(Protocol):
    """What :class:`_Layout` reads of its source (a :class:`BatchSource`): the row count and shape."""

    size: int
    shape: tuple


class _Layout:
    """How the run's rows are cut: ``chunk`` rows per chunk, ``chunks`` of them (1 = in one piece).

    With several processes, **process 0 decides** and every process adopts its decision, so that
    chunk c means the same rows everywhere: each process proposes what its own settings give (the
    rows its memory budget holds, its ``stream.chunk``, the layout of finished chunks it finds in
    ``.stream.json``); the proposals are exchanged in one small round (:func:`_exchange`) and every
    process computes the same layout from them: process 0's recorded layout when it resumes, else
    the ``stream.chunk`` every process gives, else the chunk that the *smallest* memory budget of
    all processes holds (so no process exceeds its budget), at most ``ceil(batch / processes)``.
    Processes with different memory budgets therefore write complementary chunks. Different
    ``stream.chunk`` values (or batch sizes) are refused with a ``ValueError`` on every process.
    """

    def __init__(self, plan, src: _Rows, topo, stored: dict | None, digest: str):
        B = src.size
        P = topo.process_count
        per = DATA_FACTOR * instance_bytes(src.shape) + len(plan.names) * (np.prod(src.shape[1:4]) + 600)
        fits = max(1, min(B, int(DATA_SHARE * plan.budget_bytes // per)))
        resumed = int(stored["chunk"]) if stored and stored.get("config_hash") == digest and stored.get("size") == B else 0
        explicit = 0 if plan.chunk == "auto" else int(plan.chunk)
        every = _exchange(np.array([B, resumed, explicit, fits], np.int64), topo)  # [P, 4], row p = process p
        if (every[:, 0] != every[0, 0]).any():
            raise ValueError(f"batch_size: the processes have different batches {every[:, 0].tolist()}; give every "
                             "process the same batch_size / instance.path")
        if (every[:, 2] != every[0, 2]).any():
            asked = ["auto" if c == 0 else int(c) for c in every[:, 2]]
            raise ValueError(f"stream.chunk: the processes ask for different chunk sizes {asked} (by process); "
                             "give every process the same stream.chunk (or auto)")
        if every[0, 1]:
            chunk = int(every[0, 1])  # resume with the layout the finished chunks have (process 0's record)
        elif every[0, 2]:
            chunk = int(every[0, 2])
        else:
            chunk = int(every[:, 3].min())  # the smallest budget of all processes decides
        if P > 1:
            chunk = min(chunk, math.ceil(B / P))
        self.chunk = max(1, min(chunk, B))
        self.chunks = math.ceil(B / self.chunk)
        self.streamed = self.chunks > 1 or P > 1
        self.size = B
        if P > 1 and topo.process_index != 0 and min(fits, math.ceil(B / P)) != self.chunk:
            log.info("layout: chunks of %d rows (decided with process 0; this process's budget alone gives %d)",
                     self.chunk, min(fits, math.ceil(B / P)))

    def bounds(self, c: int) -> tuple[int, int]:
        return c * self.chunk, min(self.size, (c + 1) * self.chunk)


def _exchange(row: np.ndarray, topo) -> np.ndarray:
    """Every process's ``row`` (int64), stacked in process order, on every process (one round)."""
    if topo.process_count == 1:
        return row[None]
    from slimjax import distributed

    return np.asarray(distributed.gather(np.asarray(row, np.int64)[None])).reshape(topo.process_count, -1)


def _ours(out: Path) -> bool:
    """Whether ``out`` holds anything besides Hydra's bookkeeping (``.hydra/``, the job log)."""
    if not out.is_dir():
        return False
    return any(p.name not in _BOOKKEEPING and not (p.is_file() and p.suffix == ".log") for p in out.iterdir())


def _cleanup(out: Path) -> None:
    """After a failure: remove the run directory when nothing worth keeping is in it."""
    if out.is_dir() and not _ours(out) and out.resolve() != Path.cwd().resolve():
        shutil.rmtree(out, ignore_errors=True)


def _clear_other_layout(out: Path, streamed: bool, fresh: bool) -> None:
    """Remove results of an earlier run in this directory that this run will not overwrite (they
    belong to another config or code: a matching one was skipped), so that no reader mixes them
    with this run's; ``fresh`` (``resume=false``): also the finished chunks of this layout."""
    if streamed:
        for name in (R.RESULTS, R.PLACEMENTS, R.INSTANCES, SUMMARY):
            (out / name).unlink(missing_ok=True)
        if fresh:
            R.clear_chunks(out)
    else:
        R.clear_chunks(out)


def _join(cfg: DictConfig):
    from slimjax import distributed

    if not cfg.get("distributed", False):
        return distributed.Topology(0, 1, 0, 0)
    c = plain(cfg.get("coordinator")) or {}
    return distributed.initialize(c.get("address"), c.get("num_processes"), c.get("process_id"))


def _agree(digest: str, topo, complete: bool) -> bool:
    """Every process must run the same config (a mistyped override on one task is caught here);
    returns whether to skip the run: process 0's view of the directory decides for every process
    (so that no process skips while another recomputes, whatever a shared file system shows each)."""
    if topo.process_count == 1:
        return complete
    from slimjax import distributed

    mine = np.frombuffer(bytes.fromhex(digest) + bytes([bool(complete)]), np.uint8)
    every = distributed.gather(mine[None])
    if not (every[:, :-1] == mine[:-1]).all():
        raise ValueError("distributed: the processes run different configs (their completion hashes differ); "
                         "give every process the same overrides")
    return bool(every[0, -1])


def _result(out: Path, summary: pd.DataFrame, skipped: bool, files: dict | None = None) -> dict:
    s = {
        r["solver"]: {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items() if k != "solver"}
        for r in summary.to_dict("records")
    }
    best = min(s, key=lambda k: s[k]["J_mean"]) if s else None
    return {"output_dir": str(out), "skipped": skipped, "summary": s, "best": best, "files": files or {}}


def _figures_on_disk(out: Path) -> dict[str, Path]:
    names = ("latency_per_solver", "placement_heatmap", "token_cdf")
    return {p.stem: p for p in sorted(out.iterdir()) if p.stem in names and p.is_file()}


def _logger_rows(out: Path) -> pd.DataFrame:
    """One result row per solver (the config columns the loggers record)."""
    import pyarrow.dataset as ds

    d = R.results_dataset(out)
    first = d.head(1, columns=["instance"]).column(0)[0].as_py()
    return d.to_table(filter=ds.field("instance") == first).to_pandas().drop_duplicates("solver")


def _print_end(rep: Reporter, out: Path, files: dict, logger) -> None:
    rep.line(f"results: {files.get('results', out)}")
    if files.get("figures"):
        rep.line("figures: " + ", ".join(str(p) for p in files["figures"].values()))
    if getattr(logger, "location", None):
        rep.line(f"{logger.kind}: {logger.location}")


def _skip(cfg: DictConfig, out: Path, rep: Reporter, digest: str, main: bool) -> dict:
    from slimjax.app._loggers import make_logger

    if not main:  # process 0 reports (and it decided to skip: see _agree)
        return _result(out, pd.DataFrame(columns=["solver", "J_mean"]), skipped=True)
    summary = pd.read_csv(out / SUMMARY) if (out / SUMMARY).is_file() else summarize_dataset(R.results_dataset(out))
    rep.line(f"resume: {out} already holds complete results for this config; skipped", style="dim")
    files = {"results": out / (R.RESULTS if (out / R.RESULTS).is_file() else R.RESULTS_DIR),
             "figures": _figures_on_disk(out)}
    marker = read_marker(out) or {}
    kind = OmegaConf.select(cfg, "logger.kind", default="none") or "none"
    logger = None
    if kind != "none" and kind not in marker.get("logged", []):  # a logger added later: log what is stored
        logger = make_logger(cfg, out, group=sweep_name())
        ok = False
        try:
            logger.log_run(cfg, _logger_rows(out), summary, files["figures"])
            ok = True
        finally:
            logger.finish(exit_code=0 if ok else 1)
        marker["logged"] = sorted(set(marker.get("logged", [])) | {kind})
        with atomic_write(out / MARKER) as tmp:
            tmp.write_text(json.dumps(marker))
        rep.line(f"resume: logged the stored results to {kind} (nothing recomputed)")
    if OmegaConf.select(cfg, "output.summary", default=True):
        print_summary(summary, f"slimjax: {out} (stored results)", rep.console)
    _print_end(rep, out, files, logger)
    return _result(out, summary, skipped=True, files=files)


def run(cfg: DictConfig) -> dict:
    """Run one study point: generate, solve with every listed method, evaluate, write outputs.

    Args:
      cfg: a composed config (``conf/config.yaml``; Hydra's compose API or ``@hydra.main``).

    Returns:
      ``{"output_dir", "skipped", "summary": {solver: {J_mean, J_ci95, J_rel, ...}}, "best", "files"}``.

    Raises:
      ValueError: an invalid config value (naming the field), before any instance is generated.
    """
    out = output_dir_for(cfg)
    if cfg.get("caching") is not None:  # experiment=caching: placement vs per-token caches
        from slimjax.app._caching import run_caching_point

        return run_caching_point(cfg, out)
    if cfg.get("dynamic") is not None:  # experiment=dynamic: policies over timelines
        if cfg.get("distributed", False):
            _cleanup(out)
            raise ValueError(
                "distributed: experiment=dynamic runs its whole study in one process (with distributed=true every "
                "process would run every timeline and log its own run); set distributed=false, and spread several "
                "dynamic studies over processes or nodes as a multirun instead, e.g. "
                "`slimjax -m experiment=dynamic seed=0,1,2,3 hydra/launcher=slurm`")
        return _run_dynamic(cfg, out)
    try:
        topo = _join(cfg)  # before anything starts JAX's backend
        plan = preflight(cfg)  # solver names and options, execution options, precision, paths
    except BaseException:
        _cleanup(out)  # Hydra made the run directory already
        raise
    main = topo.process_index == 0
    rep = Reporter(make_console(), quiet=not main)
    rep.line(f"slimjax: {', '.join(plan.names)} -> {out}")
    digest = config_hash(cfg)
    if _agree(digest, topo, bool(cfg.get("resume", True)) and is_complete(out, digest=digest)):
        return _skip(cfg, out, rep, digest, main)

    from slimjax.app._loggers import NullLogger, make_logger

    logger = NullLogger()
    ok = False
    try:
        import jax

        out.mkdir(parents=True, exist_ok=True)
        if main:
            (out / MARKER).unlink(missing_ok=True)
            with atomic_write(out / "config.yaml") as tmp:
                tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        k_gen, k_solve = jax.random.split(jax.random.key(int(cfg.seed)))
        src = BatchSource(cfg, k_gen)
        layout = _Layout(plan, src, topo, R.read_stream(out) if main else None, digest)  # process 0 decides
        if main:
            logger = make_logger(cfg, out, group=sweep_name())
        if main:
            _clear_other_layout(out, layout.streamed, fresh=not cfg.get("resume", True))
        how = "in one piece" if not layout.streamed else f"in {layout.chunks} chunks of {layout.chunk:,}"
        procs = f" over {topo.process_count} processes" if topo.process_count > 1 else ""
        rep.line(f"slimjax: {src.size:,} instances (U,N,L,E,M,K={src.shape}) {how}{procs}")
        if layout.streamed:
            df, sols, token_lat, batch = None, None, None, None
            _run_chunks(cfg, plan, src, layout, k_solve, out, topo, rep, digest)
        else:
            df, sols, token_lat, batch = _run_whole(cfg, plan, src, k_solve, out, rep)
        if topo.process_count > 1:
            from slimjax import distributed

            distributed.barrier("slimjax-chunks-done")
        if not main:
            ok = True
            return _result(out, pd.DataFrame(columns=["solver", "J_mean"]), skipped=False)
        files = _finish(cfg, plan, src, layout, out, rep, logger, digest, df, sols, token_lat, batch)
        ok = True
        return files
    except BaseException:
        if main:
            _cleanup(out)
        raise
    finally:
        logger.finish(exit_code=0 if ok else 1)


def _run_dynamic(cfg: DictConfig, out: Path) -> dict:
    from slimjax.app._dynamic import run_dynamic

    return resume_or_run(cfg, out, Reporter(make_console()), config_hash(cfg), run_dynamic, lambda: _cleanup(out))


def _run_whole(cfg, plan, src: BatchSource, k_solve, out: Path, rep: Reporter):
    t0 = time.perf_counter()
    rep.start(src.size, "solving")
    batch = src.rows(0, src.size)
    log.info("generated %d instances in %.2f s", src.size, time.perf_counter() - t0)
    sols = solve_rows(batch, plan.solvers, k_solve, lo=0, whole=True, execution=plan.execution,
                      on_progress=lambda f: rep.update(f * src.size))
    df, token_lat = evaluate(cfg, batch, sols, src.extra, plan.solvers)
    secs = rep.stop()
    rep.line(f"solved {src.size:,} instances with {len(sols)} solver(s) in {secs:.1f} s (compilation included)")
    R.write_parquet(df, out / R.RESULTS)
    R.write_placements(out / R.PLACEMENTS, {n: s.placement for n, s in sols.items()})
    if OmegaConf.select(cfg, "output.instances", default=True):
        from slimjax._io import save

        save(out / R.INSTANCES, batch)
    return df, sols, token_lat, batch


def _run_chunks(cfg, plan, src: BatchSource, layout: _Layout, k_solve, out: Path, topo, rep: Reporter,
                digest: str) -> None:
    from slimjax import distributed

    main = topo.process_index == 0
    stored = R.read_stream(out)
    meta = {"config_hash": digest, "size": layout.size, "chunk": layout.chunk, "chunks": layout.chunks}
    if main and stored != meta:
        if stored is not None or R.done_chunks(out):
            rep.line("resume: the chunks in this directory belong to another config or layout; recomputing")
            R.clear_chunks(out)
        R.write_stream(out, meta)
    if topo.process_count > 1:
        distributed.barrier("slimjax-layout")
    done = R.done_chunks(out)
    mine = [c for c in range(layout.chunks) if c % topo.process_count == topo.process_index]
    todo = [c for c in mine if c not in done]
    total = sum(layout.bounds(c)[1] - layout.bounds(c)[0] for c in mine)
    before = total - sum(layout.bounds(c)[1] - layout.bounds(c)[0] for c in todo)
    if before:
        rep.line(f"resume: {len(mine) - len(todo)} of {len(mine)} chunks already done; continuing")
    # the chunk's data has half the budget (layout); the solver the other half
    exe = dict(plan.execution, memory_budget_mb=(1 - DATA_SHARE) * plan.budget_bytes / 2**20)
    save_instances = OmegaConf.select(cfg, "output.instances", default=True) is True
    rep.start(total, "solving", done=before)
    finished = before
    for c in todo:
        lo, hi = layout.bounds(c)
        batch = src.rows(lo, hi, pad_to=layout.chunk)
        sols = solve_rows(batch, plan.solvers, k_solve, lo=lo, whole=False, execution=exe,
                          on_progress=lambda f, n=hi - lo, f0=finished: rep.update(f0 + f * n))
        df, _ = evaluate(cfg, batch, sols, src.extra, plan.solvers, first=lo, chunk=c)
        if save_instances:
            from slimjax._io import save

            save(out / R.INSTANCES_DIR / f"part-{c:06d}.npz", batch)
        R.write_placements(R.chunk_path(out, "placements", c), {n: s.placement for n, s in sols.items()})
        R.write_parquet(df, R.chunk_path(out, "results", c))  # last: the chunk now counts as done
        finished += hi - lo
        rep.update(finished)
    secs = rep.stop()
    if todo:
        rate = (finished - before) / max(secs, 1e-9)
        rep.line(f"solved {finished - before:,} instances in {len(todo)} chunks in {secs:.1f} s "
                 f"({rate:,.3g} instances/s, compilation included)")


def _chunk_figures(cfg, src: BatchSource, out: Path, summary: pd.DataFrame, fmt: str) -> dict:
    """The run's figures from the written chunks (every instance counted, one chunk in memory)."""
    from slimjax import plots

    figs = {"latency_per_solver": plots.latency_per_solver(
        R.read_results(out, columns=["solver", "J"]), out / f"latency_per_solver.{fmt}")}
    want = OmegaConf.select(cfg, "output.heatmap_solver")
    ranked = summary.sort_values("J_mean", na_position="last").solver
    s = want if want in set(summary.solver) else ranked.iloc[0]
    total, count = None, 0
    for p in sorted((out / R.PLACEMENTS_DIR).glob("part-*.npz")):
        with np.load(p) as z:
            x = z[s]
        part = x.sum(0, dtype=np.float64)
        total = part if total is None else total + part
        count += x.shape[0]
    figs["placement_heatmap"] = plots.placement_heatmap(
        (total / max(count, 1))[None], out / f"placement_heatmap.{fmt}",
        title=f"placement of {s}: node x layer (mean over {count} instances)", users=int(src.shape[0]))
    first = src.rows(0, 1)[0]
    with np.load(R.chunk_path(out, "placements", 0)) as z:
        x0 = np.asarray(z[s][0], bool)
    row0 = pd.read_parquet(R.chunk_path(out, "results", 0), columns=["solver", "instance", "J"])
    j0 = row0.J[(row0.solver == s) & (row0.instance == 0)]
    if len(j0) and np.isfinite(j0.iloc[0]):  # as in one piece: the figures of a solved instance 0
        from slimjax._explain import explain

        ex = explain(first, x0)
        figs["expert_placement"] = plots.expert_placement(first, x0, out / f"expert_placement.{fmt}",
                                                          title=f"{s}, instance 0: where each expert is cached")
        figs["layer_contribution"] = plots.layer_contribution(ex, out / f"layer_contribution.{fmt}")
    tokens = src.extra.get("tokens")
    if tokens is not None:
        import slimjax

        agg = OmegaConf.select(cfg, "solve_options.aggregation") or "max"
        with np.load(R.chunk_path(out, "placements", 0)) as z:
            lat = {n: np.asarray(slimjax.replay(first, z[n][0], tokens, aggregation=agg)) for n in z.files}
        figs["token_cdf"] = plots.token_cdf(lat, out / f"token_cdf.{fmt}")
    return figs


def _finish(cfg, plan, src, layout, out: Path, rep: Reporter, logger, digest: str, df, sols, token_lat,
            batch) -> dict:
    from slimjax import plots

    summary = summarize(df) if df is not None else summarize_dataset(R.results_dataset(out))
    R.write_csv(summary, out / SUMMARY)
    figures: dict[str, Any] = {}
    fmt = OmegaConf.select(cfg, "output.figure_format", default="png")
    if OmegaConf.select(cfg, "output.figures", default=True):
        if df is not None:
            figures = plots.run_figures(df, sols, batch, out, token_lat=token_lat, fmt=fmt,
                                        heatmap_solver=OmegaConf.select(cfg, "output.heatmap_solver"))
        else:
            figures = _chunk_figures(cfg, src, out, summary, fmt)
    files = {"results": out / (R.RESULTS_DIR if layout.streamed else R.RESULTS), "summary": out / SUMMARY,
             "placements": out / (R.PLACEMENTS_DIR if layout.streamed else R.PLACEMENTS), "figures": figures}
    if OmegaConf.select(cfg, "output.summary", default=True):
        model = OmegaConf.select(cfg, "model.name") if src.kind != "file" else Path(str(cfg.instance.path)).name
        print_summary(summary, f"slimjax: {src.size} x {model} (U,N,L,E,M,K={src.shape}), J in s", rep.console)
    rows = df.drop_duplicates("solver") if df is not None else _logger_rows(out)
    logger.log_run(cfg, rows, summary, figures)
    kind = OmegaConf.select(cfg, "logger.kind", default="none") or "none"
    meta = {"config_hash": digest, "code": code_fingerprint(), "rows": src.size * len(plan.names),
            "instances": src.size, "solvers": list(plan.names), "finished": time.time(),
            "logged": [] if kind == "none" else [kind]}
    with atomic_write(out / MARKER) as tmp:  # last: the run now counts as complete
        tmp.write_text(json.dumps(meta))
    _print_end(rep, out, files, logger)
    return _result(out, summary, skipped=False, files=files)
