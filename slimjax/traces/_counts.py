"""Aggregate per-layer expert counts → an *approximate* trace sampled by Plackett–Luce.

Counts hold marginals only (how often each expert was chosen), no co-activation. Files: a Python
pickle of ``collections.Counter`` objects (read with a restricted unpickler that only rebuilds
``Counter`` and NumPy integer/float scalars), a JSON object with ``expert_usage_by_layer`` or a
flat JSON map ``{"<layer>:<expert>": count}``, a NumPy ``.npy`` array [L, E], or SGLang's
expert-distribution CSV (``layer_id,expert_id,count`` rows).
Tokens are sampled by Plackett–Luce (Gumbel top-K) with weights calibrated so that each
expert's inclusion probability matches its count; the trace is marked ``approximate=True``.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import pickle
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float, Int

from slimjax.traces._sources import hints, reject_unknown
from slimjax.traces._trace import Trace

__all__ = ["load_counts", "sample_from_counts"]


class _DType:
    """Stand-in for ``numpy.dtype`` inside a counts pickle: keeps the type string only."""

    def __init__(self, spec, align=False, copy=False):
        if not isinstance(spec, str):
            raise pickle.UnpicklingError(f"dtype spec must be a string, got {type(spec).__name__}")
        self.spec = spec
        self.order = "<"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]


def _np_scalar(dtype, data=b""):
    """Rebuild a NumPy integer/float scalar from its dtype and raw bytes (nothing else allowed)."""
    if not isinstance(dtype, _DType) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("numpy scalar: unexpected arguments")
    dt = np.dtype(dtype.spec).newbyteorder(dtype.order if dtype.order in "<>" else "=")
    if dt.kind not in "iuf" or len(data) != dt.itemsize:
        raise pickle.UnpicklingError(f"numpy scalar: only integer/float scalars allowed, got {dtype.spec}")
    v = np.frombuffer(data, dtype=dt)[0]
    return int(v) if dt.kind in "iu" else float(v)


class _CountsUnpickler(pickle.Unpickler):
    """Only ``collections.Counter`` and NumPy scalar reconstruction; everything else is refused."""

    _ALLOWED = {
        ("collections", "Counter"): collections.Counter,
        ("numpy.core.multiarray", "scalar"): _np_scalar,
        ("numpy._core.multiarray", "scalar"): _np_scalar,
        ("numpy", "dtype"): _DType,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a counts pickle") from None


def _counts_from_pickle(path: str) -> list[tuple[str, dict]]:
    with open(path, "rb") as f:
        data = f.read()
    try:
        obj = _CountsUnpickler(io.BytesIO(data)).load()
    except Exception as err:  # UnpicklingError, EOFError, struct errors ...
        raise ValueError(f"{path}: not a counts pickle ({type(err).__name__}: {err})") from None
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list) or not obj or not all(isinstance(c, dict) for c in obj):
        raise ValueError(f"{path}: expected a list of Counters {{expert_id: count}}, got {type(obj).__name__}")
    out = []
    for i, c in enumerate(obj):
        if all(isinstance(k, tuple) and len(k) == 2 for k in c):
            out.append(("pairs", c))
        elif all(isinstance(k, int) for k in c):
            out.append(("single", c))
        else:
            raise ValueError(f"{path}: entry {i}: keys must be expert ids or (id, id) pairs")
    return out


_PAIR_KEY = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
#: The header of SGLang's expert-distribution recorder CSV (``dump_expert_distribution_record``).
SGLANG_CSV_HEADER = "layer_id,expert_id,count"


def is_pair_map(doc: Any) -> bool:
    """A JSON object ``{"<layer>:<expert>": count, ...}``?"""
    return isinstance(doc, dict) and bool(doc) and all(isinstance(k, str) and _PAIR_KEY.match(k) for k in doc)


def _by_layer(path: str, triples: list[tuple[int, int, Any, str]]) -> tuple[list[int], list[dict]]:
    """(layer, expert, count, where) triples → sorted layers and one {expert: count} per layer."""
    per: dict[int, dict] = {}
    for lay, e, n, where in triples:
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ValueError(f"{where}: count must be a non-negative integer, got {n!r}")
        c = per.setdefault(lay, {})
        c[e] = c.get(e, 0) + int(n)
    if not per:
        raise ValueError(f"{path}: no counts found")
    lays = sorted(per)
    return lays, [per[v] for v in lays]


def _counts_from_csv(path: str) -> tuple[list[int], list[dict]]:
    triples = []
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        head = [h.strip() for h in next(rows, [])]
        if head != SGLANG_CSV_HEADER.split(","):
            raise ValueError(f"{path}:1: expected the header {SGLANG_CSV_HEADER!r}, got {','.join(head)!r}")
        for lineno, row in enumerate(rows, 2):
            if not row or not "".join(row).strip():
                continue
            try:
                lay, e, n = (int(v) for v in row)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: expected three integers layer_id,expert_id,count, "
                                 f"got {','.join(row)!r}") from None
            triples.append((lay, e, n, f"{path}:{lineno}"))
    return _by_layer(path, triples)


def _counts_from_npy(path: str) -> list[dict]:
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as err:  # ValueError (pickled objects refused), OSError ...
        raise ValueError(f"{path}: not a readable .npy array ({err})") from None
    if a.ndim != 2 or a.dtype.kind not in "iuf":
        raise ValueError(f"{path}: expected per-layer counts [L, E] of numbers, got {a.dtype}{list(a.shape)}")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a) & (a == np.round(a))):
        raise ValueError(f"{path}: counts must be whole numbers")
    bad = np.argwhere(a < 0)
    if bad.size:
        raise ValueError(f"{path}: negative count at [layer {bad[0][0]}, expert {bad[0][1]}]")
    return [{e: int(n) for e, n in enumerate(row)} for row in a]


def load_counts(
    path: str,
    *,
    tokens: int = 8192,
    seed: int = 0,
    num_experts: int | None = None,
    top_k: int | None = None,
    layers: Sequence[int] | None = None,
    calibrate: bool = True,
    source: str | None = None,
    **unused: Any,
) -> Trace:
    """Aggregate per-layer counts -> an *approximate* Trace sampled by Plackett–Luce.

    Reads a pickle (list of ``Counter`` {expert: count} per layer, or cross-layer Counters
    {(e_i, e_j): count} for layer pairs, whose marginals are used), a JSON object
    ``{"expert_usage_by_layer": {layer: {expert: count}}, "num_experts", "layers", "top_k"?}``, a
    flat JSON map ``{"<layer>:<expert>": count}``, a ``.npy`` array [L, E] (layers ``0..L-1``,
    E its width) or SGLang's expert-distribution CSV (``layer_id,expert_id,count``).

    Args:
      tokens: tokens to sample.
      seed: sampling seed.
      num_experts: E; default from the file, then the known source.
      top_k: K; default from the file, then the known source, else 1.
      layers: the layers to keep; default from the file, then the known source.
      calibrate: fit the Plackett–Luce weights so inclusion probabilities match the marginals.
    """
    reject_unknown(unused, ("warmup",))
    path = os.fspath(path)
    known = hints(path)
    counters, file_layers, file_E, file_K = _read_counters(path)
    for i, c in enumerate(counters):
        for e, n in c.items():
            if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
                raise ValueError(f"{path}: layer entry {i}: count of expert {e} must be a non-negative integer, got {n!r}")
            if e < 0:
                raise ValueError(f"{path}: layer entry {i}: negative expert id {e}")
    E = int(num_experts or file_E or known.get("num_experts") or max(max(c) for c in counters if c) + 1)
    K = int(top_k or file_K or known.get("top_k") or 1)
    counts = _count_matrix(path, counters, E)
    if layers is None:
        layers = file_layers or known.get("layers")
        if layers is None or len(layers) != len(counters):
            layers = list(range(len(counters)))
    elif len(layers) != len(counters):
        raise ValueError(f"layers: {len(layers)} given but the file has {len(counters)} layers")
    ids = sample_from_counts(counts, K, tokens, seed=seed, calibrate=calibrate)
    return Trace(ids, E, np.asarray(layers), source=source or f"{path} (sampled from counts)", approximate=True)


def _read_counters(path: str) -> tuple[list, list | None, int | None, int | None]:
    """The per-layer {expert: count} maps of a counts file, by content: (counters, the file's
    layer ids or None, its num_experts or None, its top_k or None)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:6] == b"\x93NUMPY":
        counters = _counts_from_npy(path)
        return counters, None, len(counters[0]), None
    if head.lstrip().startswith(SGLANG_CSV_HEADER.encode()):
        file_layers, counters = _counts_from_csv(path)
        return counters, file_layers, None, None
    if head[:1] == b"\x80":
        return _pickle_marginals(path), None, None, None
    return _counts_from_json(path)


def _pickle_marginals(path: str) -> list:
    """Per-layer counters of a pickle: per-expert Counters as they are, or the marginals of
    cross-layer pair Counters for layer pairs (a, b), (b, c), ..."""
    entries = _counts_from_pickle(path)
    if all(kind == "single" for kind, _ in entries):
        return [c for _, c in entries]
    if not all(kind == "pairs" for kind, _ in entries):
        raise ValueError(f"{path}: mixes per-expert and pair counters")
    counters: list = []
    for i, (_, c) in enumerate(entries):
        first: collections.Counter = collections.Counter()
        second: collections.Counter = collections.Counter()
        for (a, b), n in c.items():
            first[a] += n
            second[b] += n
        if i == 0:
            counters.append(first)
        counters.append(second)
    return counters


def _counts_from_json(path: str) -> tuple[list, list, int | None, int | None]:
    """``{"expert_usage_by_layer": {layer: {expert: count}}, ...}`` or ``{"<l>:<e>": count}``,
    layers sorted by id."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        line = getattr(err, "lineno", 1)
        raise ValueError(f"{path}:{line}: malformed counts JSON ({err})") from None
    usage = doc.get("expert_usage_by_layer") if isinstance(doc, dict) else None
    if usage is None and is_pair_map(doc):
        usage = {}
        for k, n in doc.items():
            m = _PAIR_KEY.match(k)
            usage.setdefault(m.group(1), {})[m.group(2)] = n
        doc = {}
    if not isinstance(usage, dict) or not usage:
        raise ValueError(f"{path}: expected a JSON object with a non-empty 'expert_usage_by_layer' or "
                         "a map {\"<layer>:<expert>\": count}")
    keys = list(usage)
    try:
        file_layers = [int(k) for k in keys]
        counters = [{int(e): v for e, v in usage[k].items()} for k in keys]
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{path}: expert_usage_by_layer must map layer -> {{expert: count}} ({err})") from None
    order = np.argsort(file_layers, kind="stable")
    return [counters[i] for i in order], [file_layers[i] for i in order], doc.get("num_experts"), doc.get("top_k")


def _count_matrix(path: str, counters: list, E: int) -> np.ndarray:
    """counts [layers, E] (float64) with the ids checked against E and no all-zero layer."""
    counts = np.zeros((len(counters), E), np.float64)
    for i, c in enumerate(counters):
        for e, n in c.items():
            if e >= E:
                raise ValueError(f"{path}: layer entry {i}: expert id {e} >= num_experts={E}")
            counts[i, e] = n
        if counts[i].sum() <= 0:
            raise ValueError(f"{path}: layer entry {i}: all counts are zero")
    return counts


def sample_from_counts(
    counts: Float[np.ndarray, "L E"],
    top_k: int,
    tokens: int,
    *,
    seed: int = 0,
    calibrate: bool = True,
    iterations: int = 20,
) -> Int[np.ndarray, "T L K"]:
    """Sample ``tokens`` top-K sets per layer by Plackett–Luce (Gumbel top-k) from counts [L, E].

    With ``calibrate`` the log-weights are fitted (fixed point on a large sample) so that every
    expert's inclusion probability ≈ K · count / Σ count, i.e. the sampled trace has the
    file's marginals; plain PL with weights ∝ counts flattens them when K > 1.
    Layers are sampled independently (the counts hold no co-activation).
    """
    counts = np.asarray(counts, np.float64)
    L, E = counts.shape
    K = int(top_k)
    if not 1 <= K <= E:
        raise ValueError(f"top_k: must be in [1, E={E}], got {K}")
    if tokens < 1:
        raise ValueError(f"tokens: must be >= 1, got {tokens}")
    rng = np.random.default_rng(seed)
    target = K * counts / counts.sum(-1, keepdims=True)  # inclusion probabilities, sum K
    if np.any(target > 1 + 1e-9):
        raise ValueError(f"counts: an expert's share exceeds 1/K={1 / K:.3g}; inconsistent with top-{K} routing")
    target = np.clip(target, 0.0, 1.0)
    with np.errstate(divide="ignore"):
        logw = np.log(counts / counts.sum(-1, keepdims=True))
    active = counts > 0
    if calibrate and K > 1:
        n_cal = int(np.clip(1_500_000 // (L * E), 4096, 65536))  # inclusion error ~ 1/sqrt(n_cal)
        g = rng.gumbel(size=(n_cal, L, E))  # common random numbers: a smooth fixed-point map
        flat = (np.arange(L) * E)[None, :, None]
        for it in range(iterations):
            top = np.argpartition(-(logw[None] + g), K - 1, axis=-1)[..., :K]
            inc = np.bincount((top + flat).ravel(), minlength=L * E).reshape(L, E) / n_cal
            step = 0.7 if it < iterations // 2 else 0.35
            upd = np.where(active, np.log(np.maximum(target, 1e-12)) - np.log(np.maximum(inc, 0.5 / n_cal)), 0.0)
            logw = np.where(active, logw + step * upd, -np.inf)
            logw = logw - np.max(np.where(active, logw, -np.inf), axis=-1, keepdims=True)
    # Experts never seen can still fill a set when a layer has fewer than K active experts.
    logw = np.where(active, logw, -1e9)
    g = rng.gumbel(size=(tokens, L, E))
    key = -(logw[None] + g)
    top = np.argpartition(key, K - 1, axis=-1)[..., :K] if K < E else np.broadcast_to(np.arange(E), key.shape).copy()
    order = np.argsort(np.take_along_axis(key, top, -1), axis=-1)  # Plackett–Luce order: best first
    return np.take_along_axis(top, order, -1).astype(np.int32)
