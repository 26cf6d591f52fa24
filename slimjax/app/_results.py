"""Where a run's results live on disk, and reading them back (one place for both layouts).

A run in one piece writes ``results.parquet`` (rows), ``placements.npz`` (``{solver: bool [B, N, L, E]}``)
and ``instances.npz`` (the batch, :func:`slimjax.save`). A run in chunks (``batch_size`` larger than
one chunk, or several processes) writes a Parquet *dataset*: ``results/part-<chunk>.parquet`` and
``placements/part-<chunk>.npz``, one file per chunk, each written atomically, so that a finished
chunk survives an interruption and is not recomputed; ``.stream.json`` records the chunk layout.
Every row carries its global ``instance`` index and its ``chunk``.

:func:`results_dataset` opens either layout as a ``pyarrow.dataset.Dataset`` (scanned in record
batches, never loaded whole); :func:`read_results` loads it into pandas for small runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from slimjax._io import atomic_write

__all__ = [
    "INSTANCES",
    "PLACEMENTS",
    "RESULTS",
    "RESULTS_DIR",
    "chunk_path",
    "done_chunks",
    "has_results",
    "read_placements",
    "read_results",
    "results_dataset",
    "write_csv",
    "write_parquet",
    "write_placements",
]

RESULTS = "results.parquet"
RESULTS_DIR = "results"
PLACEMENTS = "placements.npz"
PLACEMENTS_DIR = "placements"
INSTANCES = "instances.npz"
INSTANCES_DIR = "instances"
STREAM = ".stream.json"
_PART = re.compile(r"^part-(\d+)\.parquet$")


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    with atomic_write(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_write(path) as tmp:
        df.to_csv(tmp, index=False)


def write_placements(path: Path, placements: dict[str, np.ndarray]) -> None:
    """``{solver name: bool [B, N, L, E]}`` as a compressed ``.npz`` (keys = the ``solver`` column)."""
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **{k: np.asarray(v, bool) for k, v in placements.items()})


def chunk_path(out: Path, kind: str, chunk: int) -> Path:
    """The file of one chunk: ``kind`` is ``"results"`` or ``"placements"``."""
    if kind == "results":
        return Path(out) / RESULTS_DIR / f"part-{chunk:06d}.parquet"
    return Path(out) / PLACEMENTS_DIR / f"part-{chunk:06d}.npz"


def done_chunks(out: Path) -> set[int]:
    """Chunks whose results and placements are both on disk."""
    d = Path(out) / RESULTS_DIR
    if not d.is_dir():
        return set()
    done = set()
    for p in d.iterdir():
        m = _PART.match(p.name)
        if m and chunk_path(out, "placements", int(m.group(1))).is_file():
            done.add(int(m.group(1)))
    return done


def read_stream(out: Path) -> dict | None:
    try:
        return json.loads((Path(out) / STREAM).read_text())
    except (OSError, ValueError):
        return None


def write_stream(out: Path, meta: dict) -> None:
    with atomic_write(Path(out) / STREAM) as tmp:
        tmp.write_text(json.dumps(meta))


def clear_chunks(out: Path) -> None:
    """Remove the chunk files of an earlier, different run in this directory."""
    for d in (RESULTS_DIR, PLACEMENTS_DIR, INSTANCES_DIR):
        folder = Path(out) / d
        if folder.is_dir():
            for p in folder.iterdir():
                if p.name.startswith("part-"):
                    p.unlink()
    (Path(out) / STREAM).unlink(missing_ok=True)


def has_results(out: Path | str) -> bool:
    out = Path(out)
    return (out / RESULTS).is_file() or (out / RESULTS_DIR).is_dir()


def results_dataset(out: Path | str):
    """The rows of a run (either layout) as a ``pyarrow.dataset.Dataset``."""
    import pyarrow.dataset as ds

    out = Path(out)
    if (out / RESULTS).is_file():
        return ds.dataset(out / RESULTS, format="parquet")
    if (out / RESULTS_DIR).is_dir():
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = sorted(str(p) for p in (out / RESULTS_DIR).iterdir() if _PART.match(p.name))
        if not files:
            raise ValueError(f"results: {out / RESULTS_DIR} holds no part files")
        # chunks are written by the same code, but a column that is all null in one chunk has no
        # type there: one schema for all parts
        schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
        return ds.dataset(files, format="parquet", schema=schema)
    raise ValueError(f"results: no {RESULTS} or {RESULTS_DIR}/ in {out}")


def read_results(out: Path | str, columns: list[str] | None = None) -> pd.DataFrame:
    """The rows of a run (either layout) as one DataFrame (for runs that fit in memory)."""
    return results_dataset(out).to_table(columns=columns).to_pandas()


def read_placements(out: Path | str, solver: str | None = None):
    """A run's placements: ``{solver: bool [B, N, L, E]}`` (or one solver's array), either layout."""
    out = Path(out)
    if (out / PLACEMENTS).is_file():
        with np.load(out / PLACEMENTS) as z:
            got = {k: z[k] for k in z.files if solver in (None, k)}
    else:
        parts = sorted((out / PLACEMENTS_DIR).glob("part-*.npz"))
        if not parts:
            raise ValueError(f"placements: no {PLACEMENTS} or {PLACEMENTS_DIR}/ in {out}")
        pieces: dict[str, list] = {}
        for p in parts:
            with np.load(p) as z:
                for k in z.files:
                    if solver in (None, k):
                        pieces.setdefault(k, []).append(z[k])
        got = {k: np.concatenate(v) for k, v in pieces.items()}
    if solver is not None:
        if solver not in got:
            raise ValueError(f"solver: no placements of {solver!r} in {out}")
        return got[solver]
    return got
