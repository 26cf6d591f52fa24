"""Routing captured by serving engines: vLLM forward-hook events and llama.cpp expert logs.

**vLLM hook events**: what a forward hook on each MoE layer's router appends per forward pass,
saved as JSON: ``[{"layer_idx": int, "indices": [T, K], "weights": [T, K]}, ...]`` (or one such
object per line). A layer's events are concatenated in file order; the t-th row over a layer's
events is token t, so every layer must log the same number of rows. Weights are not read.

**llama.cpp expert logs**: text lines ``EXPERT|L<l>|T<t>: [id, id, ...]`` among any other log
lines. Tokens are keyed by ``T``; a (T, L) pair seen again starts a new request (the next prompt
restarting at ``T0``), which becomes the trace's ``request``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from slimjax.traces._assemble import Records, assemble
from slimjax.traces._jsonl import _is_id_list, _is_int, _json_value
from slimjax.traces._sources import reject_unknown
from slimjax.traces._trace import Trace

__all__ = ["LLAMACPP_LINE", "is_vllm_event", "load_llamacpp", "load_vllm_events"]

#: A llama.cpp expert-log line: ``EXPERT|L<layer>|T<token>: [ids]``.
LLAMACPP_LINE = re.compile(r"^\s*EXPERT\|L(\d+)\|T(\d+):\s*\[([^\]]*)\]\s*$")
_LLAMACPP_PREFIX = re.compile(r"^\s*EXPERT\|")


def is_vllm_event(obj: Any) -> bool:
    return isinstance(obj, dict) and "layer_idx" in obj and "indices" in obj


def load_vllm_events(
    path: str | os.PathLike,
    *,
    num_experts: int | None = None,
    layers: Sequence[int] | np.ndarray | None = None,
    source: str | None = None,
    **unused: Any,
) -> Trace:
    """vLLM forward-hook routing events (JSON list or one event per line) → Trace.

    Args:
      num_experts: E; default: the largest id + 1.
      layers: the original layer indices to keep (default: all logged).

    Raises:
      ValueError: naming the file and ``entry i`` (0-based, in file order; ``row j`` inside it):
        malformed JSON, an entry without ``layer_idx``/``indices``, ``indices`` not a [T, K]
        list of integer lists, mixed K, an id >= E, a layer with fewer tokens than another.
    """
    reject_unknown(unused, ())
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None
        if not isinstance(doc, list):
            raise ValueError(f"{path}: expected a JSON list of events")
        events = doc
    else:
        events = []
        for lineno, ln in enumerate(text.splitlines(), 1):
            if not ln.strip():
                continue
            events.append(_json_value(path, lineno, ln))
    layer, token, values, widths, entry, row = [], [], [], [], [], []
    seen: dict[int, int] = {}
    for i, ev in enumerate(events):
        if not is_vllm_event(ev):
            raise ValueError(f"{path}: entry {i}: expected an object with 'layer_idx' and 'indices'")
        lay, idx = ev["layer_idx"], ev["indices"]
        if not _is_int(lay):
            raise ValueError(f"{path}: entry {i}: 'layer_idx' must be an integer, got {lay!r}")
        if not isinstance(idx, list):
            raise ValueError(f"{path}: entry {i}: 'indices' must be a [T, K] list, got {type(idx).__name__}")
        n = seen.get(lay, 0)
        for j, ids in enumerate(idx):
            if not _is_id_list(ids):
                raise ValueError(f"{path}: entry {i} row {j}: expected a non-empty list of integer ids, got {ids!r}")
            layer.append(lay)
            token.append(n + j)
            values.extend(ids)
            widths.append(len(ids))
            entry.append(i)
            row.append(j)
        seen[lay] = n + len(idx)
    ent, rw = np.asarray(entry, np.int64), np.asarray(row, np.int64)
    rec = Records(path, lambda r: f"{path}: entry {ent[r]} row {rw[r]}", None, np.asarray(token, np.int64),
                  np.asarray(layer, np.int64), np.asarray(values, np.int64),
                  np.concatenate([[0], np.cumsum(widths, dtype=np.int64)]))
    return assemble(rec, num_experts=num_experts, layers=layers, what="row", source=source or path)


def load_llamacpp(
    path: str | os.PathLike,
    *,
    num_experts: int | None = None,
    layers: Sequence[int] | np.ndarray | None = None,
    source: str | None = None,
    **unused: Any,
) -> Trace:
    """A llama.cpp-style expert log (``EXPERT|L<l>|T<t>: [ids]`` lines) → Trace.

    Other lines are skipped. A (T, L) pair seen again starts the next request.

    Args:
      num_experts: E; default: the largest id + 1.
      layers: the original layer indices to keep (default: all logged).

    Raises:
      ValueError: naming ``file:line``: an ``EXPERT|`` line that does not parse, mixed K, an id
        >= E, a layer with fewer tokens than another (ragged log); no expert lines at all.
    """
    reject_unknown(unused, ())
    path = os.fspath(path)
    prompt, token, layer, values, widths, lines = [], [], [], [], [], []
    req = 0
    seen: set[tuple[int, int]] = set()
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, text in enumerate(f, 1):
                m = LLAMACPP_LINE.match(text)
                if m is None:
                    if _LLAMACPP_PREFIX.match(text):
                        raise ValueError(f"{path}:{lineno}: malformed expert line (expected "
                                         f"'EXPERT|L<layer>|T<token>: [ids]'): {text.strip()[:80]!r}")
                    continue
                lay, t = int(m.group(1)), int(m.group(2))
                try:
                    ids = [int(v) for v in m.group(3).replace(",", " ").split()]
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: expert ids must be integers: [{m.group(3)}]") from None
                if not ids:
                    raise ValueError(f"{path}:{lineno}: no expert ids")
                if (t, lay) in seen:
                    req += 1
                    seen = set()
                seen.add((t, lay))
                prompt.append(req)
                token.append(t)
                layer.append(lay)
                values.extend(ids)
                widths.append(len(ids))
                lines.append(lineno)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason})") from None
    if not lines:
        raise ValueError(f"{path}: no 'EXPERT|L<layer>|T<token>: [ids]' lines found")
    line = np.asarray(lines, np.int64)
    pr = np.asarray(prompt, np.int64)
    rec = Records(path, lambda r: f"{path}:{line[r]}", pr.astype(object) if pr.max() > 0 else None,
                  np.asarray(token, np.int64), np.asarray(layer, np.int64), np.asarray(values, np.int64),
                  np.concatenate([[0], np.cumsum(widths, dtype=np.int64)]))
    return assemble(rec, num_experts=num_experts, layers=layers, what="line", source=source or path)
