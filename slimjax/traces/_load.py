"""``load``: read a trace of any supported format, chosen by the file's content or by ``format=``."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

from slimjax.traces._counts import SGLANG_CSV_HEADER, is_pair_map, load_counts
from slimjax.traces._events import is_vllm_event, load_llamacpp, load_vllm_events
from slimjax.traces._jsonl import load_jsonl
from slimjax.traces._policylang import is_policylang_row, load_policylang_jsonl, load_policylang_parquet
from slimjax.traces._trace import Trace, load_npz

__all__ = ["FORMATS", "load"]

_SUFFIXES = (".jsonl", ".npz", ".pkl", ".json", ".parquet", ".npy", ".csv", ".log", ".txt")
_LLAMACPP = re.compile(rb"^\s*EXPERT\|L\d+\|T\d+:", re.MULTILINE)

#: The formats :func:`load` reads, by the name ``format=`` takes.
FORMATS = (
    "npz",  # the canonical .npz
    "jsonl",  # per-token JSONL logs (the vLLM MoE-logger rows)
    "counts",  # aggregate counts: pickle, JSON, .npy [L, E], SGLang CSV (approximate)
    "policylang-jsonl",  # moe-policylang JSONL
    "policylang-parquet",  # moe-policylang Parquet
    "vllm-hook",  # vLLM forward-hook events [{"layer_idx", "indices", "weights"}, ...]
    "llamacpp",  # llama.cpp expert log lines EXPERT|L<l>|T<t>: [ids]
)


def _npz(path: str, **options: Any) -> Trace:
    bad = [k for k in options if k not in ("num_experts",)]
    if bad:
        raise ValueError(f"options: unknown option(s) {bad} for this trace format")
    return load_npz(path, **options)


_LOADERS = {
    "npz": _npz,
    "jsonl": lambda p, **o: load_jsonl([p], **o),
    "counts": load_counts,
    "policylang-jsonl": load_policylang_jsonl,
    "policylang-parquet": load_policylang_parquet,
    "vllm-hook": load_vllm_events,
    "llamacpp": load_llamacpp,
}


def load(path: str | os.PathLike | Sequence[str | os.PathLike], format: str | None = None, **options: Any) -> Trace:
    """Load a trace, choosing the loader by content (or by ``format``).

    * ``"npz"``: the canonical ``.npz`` (a zip archive holding ``expert_ids``): :func:`load_npz`;
    * ``"jsonl"``: JSONL per-token logs: :func:`load_jsonl` (a folder of them, or a list, is
      joined by row order);
    * ``"counts"``: aggregate per-layer counts (a pickle of ``Counter`` objects, a JSON object
      with ``expert_usage_by_layer`` or ``{"<layer>:<expert>": count}``, a ``.npy`` [L, E], an
      SGLang ``layer_id,expert_id,count`` CSV): :func:`load_counts`, an *approximate* sampled trace;
    * ``"policylang-jsonl"`` / ``"policylang-parquet"``: moe-policylang traces
      (:func:`load_policylang_jsonl`, :func:`load_policylang_parquet`), with prompt ids as
      ``request`` and phase/domain tags;
    * ``"vllm-hook"``: vLLM forward-hook events (:func:`load_vllm_events`);
    * ``"llamacpp"``: llama.cpp expert logs (:func:`load_llamacpp`).

    Args:
      path: a file, a folder of JSONL files (one per layer; joined), or a list of JSONL files.
      format: one of :data:`FORMATS` to skip the detection; None detects it from the content.
      **options: passed to the loader: ``num_experts`` (all), ``layers`` (all but npz), ``top_k``,
        ``warmup`` and ``engine`` (JSONL), ``tokens``, ``seed`` and ``calibrate`` (counts),
        ``source``.

    Raises:
      ValueError: unknown format, malformed content (with file and line or row), ids >= num_experts.
    """
    if format is not None and format not in _LOADERS:
        raise ValueError(f"format: must be one of {list(FORMATS)} or None (detect), got {format!r}")
    if isinstance(path, (list, tuple)):
        if format not in (None, "jsonl"):
            raise ValueError(f"path: a list of files is read as JSONL logs joined by row order, not {format!r}")
        return load_jsonl([os.fspath(p) for p in path], **options)
    path = os.fspath(path)
    if format is not None and not os.path.isdir(path):
        if not os.path.exists(path):
            raise ValueError(f"{path}: no such file")
        return _LOADERS[format](path, **options)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(_SUFFIXES))
        jsonl = [f for f in files if f.endswith(".jsonl")]
        if jsonl:
            return load_jsonl(jsonl, **options)
        if len(files) == 1:
            return load(files[0], format, **options)
        raise ValueError(f"{path}: a folder must hold JSONL files (one per layer) or exactly one trace file, "
                         f"found {files}")
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(65536)
    if head[:2] == b"PK":
        return load_npz(path, **{k: v for k, v in options.items() if k in ("num_experts",)})
    if head[:4] == b"PAR1":
        return load_policylang_parquet(path, **options)
    if head[:1] == b"\x80" or head[:6] == b"\x93NUMPY":
        return load_counts(path, **options)
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        return _load_json(path, options)
    if not text:
        raise ValueError(f"{path}:1: empty file")
    if text.startswith(SGLANG_CSV_HEADER.encode()):
        return load_counts(path, **options)
    if _LLAMACPP.search(head):
        return load_llamacpp(path, **options)
    raise ValueError(f"{path}: unknown trace format (expected one of {list(FORMATS)}; detected by content: "
                     f".npz, Parquet, .npy, a pickle, JSON/JSONL, an {SGLANG_CSV_HEADER!r} CSV or "
                     f"'EXPERT|L<l>|T<t>: [ids]' lines)")


def _is_counts(doc: Any) -> bool:
    return isinstance(doc, dict) and ("expert_usage_by_layer" in doc or is_pair_map(doc))


def _is_events(doc: Any) -> bool:
    return isinstance(doc, list) and bool(doc) and is_vllm_event(doc[0])


def _load_json(path: str, options: dict) -> Trace:
    """One JSON document (counts, vLLM hook events) or one JSON object per line (a per-token log)?

    A file whose first line is a complete JSON value is JSON lines (unless that value is a counts
    document or a list of events); otherwise the whole file is read as one document. JSON lines
    whose first object is a moe-policylang header or record are moe-policylang, a vLLM hook event
    vLLM hook events (one per line), anything else the vLLM MoE-logger rows.
    """
    try:
        with open(path, encoding="utf-8") as f:
            first = next((ln for ln in f if ln.strip()), "")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason})") from None
    try:
        doc = json.loads(first)
    except json.JSONDecodeError:
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text ({err.reason})") from None
    if _is_counts(doc):
        return load_counts(path, **options)
    if _is_events(doc) or is_vllm_event(doc):
        return load_vllm_events(path, **options)
    if is_policylang_row(doc):
        return load_policylang_jsonl(path, **options)
    return load_jsonl([path], **options)
