"""The app's config: plain values, output directories, precision, solver objects, a pre-flight check.

Everything a run needs from its composed config is read and validated here, before any instance
is generated (:func:`preflight`), so that a typo in a solver name or option costs a second, not a
batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "EXECUTION_KEYS",
    "Plan",
    "enable_compilation_cache",
    "execution_options",
    "make_solver",
    "output_dir_for",
    "plain",
    "preflight",
    "set_precision",
    "solver_config",
    "solver_names",
    "sweep_name",
    "write_solver_configs",
]

log = logging.getLogger("slimjax")

#: keys of ``solve_options``: keyword arguments of ``solve_batch`` (not solver options); ``progress`` is not
#: one of them, because the app owns the progress display (``output.progress``)
EXECUTION_KEYS = ("aggregation", "capacity_unit", "chunk_size", "memory_budget_mb", "merge_patterns")


def plain(node: Any) -> Any:
    """A config node as plain Python (dicts, lists, scalars), interpolations resolved."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def output_dir_for(cfg: DictConfig) -> Path:
    """``cfg.paths.output_dir`` if set, else the Hydra run/job directory, else the cwd."""
    explicit = OmegaConf.select(cfg, "paths.output_dir")
    if explicit:
        return Path(str(explicit)).expanduser()
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # not inside a Hydra app (e.g. run(cfg) from Python)
        return Path.cwd()


def sweep_name() -> str | None:
    """The multirun directory's name when running inside a Hydra multirun job."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if str(hc.mode) == "RunMode.MULTIRUN":
            return Path(str(hc.sweep.dir)).name
    except Exception:
        pass
    return None


def set_precision(precision: str) -> None:
    """App-level dtype switch (never called by library code): float32 or float64."""
    import jax

    if precision not in ("float32", "float64"):
        raise ValueError(f"precision: must be float32 or float64, got {precision!r}")
    jax.config.update("jax_enable_x64", precision == "float64")


def enable_compilation_cache(path: str | None) -> None:
    """Turn on JAX's persistent compilation cache in ``path`` (None/empty: leave it off)."""
    if not path:
        return
    import jax

    path = os.path.expanduser(str(path))
    try:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except Exception as e:  # a read-only home must not stop the app
        log.warning("JAX compilation cache disabled (%s)", e)


def execution_options(cfg: DictConfig) -> dict:
    """``solve_options`` (the problem-level and execution keywords of ``solve_batch``)."""
    opts = dict(plain(cfg.get("solve_options")) or {})
    unknown = set(opts) - set(EXECUTION_KEYS)
    if unknown:
        raise ValueError(f"solve_options: unknown key(s) {sorted(unknown)}; valid keys are {list(EXECUTION_KEYS)}")
    return opts


def solver_names(cfg: DictConfig) -> list[str]:
    """``cfg.solvers`` as a list of names (refusing an empty list and duplicates)."""
    names = [str(n) for n in (cfg.get("solvers") or [])]
    if not names:
        raise ValueError("solvers: the list is empty; name at least one solver (slimjax.methods())")
    if len(set(names)) != len(names):
        raise ValueError(f"solvers: duplicate names in {names}")
    return names


def make_solver(cfg: DictConfig, name: str):
    """The solver object of ``name`` (a name from ``slimjax.methods()`` or ``"A+B"``) with the
    options of ``solver.<name>`` (for ``"A+B"``: ``solver.A`` for stage A, ``solver.B`` for B)."""
    from slimjax.solvers import as_solver, chain

    table = plain(OmegaConf.select(cfg, "solver")) or {}
    parts = str(name).split("+")
    if len(parts) == 1:
        return as_solver(name, **(table.get(name) or {}))
    if len(set(parts)) != len(parts):
        raise ValueError(f"solvers: {name!r} names a stage twice")
    return chain(*(as_solver(p, **(table.get(p) or {})) for p in parts))


class Plan:
    """What a run will do, checked before any work: the solver objects and the execution options."""

    def __init__(self, cfg: DictConfig):
        from slimjax._memory import memory_budget_bytes

        set_precision(str(cfg.precision))
        B = cfg.get("batch_size")
        if OmegaConf.select(cfg, "instance.path") is None and (
            isinstance(B, bool) or not isinstance(B, int) or B < 1
        ):
            raise ValueError(f"batch_size: must be an integer >= 1, got {B!r}")
        self.names = solver_names(cfg)
        self.solvers = {n: make_solver(cfg, n) for n in self.names}  # unknown names/options fail here
        self.execution = execution_options(cfg)
        self.budget_bytes = memory_budget_bytes(self.execution.get("memory_budget_mb", "auto"))
        chunk = OmegaConf.select(cfg, "stream.chunk", default="auto")
        if chunk != "auto" and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"stream.chunk: must be an integer >= 1 or 'auto', got {chunk!r}")
        self.chunk = chunk
        kind = OmegaConf.select(cfg, "logger.kind", default="none")
        if kind not in (None, "none", "csv", "wandb"):
            raise ValueError(f"logger.kind: must be none, csv or wandb, got {kind!r}")
        path = OmegaConf.select(cfg, "instance.path")
        if path is not None and not Path(os.path.expanduser(str(path))).is_file():
            raise ValueError(f"instance.path: no such file: {path}")
        if path is None and OmegaConf.select(cfg, "routing.kind") == "trace":
            trace = OmegaConf.select(cfg, "routing.path")
            if not trace:
                raise ValueError("routing.path: routing=trace needs a trace file (routing.path=/path/to/trace.npz)")
            if not Path(os.path.expanduser(str(trace))).exists():
                raise ValueError(f"routing.path: no such file: {trace}")
        inst = OmegaConf.select(cfg, "output.instances", default="auto")
        if inst not in ("auto", True, False):
            raise ValueError(f"output.instances: must be auto, true or false, got {inst!r}")


def preflight(cfg: DictConfig) -> Plan:
    """Validate everything that can be checked without generating instances (``ValueError``
    naming the field); returns the :class:`Plan`."""
    return Plan(cfg)


def solver_config(name: str) -> dict:
    """``{option: default}`` of a named solver as it appears in ``conf/solver/<name>.yaml``
    (for a chain: every stage's options; an option applies to each stage that has it)."""
    from slimjax.solvers import methods

    obj = methods()[name]
    out: dict = {}
    for stage in obj.stages():
        for k, v in stage.options().items():
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


def write_solver_configs(directory: Path | str | None = None, names: Iterable[str] | None = None) -> list[Path]:
    """(Re)write ``conf/solver/<name>.yaml`` from the solver objects' defaults (maintenance helper).

    ``python -c "import slimjax.app as a; a.write_solver_configs()"`` after a solver's options
    change; ``tests/test_config.py`` checks that the files match the objects.
    """
    from slimjax.solvers import methods

    directory = Path(directory) if directory else Path(__file__).resolve().parents[1] / "conf" / "solver"
    written = []
    for name in names or methods():
        obj = methods()[name]
        body = OmegaConf.to_yaml({name: solver_config(name)})
        head = (
            f"# Options of solver '{name}' = {obj!r}\n"
            f"# Override with solver.{name}.<option>=... (help(slimjax.solvers.{type(obj.stages()[0]).__name__}) explains each).\n"
            "# Problem-level and execution options (aggregation, capacity_unit, chunk_size, ...) are in solve_options.\n"
        )
        p = directory / f"{name}.yaml"
        p.write_text(head + body)
        written.append(p)
    return written
