"""The completion hash: exactly what changes a run's results, and nothing that does not.

A finished run writes ``.complete.json`` with :func:`config_hash`; with ``resume=true`` a run whose
directory holds a marker with the same hash is skipped. The hash covers

- every config field that changes results: ``seed``, ``batch_size``, ``precision``, ``name`` (it is
  written on every row), ``model``, ``network``, ``routing``, ``solvers`` (as a set), the options of
  the solvers that run (``solver.<name>``), the problem-level options ``solve_options.aggregation``,
  ``capacity_unit``, ``merge_patterns``, the *content* of ``instance.path`` (not its name) and
  the content of ``routing.path`` with ``routing=trace`` (a trace file, or the files of a trace
  folder: :func:`content_digest`), so a trace re-recorded at the same path is recomputed;
- the code: slimjax's version, a fingerprint of its sources (:func:`code_fingerprint`) and the
  versions of jax and jaxlib (a new XLA can change the last bits of a float).

Excluded (they change how a run executes or where it writes, never its numbers): ``logger``,
``resume``, ``warmup``, ``paths``, ``output``, ``collect``, ``hydra``, ``stream``, ``distributed``,
``coordinator`` and ``solve_options.chunk_size``/``memory_budget_mb``/``progress``. So adding
``logger=wandb`` to a finished sweep skips every point (and logs the stored results), while a
changed solver option or an edited source file recomputes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from slimjax._io import atomic_write
from slimjax.app._config import plain
from slimjax.app._results import RESULTS

__all__ = ["EXCLUDED", "MARKER", "SUMMARY", "code_fingerprint", "config_hash", "content_digest", "is_complete",
           "read_marker", "resume_or_run", "source_hash"]

#: the completion marker, written last
MARKER = ".complete.json"
#: the summary table of a run directory
SUMMARY = "summary.csv"
#: top-level config keys that never change results
EXCLUDED = ("resume", "warmup", "paths", "output", "collect", "hydra", "logger", "stream", "distributed",
            "coordinator")
#: keys of ``solve_options`` that never change results
EXECUTION_ONLY = ("chunk_size", "memory_budget_mb", "progress")

_PACKAGE = Path(__file__).resolve().parents[1]


def source_hash(root: Path | str = _PACKAGE) -> str:
    """sha256 over the relative paths and contents of every ``.py`` file under ``root``
    (documentation, configs and caches do not count)."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        if "__pycache__" in p.parts:
            continue
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_fingerprint(root: Path | str = _PACKAGE) -> dict[str, Any]:
    """What identifies the code that computes results.

    Returns ``{"version", "sources", "jax", "jaxlib"}`` (all part of the hash) and, when ``root``
    lies in a git checkout, ``"commit"`` and ``"dirty"`` (whether the package has uncommitted
    changes) for the record. The hash uses the source fingerprint rather than the commit: a
    commit that only touches docs or tests does not invalidate a sweep, and every uncommitted
    edit does (a dirty flag alone would not tell two edits apart).
    """
    return dict(_fingerprint(str(Path(root).resolve())))


@functools.lru_cache(maxsize=8)
def _fingerprint(root: str) -> tuple:
    import jax
    import jaxlib

    from slimjax._version import __version__

    out: dict[str, Any] = {"version": __version__, "sources": source_hash(root), "jax": jax.__version__,
                           "jaxlib": jaxlib.__version__}
    commit = _git(Path(root), "rev-parse", "HEAD")
    if commit:
        status = _git(Path(root), "status", "--porcelain", "--", ".")
        out["commit"] = commit
        out["dirty"] = bool(status)
    return tuple(out.items())


def content_digest(path: str | os.PathLike) -> dict:
    """What a file or a folder holds, for the hash: ``{"bytes": size, "blake2b": digest}``.

    A file: its size and the BLAKE2b digest of its bytes. A folder (``routing.path`` may be a
    folder of JSONL traces): the name, size and bytes of each file directly in it, in name order
    (subfolders are not read, as :func:`slimjax.traces.load` does not read them). A missing path
    gives ``{"missing": True}`` (the run itself refuses it). The bytes are read once per call
    (BLAKE2b runs at about 1 GB/s; loading the trace reads them anyway). The modification time is
    deliberately not used: a file rewritten within the file system's timestamp resolution, or
    with its mtime restored, keeps its mtime, and a copied file gets a new one.
    """
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))
    elif os.path.isfile(path):
        files = [None]
    else:
        return {"missing": True}
    h = hashlib.blake2b(digest_size=16)
    size = 0
    for name in files:
        f = path if name is None else os.path.join(path, name)
        n = os.path.getsize(f)
        if name is not None:
            h.update(name.encode() + b"\0" + str(n).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        size += n
    return {"bytes": size, "blake2b": h.hexdigest()}


def hashed_fields(cfg: DictConfig, code: dict | None = None) -> dict:
    """The exact content that :func:`config_hash` hashes (for inspection and tests)."""
    d = {k: v for k, v in plain(cfg).items() if k not in EXCLUDED}
    names = [str(n) for n in d.get("solvers") or []]
    stages = {p for n in names for p in n.split("+")}
    d["solvers"] = sorted(names)
    d["solver"] = {k: v for k, v in (d.get("solver") or {}).items() if k in stages}
    d["solve_options"] = {k: v for k, v in (d.get("solve_options") or {}).items() if k not in EXECUTION_ONLY}
    inst = d.get("instance") or {}
    if inst.get("path"):  # the file's content decides the results, not where it lies
        d["instance"] = {**inst, "path": None, "content": content_digest(str(inst["path"]))}
        for group in ("model", "network", "routing", "batch_size"):  # unused with a file
            d.pop(group, None)
    routing = d.get("routing")
    if isinstance(routing, dict) and routing.get("kind") == "trace" and routing.get("path"):
        # a trace re-recorded at the same path must not find the old results: its content counts
        # (the path too: it is written on every result row)
        d["routing"] = {**routing, "content": content_digest(str(routing["path"]))}
    c = code if code is not None else code_fingerprint()
    d["code"] = {k: c.get(k) for k in ("version", "sources", "jax", "jaxlib")}
    return d


def config_hash(cfg: DictConfig, code: dict | None = None) -> str:
    """A stable hash of what changes results (see the module docstring)."""
    blob = json.dumps(hashed_fields(cfg, code), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_marker(out_dir: Path | str) -> dict | None:
    """The completion marker of a run directory, or None when absent or unreadable."""
    try:
        return json.loads((Path(out_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_complete(out_dir: Path | str, cfg: DictConfig | None = None, *, digest: str | None = None) -> bool:
    """True when ``out_dir`` holds finished results (for ``cfg``'s hash, or ``digest``, when given)."""
    from slimjax.app._results import has_results

    meta = read_marker(out_dir)
    if meta is None or not has_results(out_dir):
        return False
    if cfg is None and digest is None:
        return True
    return meta.get("config_hash") == (digest if digest is not None else config_hash(cfg))


def resume_or_run(cfg: DictConfig, out: Path, rep: Any, digest: str, work: Callable, cleanup: Callable) -> dict:
    """Run a one-process experiment (dynamic, caching): skip it when ``out`` holds complete results for
    ``digest`` (with ``resume``), else write ``config.yaml`` and return ``work(cfg, out, rep, digest)``;
    on a failure ``cleanup()`` runs before the error propagates."""
    if cfg.get("resume", True) and is_complete(out, digest=digest):
        rep.line(f"resume: {out} already holds complete results for this config; skipped", style="dim")
        summary = pd.read_csv(out / SUMMARY)
        return {"output_dir": str(out), "skipped": True, "best": None, "files": {"results": out / RESULTS},
                "summary": {r["solver"]: {k: v for k, v in r.items() if k != "solver"} for r in summary.to_dict("records")}}
    try:
        (out / MARKER).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "config.yaml") as tmp:
            tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        return work(cfg, out, rep, digest)
    except BaseException:
        cleanup()
        raise
