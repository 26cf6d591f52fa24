"""Routing records (one per token and layer, in any order) → a :class:`~slimjax.traces.Trace`.

The per-record readers (moe-policylang JSONL and Parquet, vLLM hook events, llama.cpp expert
logs) turn a file into the same column-wise records: a prompt key, a token index within the
prompt, a layer, the chosen ids, optional phase/domain tags and where each record is in the file
(``file:line`` or ``file: row r``). :func:`assemble` checks them (one K, every token at every
layer once, ids < E) and builds the trace with vectorised NumPy: tokens in order of first
appearance, layers sorted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from slimjax.traces._jsonl import _codes
from slimjax.traces._trace import Trace

__all__ = ["Records", "assemble"]


@dataclasses.dataclass(frozen=True)
class Records:
    """R routing records, column-wise.

    Attributes:
      path: the file (for messages).
      where: record index -> its place in the file, e.g. ``"trace.jsonl:7"``.
      prompt: [R] prompt keys (an int array, or objects: ints or strings), or None (one unnamed prompt).
      token: int64 [R] token index within its prompt.
      layer: int64 [R] original layer index.
      values: int64 [Σ widths] every record's ids, record after record.
      offsets: int64 [R + 1] record r's ids are ``values[offsets[r]:offsets[r + 1]]``.
      phase, domain: object [R] tags (None where a record has none), or None.
    """

    path: str
    where: Callable[[int], str]
    prompt: np.ndarray | None
    token: np.ndarray
    layer: np.ndarray
    values: np.ndarray
    offsets: np.ndarray
    phase: np.ndarray | None = None
    domain: np.ndarray | None = None


def _request_ids(prompt: np.ndarray) -> np.ndarray:
    """Integer prompt ids stay as they are; other keys become codes in order of first appearance."""
    if prompt.dtype.kind in "iu":
        return prompt.astype(np.int64)
    vals = prompt.tolist()
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
        return np.asarray(vals, np.int64)
    return _codes(prompt)


def _tags(tags: np.ndarray | None, first: np.ndarray) -> np.ndarray | None:
    if tags is None:
        return None
    per_token = tags[first]
    if all(v is None for v in per_token.tolist()):
        return None
    return np.array(["" if v is None else str(v) for v in per_token.tolist()], dtype=str)


def assemble(
    rec: Records,
    *,
    num_experts: int | None = None,
    top_k: int | None = None,
    layers: Sequence[int] | np.ndarray | None = None,
    source: str = "",
    what: str = "record",
    top_k_from: str = "top_k",
) -> Trace:
    """Check the records and build the trace (tokens in order of first appearance, layers sorted).

    Args:
      rec: the records.
      num_experts: E (default: the largest id + 1).
      top_k: expected K (default: the first record's).
      layers: the original layer indices to keep, in this order (default: all, sorted).
      source, what: the trace's source; what a record is called in messages (record, row, line).
      top_k_from: where an expected ``top_k`` comes from (for the message).

    Raises:
      ValueError: no records; records of different K (mixed top-K); a negative id or an id >=
        num_experts; a second record for one (prompt, token, layer); a layer with fewer tokens
        than another (ragged log) — each naming the file and the line or row.
    """
    path, where = rec.path, rec.where
    R = int(rec.layer.size)
    if R == 0:
        raise ValueError(f"{path}: no routing {what}s found")
    widths = np.diff(rec.offsets)
    K = int(top_k) if top_k is not None else int(widths[0])
    bad = np.flatnonzero(widths != K)
    if bad.size:
        r = int(bad[0])
        ref = top_k_from if top_k is not None else f"the first {what} ({where(0)})"
        raise ValueError(f"{where(r)}: {int(widths[r])} expert ids, but {ref} has {K}: mixed top-K in one trace")
    if K < 1:
        raise ValueError(f"{where(0)}: a {what} without expert ids")
    ids = rec.values.reshape(R, K)
    neg = np.flatnonzero((ids < 0).any(1))
    if neg.size:
        raise ValueError(f"{where(int(neg[0]))}: negative expert id in {ids[neg[0]].tolist()}")
    keep = np.arange(R)
    logged = np.unique(rec.layer)
    if layers is not None:
        order = np.asarray([int(v) for v in layers], np.int64)
        missing = [int(v) for v in order if v not in logged]
        if missing:
            raise ValueError(f"layers: layer(s) {missing} are not in {path} (logged: {logged.tolist()})")
        keep = np.flatnonzero(np.isin(rec.layer, order))
    else:
        order = logged
    L = order.size
    sorter = np.argsort(order, kind="stable")
    lay = sorter[np.searchsorted(order, rec.layer[keep], sorter=sorter)].astype(np.int64)
    req = _request_ids(rec.prompt[keep]) if rec.prompt is not None else np.zeros(keep.size, np.int64)
    key = np.stack([req, rec.token[keep]], 1)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    tok = rank[inverse]  # token number in order of first appearance
    first = np.sort(first)  # record (within keep) of each token's first appearance
    T = first.size
    cell = tok * L + lay
    srt = np.argsort(cell, kind="stable")
    dup = np.flatnonzero(cell[srt][1:] == cell[srt][:-1])
    if dup.size:
        r = int(keep[srt[dup[0] + 1]])
        raise ValueError(f"{where(r)}: a second {what} for {_show(rec, r)}token {int(rec.token[r])}, "
                         f"layer {int(rec.layer[r])} (first at {where(int(keep[srt[dup[0]]]))})")
    counts = np.bincount(lay, minlength=L)
    if (counts != T).any():
        j = int(np.argmin(counts))
        full = int(np.argmax(counts))
        present = np.zeros((T, L), bool)
        present[tok, lay] = True
        t = int(np.flatnonzero(~present[:, j])[0])
        r = int(keep[first[t]])
        raise ValueError(
            f"{path}: ragged log: layer {int(order[j])} has {int(counts[j])} tokens but layer {int(order[full])} has "
            f"{int(counts[full])}; {_show(rec, r)}token {int(rec.token[r])} (first {what} at {where(r)}) "
            f"has no {what} for layer {int(order[j])}")
    out = np.empty((T, L, K), np.int64)
    out[tok, lay] = ids[keep]
    E = int(num_experts) if num_experts is not None else int(out.max()) + 1
    over = np.flatnonzero((ids[keep] >= E).any(1))
    if over.size:
        r = int(keep[over[0]])
        v = int(ids[r][ids[r] >= E][0])
        raise ValueError(f"{where(r)}: expert id {v} >= num_experts={E}")
    tok_rec = keep[first]
    request = req[first] if rec.prompt is not None else None
    return Trace(out, E, order, request=request, source=source or path,
                 phase=_tags(rec.phase, tok_rec), domain=_tags(rec.domain, tok_rec))


def _show(rec: Records, r: int) -> str:
    """``"prompt <id>, "`` of record r (empty without prompt ids)."""
    if rec.prompt is None:
        return ""
    p = rec.prompt[r]
    return f"prompt {p.item() if hasattr(p, 'item') else p!r}, "
