"""Per-token JSONL routing logs → :class:`~slimjax.traces.Trace`.

One JSON object per line with a ``layer`` and the chosen ids (``topk_ids``; also
``expert_ids``/``experts``/``ids``), optionally ``{"type": "meta", ...}`` lines — the vLLM MoE
logger format ``{"type": "route", "req_id", "token_idx", "layer", "topk_ids", "topk_weights"}``.
Several files (e.g. one per layer) are joined by row order after the warm-up rows are dropped.

Two readers turn a file into the same column-wise rows: ``pyarrow.json`` (fast, multi-threaded)
and a line-by-line reader with ``json.loads``. The line-by-line reader is the reference and the
one that reports malformed rows as ``file:line``; the pyarrow reader hands any file it cannot
read exactly (a parse or type error, a row without ids, a negative id, blank-line mismatches,
no pyarrow installed) over to it, so both give the same trace and the same errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from slimjax.traces._sources import hints, reject_unknown
from slimjax.traces._trace import Trace

__all__ = ["load_jsonl"]

_ID_KEYS = ("topk_ids", "expert_ids", "experts", "ids")
_ENGINES = ("auto", "python")

# A leading run of at least this many rows with one identical expert set is a warm-up/dummy run.
_AUTO_WARMUP_MIN_RUN = 64


@dataclasses.dataclass(frozen=True)
class _Rows:
    """The route rows of one JSONL file, column-wise (R rows)."""

    path: str
    meta: dict  # the meta lines' fields (later lines win)
    line: np.ndarray  # int64 [R], 1-based line numbers
    layer: np.ndarray  # int64 [R]
    values: np.ndarray  # int64 [Σ widths]: every row's ids, row after row
    offsets: np.ndarray  # int64 [R + 1]: row r's ids are values[offsets[r]:offsets[r + 1]]
    request: np.ndarray  # object [R]: the row's request key (None where it has none)


# --------------------------------------------------------------------------------------------
# Row checks (shared with the moe-policylang and vLLM-event readers)
# --------------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    """A JSON integer (``True``/``False`` are not)?"""
    return isinstance(v, int) and not isinstance(v, bool)


def _is_id_list(v: Any) -> bool:
    """A non-empty JSON list of integers (one row's expert ids)?"""
    return isinstance(v, list) and bool(v) and all(_is_int(x) for x in v)


def _json_value(path: str, lineno: int, text: str) -> Any:
    """One line's JSON value; malformed JSON raises ``file:line``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{lineno}: malformed JSON ({err.msg})") from None


def _json_object(path: str, lineno: int, text: str) -> dict:
    """One line's JSON object; malformed JSON or another JSON value raises ``file:line``."""
    obj = _json_value(path, lineno, text)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    return obj


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------
def _read_lines(path: str) -> _Rows:
    """The reference reader: ``json.loads`` line by line; malformed rows raise ``file:line``."""
    meta: dict = {}
    line, layer, values, widths, request = [], [], [], [], []
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            for lineno, text in enumerate(f, 1):
                s = text.strip()
                if not s:
                    continue
                obj = _json_object(path, lineno, s)
                kind = obj.get("type", "route")
                if kind == "meta":
                    meta.update(obj)
                    continue
                if kind != "route":
                    continue  # other record types (e.g. timing) carry no routing
                key = next((k for k in _ID_KEYS if k in obj), None)
                if key is None:
                    raise ValueError(f"{path}:{lineno}: route row without expert ids (one of {list(_ID_KEYS)})")
                ids = obj[key]
                if not _is_id_list(ids):
                    raise ValueError(f"{path}:{lineno}: '{key}' must be a non-empty list of integers, got {ids!r}")
                if any(v < 0 for v in ids):
                    raise ValueError(f"{path}:{lineno}: negative expert id in {ids}")
                lay = obj.get("layer", meta["layers_logged"][0] if meta.get("layers_logged") else 0)
                if not _is_int(lay):
                    raise ValueError(f"{path}:{lineno}: 'layer' must be an integer, got {lay!r}")
                line.append(lineno)
                layer.append(lay)
                values.extend(ids)
                widths.append(len(ids))
                request.append(obj.get("req_id", obj.get("request")))
    except UnicodeDecodeError:
        with open(path, "rb") as f:
            data = f.read()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            lineno = data.count(b"\n", 0, err.start) + 1
            raise ValueError(f"{path}:{lineno}: not UTF-8 text ({err.reason})") from None
        raise
    req = np.empty(len(request), object)
    req[:] = request
    return _Rows(path, meta, np.asarray(line, np.int64), np.asarray(layer, np.int64),
                 np.asarray(values, np.int64), np.concatenate([[0], np.cumsum(widths, dtype=np.int64)]), req)


def _nonblank_lines(data: bytes) -> np.ndarray:
    """1-based numbers of the lines (split at ``\\n``) holding anything but JSON whitespace.

    A byte > 32 is "ink": JSON whitespace (space, tab, CR, LF) is not, and the other bytes <= 32
    are control characters that no valid line holds outside a string (pyarrow refuses them).
    """
    buf = np.frombuffer(data, np.uint8)
    ink = buf > 32
    starts = np.concatenate([[0], np.flatnonzero(buf == 10) + 1])
    starts = starts[starts < buf.size]
    if starts.size == 0:
        return np.zeros(0, np.int64)
    has_ink = np.logical_or.reduceat(ink, starts)  # each segment runs up to the next line's start
    return np.flatnonzero(has_ink).astype(np.int64) + 1


def _read_arrow(path: str) -> _Rows | None:
    """The fast reader (``pyarrow.json``); None when the file needs the reference reader."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.json as pj
    except ImportError:
        return None
    with open(path, "rb") as f:
        data = f.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    ints = pa.list_(pa.int64())
    schema = pa.schema([("type", pa.string()), ("layer", pa.int64()), *[(k, ints) for k in _ID_KEYS],
                        ("req_id", pa.string()), ("request", pa.string()), ("model_id", pa.string()),
                        ("num_experts", pa.int64())])
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        table = pj.read_json(pa.BufferReader(data), parse_options=options)
    except pa.ArrowException:  # malformed JSON, a value of another type, a row over the block size ...
        return None
    lines = _nonblank_lines(data)
    if lines.size != table.num_rows:  # several objects on a line, or a document over several lines
        return None
    kind = table.column("type")
    is_meta = pc.fill_null(pc.equal(kind, "meta"), False)
    is_route = pc.fill_null(pc.or_kleene(pc.is_null(kind), pc.equal(kind, "route")), False)
    route = table.filter(is_route)
    R = route.num_rows
    meta = {}
    metas = table.filter(is_meta)
    for k in ("model_id", "num_experts"):
        vals = [v for v in metas.column(k).to_pylist() if v is not None]
        if vals:
            meta[k] = vals[-1]
    present = [k for k in _ID_KEYS if route.column(k).null_count < R]
    if R and (len(present) != 1 or route.column(present[0]).null_count or route.column("layer").null_count):
        return None  # rows without ids or layer, or several id keys: the reference reader decides
    if R:
        ids = route.column(present[0]).combine_chunks()
        flat = ids.flatten()
        if flat.null_count:
            return None
        offsets = ids.offsets.to_numpy().astype(np.int64)
        offsets = offsets - offsets[0]
        values = flat.to_numpy(zero_copy_only=False).astype(np.int64)
        if (np.diff(offsets) == 0).any() or (values < 0).any():
            return None
        layer = route.column("layer").to_numpy().astype(np.int64)
    else:
        offsets, values, layer = np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    req = pc.coalesce(route.column("req_id"), route.column("request")).to_numpy(zero_copy_only=False)
    row_lines = lines[np.flatnonzero(is_route.to_numpy(zero_copy_only=False))]
    return _Rows(path, meta, row_lines, layer, values, offsets, req.astype(object))


def _read(path: str, engine: str) -> _Rows:
    rows = _read_arrow(path) if engine == "auto" else None
    return rows if rows is not None else _read_lines(path)


# --------------------------------------------------------------------------------------------
# The join
# --------------------------------------------------------------------------------------------
def _auto_warmup(widths: np.ndarray, starts: np.ndarray, values: np.ndarray) -> int:
    """Length of the leading run of rows with one identical expert *set*, if it is a dummy run."""
    if widths.size == 0:
        return 0
    w0 = int(widths[0])
    same = widths == w0
    n = int(same.size if same.all() else np.argmin(same))
    sets = np.sort(values[starts[:n, None] + np.arange(w0)], axis=1)
    equal = (sets == sets[0]).all(1)
    n = int(equal.size if equal.all() else np.argmin(equal))
    return n if n >= _AUTO_WARMUP_MIN_RUN else 0


def _codes(keys: np.ndarray) -> np.ndarray:
    """Integer codes of request keys (object [T]) in order of first appearance."""
    try:
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    except TypeError:  # keys of several types (e.g. str and int, or some None): no order to sort by
        codes: dict[Any, int] = {}
        return np.array([codes.setdefault(k, len(codes)) for k in keys.tolist()], np.int64)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inverse.reshape(-1)]


def _join(files: list[_Rows], *, warmup, num_experts, top_k, layers, source) -> Trace:
    """Join the files' rows per layer (row order, after warm-up) into one Trace."""
    paths = [r.path for r in files]
    meta: dict = {}
    for r in files:
        meta = {**r.meta, **meta} if meta else dict(r.meta)
    file_of = np.concatenate([np.full(r.layer.size, i) for i, r in enumerate(files)])
    line = np.concatenate([r.line for r in files])
    layer = np.concatenate([r.layer for r in files])
    widths = np.concatenate([np.diff(r.offsets) for r in files])
    shift = np.cumsum([0] + [r.values.size for r in files[:-1]])
    starts = np.concatenate([r.offsets[:-1] + s for r, s in zip(files, shift)])
    values = np.concatenate([r.values for r in files])
    request = np.concatenate([r.request for r in files])

    def where(i):  # file:line of row i
        return f"{paths[file_of[i]]}:{line[i]}"

    if layer.size == 0:
        raise ValueError(f"{paths[0]}: no route rows found")
    known = hints(*paths, str(meta.get("model_id", "")))
    if warmup == "auto":
        warmup = known.get("warmup", "detect")
    if warmup != "detect":
        if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer, type(None))):
            raise ValueError(f"warmup: must be an integer >= 0, 'auto' or 'detect', got {warmup!r}")
        if (warmup or 0) < 0:
            raise ValueError(f"warmup: must be >= 0, got {warmup}")
    logged = np.unique(layer).tolist()
    order = logged if layers is None else [int(v) for v in layers]
    for lay in order:
        if lay not in logged:
            raise ValueError(f"layers: layer {lay} is not in the logs (logged: {logged})")
    kept = {}
    for lay in order:
        rows = np.flatnonzero(layer == lay)
        n = _auto_warmup(widths[rows], starts[rows], values) if warmup == "detect" else int(warmup or 0)
        if n >= rows.size:
            raise ValueError(f"{paths[file_of[rows[0]]]}: layer {lay} has {rows.size} route rows, all dropped by "
                             f"warmup={n}")
        kept[lay] = rows[n:]
    T = kept[order[0]].size
    for lay in order:
        if kept[lay].size != T:
            raise ValueError(
                f"{paths[file_of[kept[lay][0]]]}: layer {lay} has {kept[lay].size} rows after warm-up but layer "
                f"{order[0]} has {T}; layers are joined by row order and must log the same tokens (set warmup=)")
    K = int(top_k) if top_k is not None else int(widths[kept[order[0]][0]])
    ids = np.empty((T, len(order), K), np.int64)
    for j, lay in enumerate(order):
        rows = kept[lay]
        bad = np.flatnonzero(widths[rows] != K)
        if bad.size:
            r = rows[bad[0]]
            raise ValueError(f"{where(r)}: expected {K} expert ids (top-K), got {widths[r]}")
        ids[:, j] = values[starts[rows, None] + np.arange(K)]
    E = int(num_experts or meta.get("num_experts") or known.get("num_experts") or int(ids.max()) + 1)
    if ids.max() >= E:
        t, j, k = (int(v) for v in np.argwhere(ids >= E)[0])
        raise ValueError(f"{where(kept[order[j]][t])}: expert id {ids[t, j, k]} >= num_experts={E}")
    keys = request[kept[order[0]]]
    has_key = np.array([k is not None for k in keys.tolist()], bool)
    codes = _codes(keys) if has_key.any() else None
    model = meta.get("model_id", "")
    src = source or (f"{model} " if model else "") + ", ".join(paths)
    return Trace(ids, E, np.asarray(order), request=codes, source=src)


def load_jsonl(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    warmup: int | str | None = "auto",
    num_experts: int | None = None,
    top_k: int | None = None,
    layers: Sequence[int] | None = None,
    source: str | None = None,
    engine: str = "auto",
    **unused: Any,
) -> Trace:
    """Per-token JSONL logs → Trace; several files/layers are joined by row order.

    Args:
      paths: one file or several (e.g. one file per layer).
      warmup: route rows to drop at the start of every layer's stream: an int, ``"auto"`` (the
        known-source default, else ``"detect"``), ``"detect"`` (the leading run of >= 64 rows with
        one identical expert set — vLLM's profiling / CUDA-graph dummy runs), or None/0 (keep all).
      num_experts: E; default from the meta line, the known source, else max id + 1.
      top_k: expected K (checked); default: the rows' length.
      layers: original layer indices to keep (default all logged layers, sorted).
      engine: ``"auto"`` (pyarrow where it reads the file exactly, else line by line) or
        ``"python"`` (line by line only; the same result, slower).

    Raises:
      ValueError: malformed rows (``file:line``), rows of different K, layers with different
        numbers of tokens after the warm-up, ids >= num_experts.
    """
    reject_unknown(unused, ("tokens", "seed", "calibrate"))
    if engine not in _ENGINES:
        raise ValueError(f"engine: must be one of {_ENGINES}, got {engine!r}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("paths: no JSONL files given")
    files = [_read(p, engine) for p in paths]
    return _join(files, warmup=warmup, num_experts=num_experts, top_k=top_k, layers=layers, source=source)
