"""moe-policylang traces: read and write its JSONL and Parquet files.

**JSONL**: a header line ``{"model_name", "num_layers", "num_experts", "top_k", "num_entries",
"records_full_softmax"}``, then one line per (prompt, token, layer) ``{"p", "t", "l", "e": [K ids],
"s": [K scores] | null}`` with optional ``"ph"`` (``"prefill"``/``"decode"``), ``"sm"`` (the full
softmax) and a domain tag (``"domain"``; also read: ``"domain_tag"``, ``"dom"``).

**Parquet**: one row per (prompt, token, layer) with ``prompt_id``, ``token_idx``, ``layer_idx``
(int32), ``selected_experts`` (list<int32>) and optional ``router_scores``, ``router_softmax``,
``phase``, ``domain_tag``; the format has no model metadata, so E is the largest id + 1 unless
given (files written here also carry ``num_experts`` in the Parquet key-value metadata).

Prompt ids become the trace's ``request`` (integers as they are, strings coded in order of first
appearance), ``ph``/``phase`` its ``phase``, the domain tag its ``domain``. Scores and softmax
are not read (a :class:`~slimjax.traces.Trace` holds the chosen ids only); the writers write
``"s": null`` and no score columns.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from slimjax.traces._assemble import Records, assemble
from slimjax.traces._jsonl import _is_id_list, _is_int, _json_object, _nonblank_lines
from slimjax.traces._sources import reject_unknown
from slimjax.traces._trace import Trace

__all__ = ["load_policylang_jsonl", "load_policylang_parquet", "write_policylang_jsonl",
           "write_policylang_parquet"]

_PHASE_KEYS = ("ph", "phase")
_DOMAIN_KEYS = ("domain", "domain_tag", "dom")
_HEADER_KEYS = ("model_name", "num_layers", "num_experts", "top_k", "num_entries", "records_full_softmax")


def is_policylang_row(obj: Any) -> bool:
    """A moe-policylang header or record (JSON object)?"""
    if not isinstance(obj, dict):
        return False
    if "e" in obj and "l" in obj:
        return True
    return "records_full_softmax" in obj or ("model_name" in obj and "num_experts" in obj and "top_k" in obj)


def _obj_array(values: list) -> np.ndarray:
    a = np.empty(len(values), object)
    a[:] = values
    return a


# --------------------------------------------------------------------------------------------
# JSONL
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Rows:
    """The records of a moe-policylang JSONL file, column-wise (R records), and its header."""

    header: dict
    header_line: int
    prompt: np.ndarray | None  # object [R], None without prompt ids
    token: np.ndarray  # int64 [R]
    layer: np.ndarray  # int64 [R]
    values: np.ndarray  # int64 [Σ widths]
    offsets: np.ndarray  # int64 [R + 1]
    line: np.ndarray  # int64 [R], 1-based line numbers
    phase: np.ndarray  # object [R]
    domain: np.ndarray  # object [R]


def _read_lines(path: str) -> _Rows:
    """The reference reader: ``json.loads`` line by line; malformed records raise ``file:line``."""
    header: dict = {}
    header_line = 0
    prompt, token, layer, values, widths, lines, phase, domain = [], [], [], [], [], [], [], []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, text in enumerate(f, 1):
                s = text.strip()
                if not s:
                    continue
                obj = _json_object(path, lineno, s)
                if "e" not in obj:
                    if not lines and not header and any(k in obj for k in _HEADER_KEYS):
                        header, header_line = obj, lineno
                        continue
                    raise ValueError(f"{path}:{lineno}: a record without expert ids 'e'")
                e = obj["e"]
                if not _is_id_list(e):
                    raise ValueError(f"{path}:{lineno}: 'e' must be a non-empty list of integers, got {e!r}")
                for k in ("l", "t"):
                    if not _is_int(obj.get(k)):
                        raise ValueError(f"{path}:{lineno}: '{k}' must be an integer, got {obj.get(k)!r}")
                p = obj.get("p")
                if p is not None and not (_is_int(p) or isinstance(p, str)):
                    raise ValueError(f"{path}:{lineno}: 'p' (prompt id) must be an integer or a string, got {p!r}")
                prompt.append(p)
                token.append(obj["t"])
                layer.append(obj["l"])
                values.extend(e)
                widths.append(len(e))
                lines.append(lineno)
                phase.append(next((obj[k] for k in _PHASE_KEYS if obj.get(k) is not None), None))
                domain.append(next((obj[k] for k in _DOMAIN_KEYS if obj.get(k) is not None), None))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason})") from None
    return _Rows(header, header_line, None if all(p is None for p in prompt) else _obj_array(prompt),
                 np.asarray(token, np.int64), np.asarray(layer, np.int64), np.asarray(values, np.int64),
                 np.concatenate([[0], np.cumsum(widths, dtype=np.int64)]), np.asarray(lines, np.int64),
                 _obj_array(phase), _obj_array(domain))


def _read_arrow(path: str) -> _Rows | None:
    """The fast reader (``pyarrow.json``, integer prompt ids); None when the reference reader must decide."""
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
    lines = _nonblank_lines(data)
    if lines.size == 0:
        return None
    start = 0
    for _ in range(int(lines[0]) - 1):
        start = data.index(b"\n", start) + 1
    stop = data.find(b"\n", start)
    try:
        first = json.loads(data[start:stop if stop >= 0 else len(data)])
    except json.JSONDecodeError:
        return None
    is_header = isinstance(first, dict) and "e" not in first and any(k in first for k in _HEADER_KEYS)
    text, ints = pa.string(), pa.int64()
    schema = pa.schema([("p", ints), ("t", ints), ("l", ints), ("e", pa.list_(ints)),
                        *[(k, text) for k in (*_PHASE_KEYS, *_DOMAIN_KEYS)]])
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        table = pj.read_json(pa.BufferReader(data), parse_options=options)
    except pa.ArrowException:  # malformed JSON, string prompt ids, a value of another type ...
        return None
    if table.num_rows != lines.size:  # several objects on a line, or an object over several lines
        return None
    if is_header:
        table, row_lines = table.slice(1), lines[1:]
    else:
        row_lines = lines
    R = table.num_rows
    if R == 0 or any(table.column(k).null_count for k in ("t", "l", "e")):
        return None
    p_nulls = table.column("p").null_count
    if 0 < p_nulls < R:
        return None
    e = table.column("e").combine_chunks()
    flat = e.flatten()
    offsets = e.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    if flat.null_count or (np.diff(offsets) == 0).any():
        return None

    def tags(keys: tuple[str, ...]) -> np.ndarray:
        codes = pc.dictionary_encode(pc.coalesce(*[table.column(k) for k in keys])).combine_chunks()
        names = _obj_array([*codes.dictionary.to_pylist(), None])
        idx = codes.indices.fill_null(len(codes.dictionary)).to_numpy(zero_copy_only=False)
        return names[idx]

    prompt = None if p_nulls == R else table.column("p").to_numpy().astype(np.int64)
    return _Rows(first if is_header else {}, int(lines[0]) if is_header else 0, prompt,
                 table.column("t").to_numpy().astype(np.int64), table.column("l").to_numpy().astype(np.int64),
                 flat.to_numpy(zero_copy_only=False).astype(np.int64), offsets, row_lines,
                 tags(_PHASE_KEYS), tags(_DOMAIN_KEYS))


def load_policylang_jsonl(
    path: str | os.PathLike,
    *,
    num_experts: int | None = None,
    layers: Sequence[int] | np.ndarray | None = None,
    source: str | None = None,
    engine: str = "auto",
    **unused: Any,
) -> Trace:
    """A moe-policylang JSONL trace → Trace (tokens in order of first appearance, layers sorted).

    Args:
      num_experts: E; default: the header's ``num_experts``, else the largest id + 1.
      layers: the original layer indices to keep (default: all logged).
      engine: ``"auto"`` (``pyarrow.json`` where it reads the file exactly, else line by line)
        or ``"python"`` (line by line only; the same result, slower).

    Raises:
      ValueError: naming ``file:line``: malformed JSON, a record without ``"e"``/``"l"``/``"t"``,
        ids that are not integers, K different from the header's ``top_k`` or from other records
        (mixed K), a layer >= the header's ``num_layers``, an id >= E, a repeated (prompt, token,
        layer), a layer with fewer tokens than another (ragged log).
    """
    reject_unknown(unused, ())
    if engine not in ("auto", "python"):
        raise ValueError(f"engine: must be 'auto' or 'python', got {engine!r}")
    path = os.fspath(path)
    rows = _read_arrow(path) if engine == "auto" else None
    rows = rows if rows is not None else _read_lines(path)
    header, header_line, line = rows.header, rows.header_line, rows.line
    rec = Records(path, lambda r: f"{path}:{line[r]}", rows.prompt, rows.token, rows.layer, rows.values,
                  rows.offsets, rows.phase, rows.domain)
    nl = header.get("num_layers")
    if _is_int(nl) and rec.layer.size and (bad := np.flatnonzero((rec.layer >= nl) | (rec.layer < 0))).size:
        r = int(bad[0])
        raise ValueError(f"{rec.where(r)}: layer {int(rec.layer[r])} outside [0, num_layers={nl}) of the header "
                         f"(line {header_line})")
    K = header.get("top_k")
    hE = header.get("num_experts")
    E = num_experts if num_experts is not None else (hE if _is_int(hE) else None)
    model = header.get("model_name") or ""
    return assemble(rec, num_experts=E, top_k=K if _is_int(K) else None, layers=layers,
                    top_k_from=f"the header (line {header_line})", what="record",
                    source=source or (f"{model} " if model else "") + path)


def _token_columns(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Per token: its prompt id (``request``, else 0) and its index within that prompt."""
    T = trace.num_tokens
    req = trace.request if trace.request is not None else np.zeros(T, np.int64)
    order = np.argsort(req, kind="stable")
    sr = req[order]
    start = np.concatenate([[True], sr[1:] != sr[:-1]]) if T else np.zeros(0, bool)
    group_start = np.maximum.accumulate(np.where(start, np.arange(T), 0)) if T else np.zeros(0, np.int64)
    pos = np.empty(T, np.int64)
    pos[order] = np.arange(T) - group_start
    return req.astype(np.int64), pos


def write_policylang_jsonl(
    trace: Trace, path: str | os.PathLike, *, model_name: str = "", num_layers: int | None = None
) -> str:
    """Write a moe-policylang JSONL trace (header line, then one line per token and layer).

    Records go token by token (in the trace's order), layer by layer: ``{"p": request (0 without
    request ids), "t": the token's index within its request, "l": original layer index, "e": ids,
    "s": null}`` plus ``"ph"`` and ``"domain"`` where the trace has those tags. The header has
    ``num_layers`` (default: the largest logged layer index + 1), ``num_experts``, ``top_k``,
    ``num_entries`` (the number of record lines) and ``"records_full_softmax": false``.

    Returns:
      the path written.
    """
    path = os.fspath(path)
    T, L, K = trace.shape
    nl = int(trace.layers.max()) + 1 if num_layers is None else int(num_layers)
    if nl <= int(trace.layers.max()):
        raise ValueError(f"num_layers: must exceed the largest layer index {int(trace.layers.max())}, got {nl}")
    req, pos = _token_columns(trace)
    header = {"model_name": model_name, "num_layers": nl, "num_experts": trace.num_experts, "top_k": K,
              "num_entries": T * L, "records_full_softmax": False}
    ids = trace.expert_ids.tolist()
    lay = trace.layers.tolist()
    tags = [(k, getattr(trace, name)) for k, name in (("ph", "phase"), ("domain", "domain"))
            if getattr(trace, name) is not None]
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for t in range(T):
            extra = "".join(f", {json.dumps(k)}: {json.dumps(str(v[t]))}" for k, v in tags if v[t] != "")
            head = f'{{"p": {int(req[t])}, "t": {int(pos[t])}, "l": '
            for j in range(L):
                f.write(f'{head}{lay[j]}, "e": {json.dumps(ids[t][j])}, "s": null{extra}}}\n')
    return path


# --------------------------------------------------------------------------------------------
# Parquet
# --------------------------------------------------------------------------------------------
def load_policylang_parquet(
    path: str | os.PathLike,
    *,
    num_experts: int | None = None,
    layers: Sequence[int] | np.ndarray | None = None,
    source: str | None = None,
    **unused: Any,
) -> Trace:
    """A moe-policylang Parquet trace → Trace (tokens in order of first appearance, layers sorted).

    Args:
      num_experts: E; default: ``num_experts`` of the file's key-value metadata (files written by
        :func:`write_policylang_parquet`), else the largest id + 1.
      layers: the original layer indices to keep (default: all logged).

    Raises:
      ValueError: not a Parquet file, a missing column, and naming ``file: row r`` (0-based): a
        null value, mixed K, an id >= E, a repeated (prompt, token, layer), a ragged layer.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    reject_unknown(unused, ())
    path = os.fspath(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
    names = table.column_names
    for c in ("token_idx", "layer_idx", "selected_experts"):
        if c not in names:
            raise ValueError(f"{path}: missing column {c!r} (has {names})")

    def where(r: int) -> str:
        return f"{path}: row {r}"

    def ints(name: str) -> np.ndarray:
        col = table.column(name)
        if not pa.types.is_integer(col.type):
            raise ValueError(f"{path}: column {name!r} must be integers, got {col.type}")
        if col.null_count:
            r = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"{where(r)}: {name} is null")
        return col.to_numpy().astype(np.int64)

    token, layer = ints("token_idx"), ints("layer_idx")
    sel = table.column("selected_experts").combine_chunks()
    if not (pa.types.is_list(sel.type) or pa.types.is_large_list(sel.type)
            or pa.types.is_fixed_size_list(sel.type)) or not pa.types.is_integer(sel.type.value_type):
        raise ValueError(f"{path}: column 'selected_experts' must be a list of integers, got {sel.type}")
    if sel.null_count:
        r = int(np.flatnonzero(sel.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{where(r)}: selected_experts is null")
    if pa.types.is_fixed_size_list(sel.type):
        offsets = np.arange(len(sel) + 1, dtype=np.int64) * sel.type.list_size
    else:
        offsets = sel.offsets.to_numpy().astype(np.int64)
        offsets = offsets - offsets[0]
    flat = sel.flatten()
    if flat.null_count:
        valid = flat.is_valid().to_numpy(zero_copy_only=False)
        r = int(np.searchsorted(offsets, int(np.flatnonzero(~valid)[0]), side="right") - 1)
        raise ValueError(f"{where(r)}: a null expert id in selected_experts")
    values = flat.to_numpy(zero_copy_only=False).astype(np.int64)
    prompt = None
    if "prompt_id" in names:
        col = table.column("prompt_id")
        if col.null_count:
            r = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"{where(r)}: prompt_id is null")
        prompt = _obj_array(col.to_pylist())

    def tags(*cands: str) -> np.ndarray | None:
        name = next((c for c in cands if c in names), None)
        return None if name is None else _obj_array(table.column(name).to_pylist())

    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if num_experts is None and meta.get("num_experts", "").isdigit():
        num_experts = int(meta["num_experts"])
    rec = Records(path, where, prompt, token, layer, values, offsets, tags("phase"), tags("domain_tag", "domain"))
    model = meta.get("model_name", "")
    return assemble(rec, num_experts=num_experts, layers=layers, what="row",
                    source=source or (f"{model} " if model else "") + path)


def write_policylang_parquet(
    trace: Trace, path: str | os.PathLike, *, model_name: str = "", num_layers: int | None = None
) -> str:
    """Write a moe-policylang Parquet trace (one row per token and layer, token by token).

    Columns: ``prompt_id`` (the trace's ``request``, 0 without), ``token_idx`` (index within the
    prompt), ``layer_idx`` (original layer index), all int32, ``selected_experts`` list<int32>,
    plus ``phase`` and ``domain_tag`` (strings) where the trace has those tags. The key-value
    metadata holds ``num_experts``, ``top_k``, ``num_layers`` and ``model_name`` (the format itself
    has no model metadata; the reader uses ``num_experts`` when present).

    Returns:
      the path written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.fspath(path)
    T, L, K = trace.shape
    nl = int(trace.layers.max()) + 1 if num_layers is None else int(num_layers)
    if nl <= int(trace.layers.max()):
        raise ValueError(f"num_layers: must exceed the largest layer index {int(trace.layers.max())}, got {nl}")
    req, pos = _token_columns(trace)
    wide = req.size and (req.max() > np.iinfo(np.int32).max or req.min() < np.iinfo(np.int32).min)
    cols = {
        "prompt_id": pa.array(np.repeat(req, L).astype(np.int64 if wide else np.int32)),
        "token_idx": pa.array(np.repeat(pos, L).astype(np.int32)),
        "layer_idx": pa.array(np.tile(trace.layers, T).astype(np.int32)),
        "selected_experts": pa.ListArray.from_arrays(pa.array(np.arange(T * L + 1, dtype=np.int32) * K),
                                                     pa.array(trace.expert_ids.reshape(-1).astype(np.int32))),
    }
    if trace.phase is not None:
        cols["phase"] = pa.array(np.repeat(trace.phase, L).tolist(), pa.string())
    if trace.domain is not None:
        cols["domain_tag"] = pa.array(np.repeat(trace.domain, L).tolist(), pa.string())
    meta = {"num_experts": str(trace.num_experts), "top_k": str(K), "num_layers": str(nl), "model_name": model_name}
    table = pa.table(cols).replace_schema_metadata(meta)
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    pq.write_table(table, path)
    return path
