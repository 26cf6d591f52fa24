"""Console commands: ``slimjax`` (the Hydra app) and ``slimjax-collect`` (merge a multirun).

``slimjax`` is a thin ``@hydra.main`` around :func:`slimjax.app.run`; its config lives in the
installed package (``slimjax/conf``, shown as ``conf/`` at the top of the repository), so it
works from any working directory. Examples::

    slimjax                                         # the default study -> outputs/default/
    slimjax batch_size=32 model=olmoe_1b_7b solvers=[successive,greedy]
    slimjax -m network.servers=2,4 routing=latent,zipf logger=wandb   # 4 grid points
    slimjax -m hydra/launcher=local network.servers=2,4,8            # joblib, in parallel
    slimjax experiment=capacity_sweep                                 # a study (a multirun)
    slimjax-collect multirun/<sweep> --plot x=network.servers         # merged table + figure

A run goes to ``outputs/<name made from its overrides>`` and a multirun to
``multirun/<name made from its overrides>``, so running the same command again finds its results:
complete ones are skipped, an interrupted run continues with its next chunk (``resume=true``).
Ctrl-C stops a run with one line saying so.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # before JAX starts a backend

import argparse
import dataclasses
import hashlib
import re
import signal
import sys
from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["CONF_DIR", "INTERRUPTED", "collect_main", "main", "solver_help", "sweep_slug"]

#: The packaged config directory (``slimjax/conf``).
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
#: What a run interrupted with Ctrl-C prints (the exit status is 130).
INTERRUPTED = "interrupted: rerun the same command to resume"

# Hydra flags that take a value (skipped when naming a run).
_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun",
                "--info", "-i"}
# Overrides that do not change results (see slimjax.app._hash): they do not name the run directory,
# so adding them to a command finds the same results.
_SLUG_SKIP_TOP = ("hydra", "resume", "warmup", "paths", "output", "collect", "logger", "stream", "distributed",
                  "coordinator")
_SLUG_SKIP = ("solve_options.chunk_size", "solve_options.memory_budget_mb")


def sweep_slug(argv: list[str]) -> str:
    """A directory name made from a command's overrides (sorted; settings that do not change
    results, such as ``logger``, ``resume``, ``paths`` and ``hydra``, left out).

    >>> sweep_slug(["-m", "network.servers=2,4", "batch_size=16", "logger=wandb"])
    'batch_size=16__network.servers=2,4'
    """
    overrides = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a.startswith("-"):
            skip = a in _VALUE_FLAGS and "=" not in a
            continue
        key = a.split("=", 1)[0].lstrip("+~")
        top = re.split(r"[./]", key, maxsplit=1)[0]
        if top in _SLUG_SKIP_TOP or key in _SLUG_SKIP:
            continue
        overrides.append(a)
    if not overrides:
        return "default"
    s = "__".join(sorted(overrides)).replace("/", "-").replace("[", "").replace("]", "")
    s = re.sub(r"[^A-Za-z0-9._=,+\-]", "_", s)
    if len(s) > 200:  # file names stop at 255 bytes
        s = s[:180] + "_" + hashlib.sha1(s.encode()).hexdigest()[:10]
    return s


def solver_help() -> str:
    """Every named solver and every option of each solver class, with its meaning (for ``--help``)."""
    from slimjax.solvers import methods

    named = methods()
    width = max(len(n) for n in named) + 2
    lines = ["== Solvers ==", "Run several with solvers=[a,b,...] ('A+B' chains them); set an option with",
             "solver.<name>.<option>=value (e.g. solver.successive.order=given).", ""]
    users: dict[type, list[str]] = {}
    for name, obj in named.items():
        lines.append(f"  {name:<{width}}{obj!r}")
        for stage in obj.stages():
            users.setdefault(type(stage), []).append(name)
    for cls, names in users.items():
        lines += ["", f"{cls.__name__} (solver.{{{','.join(dict.fromkeys(names))}}}.<option>):"]
        for f in dataclasses.fields(cls):
            doc = f.metadata.get("doc", "")
            default = f.default if f.default is not dataclasses.MISSING else "(required)"
            lines.append(f"  {f.name} (default {default!r}): {doc}")
    return "\n".join(lines).replace("$", "$$")  # Hydra substitutes $NAME in the help template


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("slimjax_solvers"):
        OmegaConf.register_new_resolver("slimjax_solvers", solver_help)


_register_resolvers()


def _hydra_app():
    import hydra
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
    def app(cfg: DictConfig):
        import logging

        from slimjax.app._config import enable_compilation_cache
        from slimjax.app._run import run

        for name in ("jax", "matplotlib", "absl"):  # keep the job log about slimjax
            logging.getLogger(name).setLevel(logging.WARNING)
        if not cfg.paths.get("jax_cache"):  # paths.jax_cache=null: no cache, not the library's default one
            os.environ["SLIMJAX_CACHE"] = "0"
        enable_compilation_cache(cfg.paths.get("jax_cache"))
        try:
            res = run(cfg)
        except Exception as e:  # Ctrl-C inside a C extension surfaces as SystemError with it as cause
            if _caused_by_interrupt(e):
                raise KeyboardInterrupt from e
            raise
        best = res["summary"].get(res["best"], {}) if res.get("best") else {}
        return best.get("J_mean")

    return app


def _caused_by_interrupt(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's stop) raised in the main thread, to end like Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Terminated


def main() -> None:
    """``slimjax``: the Hydra app (all arguments are Hydra overrides/flags).

    Ctrl-C (SIGINT) and SIGTERM stop a run cleanly: the files being written are dropped, every
    finished chunk stays, loggers are closed as failed, and one line says how to resume
    (exit status 130, or 143 for SIGTERM).
    """
    slug = sweep_slug(sys.argv[1:])
    os.environ["SLIMJAX_SWEEP"] = slug
    os.environ["SLIMJAX_RUN"] = slug
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _hydra_app()()
    except KeyboardInterrupt as e:
        sys.stdout.flush()
        print(INTERRUPTED, file=sys.stderr, flush=True)
        sys.exit(143 if isinstance(e, _Terminated) else 130)


def collect_main(argv: list[str] | None = None) -> int:
    """``slimjax-collect DIR [--plot x=PARAM[,y=METRIC]] [--out DIR]``: merge a multirun directory."""
    p = argparse.ArgumentParser(
        prog="slimjax-collect",
        description="Merge the runs of a slimjax multirun directory into DIR/results_all.parquet and print a summary.",
    )
    p.add_argument("dir", help="a multirun directory (e.g. multirun/<sweep>)")
    p.add_argument("--plot", action="append", default=[], metavar="x=PARAM[,y=METRIC]",
                   help="figure of METRIC (default J) against the swept PARAM, one line per solver; repeatable")
    p.add_argument("--out", default=None, help="also write results.csv and the figures here")
    p.add_argument("--logx", action="store_true", help="log-scale x axis")
    p.add_argument("--format", default="png", help="figure format (png, pdf, svg)")
    args = p.parse_args(argv)
    from slimjax.app._collect import collect

    plots = []
    for spec in args.plot:
        kv = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
        if "x" not in kv:
            p.error(f"--plot {spec!r}: expected x=PARAM (e.g. --plot x=network.servers)")
        plots.append((kv["x"], kv.get("y", "J")))
    try:
        if not plots:
            collect(args.dir, out=args.out, fmt=args.format, rows=False)
        for i, (x, y) in enumerate(plots):
            collect(args.dir, x=x, y=y, out=args.out, logx=args.logx, fmt=args.format, quiet=i > 0, rows=False)
    except ValueError as e:
        print(f"slimjax-collect: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
