"""Console commands: ``slimjax`` (the Hydra app) and ``slimjax-collect`` (merge a multirun).

``slimjax`` is a thin ``@hydra.main`` around :func:`slimjax.experiment.run`; its config lives in
the installed package (``slimjax/conf``, shown as ``conf/`` at the top of the repository), so it
works from any working directory. Examples::

    slimjax                                         # the default study -> outputs/<date>/<time>/
    slimjax batch_size=32 model=olmoe_1b_7b solvers=[successive,greedy]
    slimjax -m network.servers=2,4 routing=latent,zipf logger=wandb   # 4 grid points
    slimjax -m hydra/launcher=local network.servers=2,4,8            # joblib, in parallel
    slimjax experiment=capacity_sweep                                 # a study (a multirun)
    slimjax-collect multirun/<sweep> --plot x=network.servers         # merged table + figure

A multirun goes to ``multirun/<name made from its overrides>``, so running the same command
again finds its finished grid points and skips them (``resume=true``).
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # before JAX starts a backend

import argparse
import hashlib
import re
import sys
from pathlib import Path

__all__ = ["CONF_DIR", "collect_main", "main", "sweep_slug"]

#: The packaged config directory (``slimjax/conf``).
CONF_DIR = str(Path(__file__).resolve().with_name("conf"))

# Hydra flags that take a value (skipped when naming a sweep).
_VALUE_FLAGS = {
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--info",
    "-i",
}


def sweep_slug(argv: list[str]) -> str:
    """A directory name for a multirun made from its overrides (sorted; hydra.* and resume ignored).

    >>> sweep_slug(["-m", "network.servers=2,4", "batch_size=16"])
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
        if key.startswith("hydra") or key in (
            "resume",
            "paths.multirun",
            "paths.outputs",
            "collect.out",
            "collect.x",
            "collect.y",
        ):
            continue
        overrides.append(a)
    if not overrides:
        return "default"
    s = "__".join(sorted(overrides)).replace("/", "-").replace("[", "").replace("]", "")
    s = re.sub(r"[^A-Za-z0-9._=,+\-]", "_", s)
    if len(s) > 120:
        s = s[:100] + "_" + hashlib.sha1(s.encode()).hexdigest()[:10]
    return s


def _hydra_app():
    import hydra
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
    def app(cfg: DictConfig):
        import logging

        from slimjax.experiment import enable_compilation_cache, run

        for name in ("jax", "matplotlib", "absl"):  # keep the job log about slimjax
            logging.getLogger(name).setLevel(logging.WARNING)

        if not cfg.paths.get("jax_cache"):  # paths.jax_cache=null: no cache, not the library's default one
            os.environ["SLIMJAX_CACHE"] = "0"
        enable_compilation_cache(cfg.paths.get("jax_cache"))
        res = run(cfg)
        best = res["summary"].get(res["best"], {}) if res.get("best") else {}
        return best.get("J_mean")

    return app


def main() -> None:
    """``slimjax``: the Hydra app (all arguments are Hydra overrides/flags)."""
    os.environ["SLIMJAX_SWEEP"] = sweep_slug(sys.argv[1:])
    _hydra_app()()


def collect_main(argv: list[str] | None = None) -> int:
    """``slimjax-collect DIR [--plot x=PARAM[,y=METRIC]] [--out DIR]``: merge a multirun directory."""
    p = argparse.ArgumentParser(
        prog="slimjax-collect",
        description="Merge the runs of a slimjax multirun directory into DIR/results_all.parquet and print a summary.",
    )
    p.add_argument("dir", help="a multirun directory (e.g. multirun/<sweep>)")
    p.add_argument(
        "--plot",
        action="append",
        default=[],
        metavar="x=PARAM[,y=METRIC]",
        help="figure of METRIC (default J) against the swept PARAM, one line per solver; repeatable",
    )
    p.add_argument("--out", default=None, help="also write results.csv and the figures here")
    p.add_argument("--logx", action="store_true", help="log-scale x axis")
    p.add_argument("--format", default="png", help="figure format (png, pdf, svg)")
    args = p.parse_args(argv)
    from slimjax.experiment import collect

    plots = []
    for spec in args.plot:
        kv = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
        if "x" not in kv:
            p.error(f"--plot {spec!r}: expected x=PARAM (e.g. --plot x=network.servers)")
        plots.append((kv["x"], kv.get("y", "J")))
    try:
        if not plots:
            collect(args.dir, out=args.out, fmt=args.format)
        for i, (x, y) in enumerate(plots):
            collect(args.dir, x=x, y=y, out=args.out, logx=args.logx, fmt=args.format, quiet=i > 0)
    except ValueError as e:
        print(f"slimjax-collect: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # python -m slimjax.cli ...
    main()
