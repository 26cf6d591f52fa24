"""``load``: read a trace of any supported format, chosen by the file's content."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from slimjax.traces._counts import load_counts
from slimjax.traces._jsonl import load_jsonl
from slimjax.traces._trace import Trace, load_npz

__all__ = ["load"]

_SUFFIXES = (".jsonl", ".npz", ".pkl", ".json")


def load(path: str | os.PathLike | Sequence[str | os.PathLike], **options: Any) -> Trace:
    """Load a trace, choosing the loader by content.

    * canonical ``.npz`` (a zip archive holding ``expert_ids``): :func:`load_npz`;
    * JSONL per-token logs: :func:`load_jsonl` (a folder of them, or a list, is joined by row order);
    * aggregate per-layer counts (a pickle of ``Counter`` objects or a JSON object with
      ``expert_usage_by_layer``): :func:`load_counts`, an *approximate* sampled trace.

    Args:
      path: a file, a folder of JSONL files (one per layer; joined), or a list of JSONL files.
      **options: passed to the loader: ``num_experts``, ``top_k``, ``layers``, ``warmup`` and
        ``engine`` (JSONL), ``tokens``, ``seed`` and ``calibrate`` (counts), ``source``.

    Raises:
      ValueError: unknown format, malformed content (with file and line), ids >= num_experts.
    """
    if isinstance(path, (list, tuple)):
        return load_jsonl([os.fspath(p) for p in path], **options)
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(_SUFFIXES))
        jsonl = [f for f in files if f.endswith(".jsonl")]
        if jsonl:
            return load_jsonl(jsonl, **options)
        if len(files) == 1:
            return load(files[0], **options)
        raise ValueError(f"{path}: a folder must hold JSONL files (one per layer) or exactly one trace file, "
                         f"found {files}")
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:2] == b"PK":
        return load_npz(path, **{k: v for k, v in options.items() if k in ("num_experts",)})
    if head[:1] == b"\x80":
        return load_counts(path, **options)
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        return _load_json(path, options)
    if not text:
        raise ValueError(f"{path}:1: empty file")
    raise ValueError(f"{path}: unknown trace format (expected .npz, JSONL, a counts pickle or counts JSON)")


def _is_counts(doc: Any) -> bool:
    return isinstance(doc, dict) and "expert_usage_by_layer" in doc


def _load_json(path: str, options: dict) -> Trace:
    """One JSON document (counts) or one JSON object per line (a per-token log)?

    A file whose first line is a complete JSON value is JSON lines (unless that value is a counts
    document); otherwise the whole file is read as one document.
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
    return load_jsonl([path], **options)
