"""Saving and loading instances and solutions; the one atomic-write helper; placements as a table
and as per-node files for serving (:func:`export_placement`).

File format (``slimjax.save`` / ``slimjax.load``): a NumPy ``.npz`` archive holding every array
under its field name (``info`` entries as ``info.<i>``) and one entry ``__slimjax__``: a JSON
string with ``format`` (``"slimjax"``), the format ``version``, the ``kind`` (``Instance`` or
``Solution``), the slimjax version that wrote it, and what is not an array (a solution's
``solver``, ``seconds``, ``compile_seconds`` and its ``info`` keys). Arrays keep their dtypes and
shapes exactly; nothing is pickled.

    >>> import jax, slimjax
    >>> batch = slimjax.generate.instances(jax.random.key(0), 2, model="olmoe_1b_7b")
    >>> slimjax.save("/tmp/batch.npz", batch)
    >>> slimjax.load("/tmp/batch.npz").shape == batch.shape
    True
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import ArrayLike, Bool

__all__ = ["FORMAT_VERSION", "HELD_SIGNALS", "atomic_write", "export_placement", "load", "placement_frame", "save", "signals_held"]

#: Version of the file format written by :func:`save` (a reader refuses newer versions).
FORMAT_VERSION = 1
_META = "__slimjax__"
_SOLUTION_ARRAYS = ("placement", "objective", "total", "used", "status")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Write a file so that readers see either the old file or the complete new one, never a part.

    Yields a temporary path in the same folder (same suffix, so writers that infer the format from
    it work); on leaving the block without an exception it is renamed over ``path``
    (``os.replace``, atomic on POSIX and Windows); on an exception it is removed. Ctrl-C or SIGTERM
    during the block is held until the file is in place (:func:`signals_held`), then takes effect.

    Examples:
      >>> with atomic_write("/tmp/table.csv") as tmp:
      ...     _ = tmp.write_text("a,b\\n1,2\\n")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    with signals_held():
        try:
            yield tmp
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


#: the signals :func:`signals_held` holds: Ctrl-C and a scheduler's stop
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) and SIGTERM until the block ends, then deliver them to the handlers
    that were in place (Python's own raises ``KeyboardInterrupt``).

    A write that a signal interrupts half-way leaves objects behind whose clean-up fails later
    (a ``zipfile.ZipFile`` over a closed file prints a traceback when it is collected); held, the
    signal takes effect right after the file is complete. Only the main thread receives signals:
    elsewhere, and for a handler installed outside Python, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {}
    for s in HELD_SIGNALS:
        old = signal.getsignal(s)
        if old is None:  # installed outside Python: cannot be restored, so not held
            continue
        previous[s] = old
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        for s in dict.fromkeys(held):
            old = previous[s]
            if callable(old):
                old(s, None)
            elif old == signal.SIG_DFL:
                if s == signal.SIGINT:
                    raise KeyboardInterrupt
                os.kill(os.getpid(), s)  # the default action (SIGTERM: end the process)


def _meta(kind: str, **extra) -> dict:
    from slimjax._version import __version__

    return {"format": "slimjax", "version": FORMAT_VERSION, "kind": kind, "slimjax_version": __version__, **extra}


def _host(name: str, value) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype == object:
        raise ValueError(f"{name}: arrays of Python objects cannot be saved (dtype object); use numbers or strings")
    return a


def save(path: str | os.PathLike, obj) -> None:
    """Save an :class:`~slimjax.Instance` (single or batched) or a :class:`~slimjax.Solution` to ``path``.

    The file is an ``.npz`` archive (see the module docstring) written atomically; ``path`` is used
    as given (NumPy's habit of appending ``.npz`` does not apply).

    Raises:
      ValueError: ``obj`` is neither an Instance nor a Solution, or holds object arrays.
    """
    from slimjax._instance import Instance
    from slimjax.solvers import Solution

    arrays: dict[str, np.ndarray] = {}
    if isinstance(obj, Instance):
        present = []
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name, None)
            if v is None:  # optional fields absent from this instance
                continue
            arrays[f.name] = _host(f.name, v)
            present.append(f.name)
        meta = _meta("Instance", fields=present)
    elif isinstance(obj, Solution):
        for name in _SOLUTION_ARRAYS:
            arrays[name] = _host(name, getattr(obj, name))
        keys = list(obj.info)
        for i, k in enumerate(keys):
            arrays[f"info.{i}"] = _host(f"info[{k!r}]", obj.info[k])
        meta = _meta("Solution", solver=str(obj.solver), seconds=float(obj.seconds),
                     compile_seconds=float(obj.compile_seconds), info=[str(k) for k in keys])
    else:
        raise ValueError(f"obj: expected a slimjax.Instance or slimjax.Solution, got {type(obj).__name__}")
    arrays[_META] = np.array(json.dumps(meta))
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _read(path: Path) -> tuple[dict, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file: {path}")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # not a zip/npz at all
        raise ValueError(f"path: {path} is not a slimjax file (not an .npz archive: {e})") from None
    if not hasattr(z, "files") or _META not in z.files:
        raise ValueError(f"path: {path} is not a slimjax file (no {_META!r} entry; write it with slimjax.save)")
    try:
        meta = json.loads(str(z[_META]))
    except ValueError:
        raise ValueError(f"path: {path} has an unreadable {_META!r} entry") from None
    if meta.get("format") != "slimjax":
        raise ValueError(f"path: {path} is not a slimjax file (format {meta.get('format')!r})")
    version = meta.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ValueError(
            f"path: {path} has format version {version!r}; this slimjax reads versions 1..{FORMAT_VERSION} "
            f"(it was written by slimjax {meta.get('slimjax_version')}; upgrade slimjax to read it)"
        )
    return meta, z


def load(path: str | os.PathLike, *, validate: bool = True):
    """Load what :func:`save` wrote: an :class:`~slimjax.Instance` or a :class:`~slimjax.Solution`.

    Arrays come back with the dtypes and shapes they were saved with. A float64 instance needs
    ``jax_enable_x64`` (JAX would otherwise silently cast it to float32).

    Args:
      path: a file written by :func:`save` (for example a CLI run's ``instances.npz``).
      validate: check an instance's rules on loading (shapes, probabilities, ...).

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a slimjax file, a newer format version, or float64 data without x64.
    """
    import jax

    path = Path(path)
    meta, z = _read(path)
    kind = meta.get("kind")
    with z:
        if kind == "Instance":
            from slimjax._instance import Instance

            fields = {name: z[name] for name in meta["fields"]}
            wide = [k for k, v in fields.items() if v.dtype == np.float64]
            if wide and not jax.config.jax_enable_x64:
                raise ValueError(
                    f"path: {path} holds a float64 instance ({', '.join(wide)}); enable float64 first "
                    "(jax.config.update('jax_enable_x64', True)) to load it exactly"
                )
            return Instance(**fields, validate=validate)
        if kind == "Solution":
            from slimjax.solvers import Solution

            info = {k: z[f"info.{i}"] for i, k in enumerate(meta.get("info", []))}
            return Solution(*(z[n] for n in _SOLUTION_ARRAYS), info, meta.get("solver", ""),
                            float(meta.get("seconds", 0.0)), float(meta.get("compile_seconds", 0.0)))
    raise ValueError(f"path: {path} holds an unknown kind {kind!r} (expected Instance or Solution)")


def placement_frame(solution, inst=None):
    """The cached copies of a solution as a tidy table (what ``Solution.to_frame()`` returns).

    Args:
      solution: a :class:`~slimjax.Solution` (one instance or a batch), or a placement array
        bool [N, L, E] / [B, N, L, E].
      inst: the solved instance (or batch), to add each copy's ``size``.

    Returns:
      a ``pandas.DataFrame`` with one row per cached copy and the integer columns ``instance``
      (0 for an unbatched solution), ``node``, ``layer``, ``expert``, plus ``size`` (in the unit
      of ``Instance.size``) when ``inst`` is given; sorted by instance, node, layer, expert.
    """
    import pandas as pd

    x = np.asarray(getattr(solution, "placement", solution))
    if x.ndim not in (3, 4) or x.dtype != bool:
        raise ValueError(f"placement: expected bool [N, L, E] or [B, N, L, E], got {x.dtype}{list(x.shape)}")
    xb = x if x.ndim == 4 else x[None]
    b, n, l, e = np.nonzero(xb)
    df = pd.DataFrame({"instance": b.astype(np.int64), "node": n.astype(np.int64),
                       "layer": l.astype(np.int64), "expert": e.astype(np.int64)})
    if inst is not None:
        size = np.asarray(inst.size)
        size = size if size.ndim == 3 else size[None]
        if size.shape[0] != xb.shape[0] or size.shape[1:] != xb.shape[2:]:
            raise ValueError(f"inst: size {list(np.shape(inst.size))} does not match the placement {list(x.shape)}")
        df["size"] = size[b, l, e]
    return df


def export_placement(
    x: Bool[ArrayLike, "N L E"],
    path: str | os.PathLike,
    *,
    format: str | None = None,
    nodes: Sequence[Any] | np.ndarray | None = None,
    layers: Sequence[Any] | np.ndarray | None = None,
) -> Path:
    """Write a placement per node for a serving prototype: JSON ``{node: {layer: [experts]}}`` or CSV.

    JSON: one object per node with every layer as a key (a string, JSON has no integer keys) and
    the sorted expert ids cached there (``[]`` where none). CSV: a header ``node,layer,expert``
    and one row per cached copy, sorted by node, layer, expert. Written atomically.

    Args:
      x: a placement bool [N, L, E] of one instance (e.g. ``Solution.placement``).
      path: the file; its suffix (``.json`` / ``.csv``) gives the format unless ``format`` does.
      format: ``"json"`` or ``"csv"``; None takes it from the suffix.
      nodes: N node names (device or server ids); default ``"0"``, ``"1"``, ...
      layers: L layer names, e.g. a trace's original layer indices; default ``0..L-1``.

    Returns:
      the path written.

    Raises:
      ValueError: x not a bool [N, L, E]; an unknown format or suffix; nodes/layers of the wrong
        length or repeated names.

    Examples:
      >>> import numpy as np
      >>> x = np.zeros((2, 1, 4), bool); x[0, 0, [1, 3]] = True; x[1, 0, 0] = True
      >>> _ = export_placement(x, "/tmp/placement.json", nodes=["edge-a", "edge-b"])
      >>> open("/tmp/placement.json").read()
      '{"edge-a": {"0": [1, 3]}, "edge-b": {"0": [0]}}'
    """
    a = np.asarray(getattr(x, "placement", x))
    if a.ndim != 3 or a.dtype != bool:
        raise ValueError(f"x: expected a placement bool [N, L, E] (one instance), got {a.dtype}{list(a.shape)}")
    N, L, _ = a.shape
    path = Path(path)
    fmt = format if format is not None else path.suffix.lower().lstrip(".")
    if fmt not in ("json", "csv"):
        raise ValueError(f"format: must be 'json' or 'csv' (or a path ending in .json / .csv), got "
                         f"{format!r} for {path.name!r}")

    def names(given, n: int, what: str) -> list[str]:
        out = [str(v) for v in (range(n) if given is None else list(given))]
        if len(out) != n:
            raise ValueError(f"{what}: expected {n} names, got {len(out)}")
        if len(set(out)) != n:
            raise ValueError(f"{what}: names must be distinct, got {out}")
        return out

    node_names, layer_names = names(nodes, N, "nodes"), names(layers, L, "layers")
    if fmt == "json":
        doc = {node_names[n]: {layer_names[l]: np.flatnonzero(a[n, l]).tolist() for l in range(L)} for n in range(N)}
        text = json.dumps(doc)
    else:
        n, l, e = np.nonzero(a)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")  # quotes names holding commas or quotes
        w.writerow(["node", "layer", "expert"])
        w.writerows([node_names[i], layer_names[j], k] for i, j, k in zip(n.tolist(), l.tolist(), e.tolist()))
        text = buf.getvalue()
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return path
