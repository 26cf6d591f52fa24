"""Real routing traces (DESIGN §5.4): the canonical format, loaders, patterns, splits, replay at scale.

A :class:`Trace` holds the experts each token was routed to at each logged MoE layer,
``expert_ids`` int [T, L, K], plus optional per-token ``task``/``user``/``request`` ids [T],
the original layer indices ``layers`` [L], the number of routed experts per layer and where the
trace came from. Canonical file: ``.npz`` with those keys (:meth:`Trace.save`, :func:`load`).

:func:`load` picks the loader by the file's *content*:

* canonical ``.npz`` (a zip archive holding ``expert_ids``);
* JSONL per-token logs: one JSON object per line with a ``layer`` and the chosen ids
  (``topk_ids``; the vLLM-logger format ``{"type": "route", "req_id", "token_idx", "layer",
  "topk_ids", "topk_weights"}``, optionally a ``{"type": "meta", ...}`` line). Several files (or a
  folder of them, one file per layer) are joined by row order after the warm-up rows are dropped;
* aggregate per-layer counts (marginals only): a Python pickle of ``collections.Counter`` objects
  (read with a restricted unpickler that only rebuilds ``Counter`` and NumPy integer scalars), or
  a JSON object with ``expert_usage_by_layer``. Tokens are then *sampled* by Plackett–Luce from the
  marginals (calibrated so each expert's inclusion probability matches its count) and the trace is
  marked ``approximate=True``: its co-activation structure is invented, only marginals are real.

Defaults that a file does not state (warm-up rows, number of experts, top-K, layer indices) come
from :data:`KNOWN_SOURCES`, matched on the path or the model id in the file, and can always be
given explicitly.

:func:`patterns` turns (a subset of) a trace into the weighted patterns of an
:class:`~slimjax.Instance` (the empirical distribution, identical sets merged);
:func:`split` makes train/test parts by token or by request; :func:`replay_trace` replays a trace
through a placement in chunks (single instance or batch) and reports mean/p50/p95/p99;
:func:`statistics` computes the routing statistics used to calibrate the generators.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import pickle
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

__all__ = [
    "KNOWN_SOURCES",
    "Trace",
    "load",
    "load_counts",
    "load_jsonl",
    "load_npz",
    "patterns",
    "replay_trace",
    "sample_from_counts",
    "split",
    "statistics",
]

# --------------------------------------------------------------------------------------------
# Known sources: defaults for what a file does not say (see ../shared/traces/raw/*/SOURCE.md).
# Matched (case-insensitively) against the path and the model id of a meta line.
# --------------------------------------------------------------------------------------------
KNOWN_SOURCES: dict[str, dict[str, Any]] = {
    # Qwen1.5-MoE-A2.7B-Chat in vLLM 0.11: 8192 + 256 dummy rows of profiling/CUDA-graph runs.
    "qwen1.5-moe": {"num_experts": 60, "top_k": 4, "warmup": 8448},
    # OLMoE-1B-7B in vLLM 0.6.6: 2048 dummy profiling rows (uniform weights, identical ids).
    "olmoe-1b-7b": {"num_experts": 64, "top_k": 8, "warmup": 2048},
    # allenai/OLMoE routing_output pickles: counts of layers [0, 7, 15].
    "olmoe/expert_counts": {"num_experts": 64, "top_k": 8, "layers": [0, 7, 15]},
    "mistral/expert_counts": {"num_experts": 8, "top_k": 2, "layers": [0, 7, 15]},
    # google/switch-base-128 statistics (specMoE): top-1.
    "specmoe": {"num_experts": 128, "top_k": 1},
    "switch-base": {"num_experts": 128, "top_k": 1},
    "mixtral": {"num_experts": 8, "top_k": 2},
}

# A leading run of at least this many rows with one identical expert set is a warm-up/dummy run.
_AUTO_WARMUP_MIN_RUN = 64


def _hints(*texts: str | None) -> dict[str, Any]:
    """Defaults of the first known source whose key occurs in any of ``texts``."""
    hay = " ".join(t.lower().replace("\\", "/") for t in texts if t)
    for key, vals in KNOWN_SOURCES.items():
        if key in hay:
            return dict(vals)
    return {}


# --------------------------------------------------------------------------------------------
# The Trace
# --------------------------------------------------------------------------------------------
def _opt_ids(value: Any, T: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
    a = np.asarray(value)
    if a.shape != (T,):
        raise ValueError(f"{name}: expected shape [T={T}], got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: must be integer ids, got dtype {a.dtype}")
    return a.astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class Trace:
    """Per-token routing of a MoE model.

    Attributes:
      expert_ids: int32 [T, L, K], the experts chosen for token t at (logged) MoE layer l.
      num_experts: E, routed experts per layer; every id is in [0, E).
      layers: int [L], original layer indices of the logged layers (default ``0..L-1``).
      task, user, request: optional int [T] per-token ids.
      source: free text (file, model).
      approximate: True when the tokens were sampled from aggregate counts (marginals only).

    Raises:
      ValueError: wrong shapes or dtypes, ids outside [0, num_experts).
    """

    expert_ids: np.ndarray
    num_experts: int
    layers: np.ndarray | None = None
    task: np.ndarray | None = None
    user: np.ndarray | None = None
    request: np.ndarray | None = None
    source: str = ""
    approximate: bool = False

    def __post_init__(self):
        ids = np.asarray(self.expert_ids)
        if ids.ndim != 3:
            raise ValueError(f"expert_ids: expected shape [T, L, K], got {ids.shape}")
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"expert_ids: must be integers, got dtype {ids.dtype}")
        T, L, K = ids.shape
        if L < 1 or K < 1:
            raise ValueError(f"expert_ids: need L >= 1 and K >= 1, got shape {ids.shape}")
        E = int(self.num_experts)
        if E < 1:
            raise ValueError(f"num_experts: must be >= 1, got {self.num_experts}")
        if K > E:
            raise ValueError(f"expert_ids: K={K} exceeds num_experts={E}")
        if ids.size:
            bad = (ids < 0) | (ids >= E)
            if bad.any():
                i = tuple(int(v) for v in np.argwhere(bad)[0])
                raise ValueError(f"expert_ids: ids must be in [0, num_experts={E}), got {ids[i]} at index {i}")
        layers = np.arange(L) if self.layers is None else np.asarray(self.layers)
        if layers.shape != (L,):
            raise ValueError(f"layers: expected shape [L={L}], got {layers.shape}")
        object.__setattr__(self, "expert_ids", ids.astype(np.int32))
        object.__setattr__(self, "num_experts", E)
        object.__setattr__(self, "layers", layers.astype(np.int64))
        for name in ("task", "user", "request"):
            object.__setattr__(self, name, _opt_ids(getattr(self, name), T, name))
        object.__setattr__(self, "source", str(self.source))
        object.__setattr__(self, "approximate", bool(self.approximate))

    # -- shapes --------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """(T, L, K)."""
        return tuple(self.expert_ids.shape)  # type: ignore[return-value]

    @property
    def num_tokens(self) -> int:
        return self.expert_ids.shape[0]

    @property
    def num_layers(self) -> int:
        return self.expert_ids.shape[1]

    @property
    def top_k(self) -> int:
        return self.expert_ids.shape[2]

    def __len__(self) -> int:
        return self.num_tokens

    def __repr__(self) -> str:
        T, L, K = self.shape
        extra = ", approximate" if self.approximate else ""
        return f"Trace(T={T}, L={L}, K={K}, E={self.num_experts}, layers={self.layers.tolist()}{extra}, source={self.source!r})"

    # -- selection -----------------------------------------------------------------------------
    def select(self, tokens: Any = None, *, layers: Any = None) -> Trace:
        """A sub-trace: ``tokens`` (index array, bool mask [T] or slice) and/or ``layers`` (positions)."""
        idx = _token_index(tokens, self.num_tokens)
        lay = slice(None) if layers is None else np.asarray(layers)
        ids = self.expert_ids[idx][:, lay]
        pick = (lambda a: None if a is None else a[idx])
        return Trace(ids, self.num_experts, self.layers[lay], pick(self.task), pick(self.user), pick(self.request),
                     self.source, self.approximate)

    # -- canonical file --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> str:
        """Write the canonical ``.npz`` (DESIGN §5.4); returns the path written."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        arrays = {
            "expert_ids": self.expert_ids,
            "num_experts": np.int64(self.num_experts),
            "layers": self.layers,
            "source": np.array(self.source),
            "approximate": np.bool_(self.approximate),
        }
        for name in ("task", "user", "request"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        np.savez_compressed(path, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Trace:
        """Read a canonical ``.npz``."""
        return load_npz(path)


def _token_index(tokens: Any, T: int) -> Any:
    if tokens is None:
        return slice(None)
    if isinstance(tokens, slice):
        return tokens
    a = np.asarray(tokens)
    if a.dtype == bool:
        if a.shape != (T,):
            raise ValueError(f"tokens: a boolean mask must have shape [T={T}], got {a.shape}")
        return a
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"tokens: expected a slice, a bool mask [T] or int indices, got {a.dtype} {a.shape}")
    if a.size and (a.min() < -T or a.max() >= T):
        raise ValueError(f"tokens: indices must be in [0, T={T})")
    return a


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------
def load(path: str | os.PathLike | Sequence[str | os.PathLike], **options: Any) -> Trace:
    """Load a trace, choosing the loader by content.

    Args:
      path: a file, a folder of JSONL files (one per layer; joined), or a list of JSONL files.
      **options: passed to the loader: ``num_experts``, ``top_k``, ``layers``, ``warmup``
        (JSONL: rows to drop per file, or ``"auto"``), ``tokens`` and ``seed`` (counts: number of
        tokens to sample), ``source``.

    Raises:
      ValueError: unknown format, malformed content (with file and line), ids >= num_experts.
    """
    if isinstance(path, (list, tuple)):
        return load_jsonl([os.fspath(p) for p in path], **options)
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith((".jsonl", ".npz", ".pkl", ".json")))
        jsonl = [f for f in files if f.endswith(".jsonl")]
        if jsonl:
            return load_jsonl(jsonl, **options)
        if len(files) == 1:
            return load(files[0], **options)
        raise ValueError(f"{path}: a folder must hold JSONL files (one per layer) or exactly one trace file, found {files}")
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
        # One JSON document (counts) or one JSON object per line (per-token log)?
        try:
            with open(path, encoding="utf-8") as f:
                first = next((ln for ln in f if ln.strip()), "")
                f.seek(0)
                doc = json.load(f)
        except json.JSONDecodeError as err:
            try:
                json.loads(first)
            except json.JSONDecodeError:
                # neither one JSON document nor one object per line: report the document's error
                raise ValueError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None
            doc = None  # the first line parses: JSON lines
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text ({err})") from None
        if isinstance(doc, dict) and "expert_usage_by_layer" in doc:
            return load_counts(path, **options)
        return load_jsonl([path], **options)
    if not text:
        raise ValueError(f"{path}:1: empty file")
    raise ValueError(f"{path}: unknown trace format (expected .npz, JSONL, a counts pickle or counts JSON)")


def load_npz(path: str | os.PathLike, *, num_experts: int | None = None) -> Trace:
    """Read a canonical ``.npz`` trace (DESIGN §5.4)."""
    path = os.fspath(path)
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as err:  # zipfile.BadZipFile, OSError, pickle refused
        raise ValueError(f"{path}: not a readable .npz ({err})") from None
    with z:
        if "expert_ids" not in z.files:
            raise ValueError(f"{path}: missing array 'expert_ids' [T, L, K] (has {z.files})")
        ids = z["expert_ids"]
        if "num_experts" in z.files:
            E = int(z["num_experts"])
            if num_experts is not None and int(num_experts) != E:
                raise ValueError(f"{path}: num_experts={num_experts} given but the file says {E}")
        elif num_experts is not None:
            E = int(num_experts)
        else:
            E = int(ids.max()) + 1 if ids.size else 1
        get = lambda k: z[k] if k in z.files else None
        source = str(z["source"]) if "source" in z.files else path
        approx = bool(z["approximate"]) if "approximate" in z.files else False
        try:
            return Trace(ids, E, get("layers"), get("task"), get("user"), get("request"), source, approx)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


_ID_KEYS = ("topk_ids", "expert_ids", "experts", "ids")


def _read_jsonl(path: str) -> tuple[dict, list[tuple[int, int, tuple[int, ...], Any]]]:
    """Parse one JSONL file -> (meta, rows) with rows (line, layer, ids, request)."""
    meta: dict = {}
    rows: list[tuple[int, int, tuple[int, ...], Any]] = []
    with open(path, encoding="utf-8", errors="strict") as f:
        for lineno, line in enumerate(f, 1):
            s = line.strip()
            if not s:
                continue
            try:
                obj = json.loads(s)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
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
            if not isinstance(ids, list) or not ids or not all(isinstance(v, int) and not isinstance(v, bool) for v in ids):
                raise ValueError(f"{path}:{lineno}: '{key}' must be a non-empty list of integers, got {ids!r}")
            if any(v < 0 for v in ids):
                raise ValueError(f"{path}:{lineno}: negative expert id in {ids}")
            layer = obj.get("layer", meta.get("layers_logged", [0])[0] if meta.get("layers_logged") else 0)
            if not isinstance(layer, int) or isinstance(layer, bool):
                raise ValueError(f"{path}:{lineno}: 'layer' must be an integer, got {layer!r}")
            rows.append((lineno, layer, tuple(ids), obj.get("req_id", obj.get("request"))))
    return meta, rows


def _auto_warmup(sets: list[tuple[int, ...]]) -> int:
    """Length of the leading run of rows with one identical expert *set*, if it is a dummy run."""
    if not sets:
        return 0
    first = sets[0]
    n = 1
    while n < len(sets) and sets[n] == first:
        n += 1
    return n if n >= _AUTO_WARMUP_MIN_RUN else 0


def load_jsonl(
    paths: str | Sequence[str],
    *,
    warmup: int | str | None = "auto",
    num_experts: int | None = None,
    top_k: int | None = None,
    layers: Sequence[int] | None = None,
    source: str | None = None,
    **unused: Any,
) -> Trace:
    """Per-token JSONL logs -> Trace; several files/layers are joined by row order.

    Args:
      paths: one file or several (e.g. one file per layer).
      warmup: route rows to drop at the start of every layer's stream: an int, ``"auto"`` (the
        known-source default, else the leading run of >= 64 rows with one identical expert set —
        vLLM's profiling / CUDA-graph dummy runs), or None/0 (keep all).
      num_experts: E; default from the meta line, the known source, else max id + 1.
      top_k: expected K (checked); default: the rows' length.
      layers: original layer indices to keep (default all logged layers, sorted).

    Raises:
      ValueError: malformed rows (``file:line``), rows of different K, layers with different
        numbers of tokens after the warm-up, ids >= num_experts.
    """
    _reject_unknown(unused, ("tokens", "seed", "calibrate"))
    if isinstance(paths, (str, os.PathLike)):
        paths = [os.fspath(paths)]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("paths: no JSONL files given")
    streams: dict[int, list[tuple[str, int, tuple[int, ...], Any]]] = {}
    meta: dict = {}
    for p in paths:
        m, rows = _read_jsonl(p)
        meta = {**m, **meta} if meta else m
        for lineno, layer, ids, req in rows:
            streams.setdefault(layer, []).append((p, lineno, ids, req))
    if not streams:
        raise ValueError(f"{paths[0]}: no route rows found")
    hints = _hints(*paths, str(meta.get("model_id", "")))
    if warmup == "auto":
        warmup = hints.get("warmup", "detect")
    order = sorted(streams) if layers is None else list(layers)
    for lay in order:
        if lay not in streams:
            raise ValueError(f"layers: layer {lay} is not in the logs (logged: {sorted(streams)})")
    kept = {}
    for lay in order:
        rows = streams[lay]
        if warmup == "detect":
            n = _auto_warmup([tuple(sorted(r[2])) for r in rows])
        else:
            n = int(warmup or 0)
            if n < 0:
                raise ValueError(f"warmup: must be >= 0, got {n}")
        if n >= len(rows):
            raise ValueError(f"{rows[0][0]}: layer {lay} has {len(rows)} route rows, all dropped by warmup={n}")
        kept[lay] = rows[n:]
    T = len(kept[order[0]])
    for lay in order:
        if len(kept[lay]) != T:
            raise ValueError(
                f"{kept[lay][0][0]}: layer {lay} has {len(kept[lay])} rows after warm-up but layer {order[0]} has {T}; "
                "layers are joined by row order and must log the same tokens (set warmup=)"
            )
    K = top_k if top_k is not None else len(kept[order[0]][0][2])
    ids = np.empty((T, len(order), K), np.int64)
    for j, lay in enumerate(order):
        for t, (p, lineno, row, _) in enumerate(kept[lay]):
            if len(row) != K:
                raise ValueError(f"{p}:{lineno}: expected {K} expert ids (top-K), got {len(row)}")
            ids[t, j] = row
    E = num_experts or meta.get("num_experts") or hints.get("num_experts") or int(ids.max()) + 1
    E = int(E)
    if ids.max() >= E:
        t, j, k = (int(v) for v in np.argwhere(ids >= E)[0])
        p, lineno = kept[order[j]][t][:2]
        raise ValueError(f"{p}:{lineno}: expert id {ids[t, j, k]} >= num_experts={E}")
    reqs = [r[3] for r in kept[order[0]]]
    request = None
    if any(r is not None for r in reqs):
        codes: dict[Any, int] = {}
        request = np.array([codes.setdefault(r, len(codes)) for r in reqs], np.int64)
    model = meta.get("model_id", "")
    src = source or (f"{model} " if model else "") + ", ".join(paths)
    return Trace(ids, E, np.asarray(order), request=request, source=src)


def _reject_unknown(options: dict, allowed: Iterable[str]) -> None:
    bad = [k for k in options if k not in allowed]
    if bad:
        raise ValueError(f"options: unknown option(s) {bad} for this trace format")


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


def _counts_from_pickle(path: str) -> list[dict]:
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
    {(e_i, e_j): count} for layer pairs, whose marginals are used) or a JSON object
    ``{"expert_usage_by_layer": {layer: {expert: count}}, "num_experts", "layers", "top_k"?}``.

    Args:
      tokens: tokens to sample.  seed: sampling seed.
      num_experts, top_k, layers: defaults from the file, then the known source (K default 1).
      calibrate: fit the Plackett–Luce weights so inclusion probabilities match the marginals.
    """
    _reject_unknown(unused, ("warmup",))
    path = os.fspath(path)
    hints = _hints(path)
    with open(path, "rb") as f:
        is_pickle = f.read(1) == b"\x80"
    file_layers = None
    if is_pickle:
        entries = _counts_from_pickle(path)
        counters: list[dict] = []
        if all(kind == "pairs" for kind, _ in entries):
            # Cross-layer pair counts for layer pairs (a, b), (b, c), ...: marginals of a, b, c, ...
            for i, (_, c) in enumerate(entries):
                first: collections.Counter = collections.Counter()
                second: collections.Counter = collections.Counter()
                for (a, b), n in c.items():
                    first[a] += n
                    second[b] += n
                if i == 0:
                    counters.append(first)
                counters.append(second)
        elif all(kind == "single" for kind, _ in entries):
            counters = [c for _, c in entries]
        else:
            raise ValueError(f"{path}: mixes per-expert and pair counters")
    else:
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            line = getattr(err, "lineno", 1)
            raise ValueError(f"{path}:{line}: malformed counts JSON ({err})") from None
        usage = doc.get("expert_usage_by_layer") if isinstance(doc, dict) else None
        if not isinstance(usage, dict) or not usage:
            raise ValueError(f"{path}: expected a JSON object with a non-empty 'expert_usage_by_layer'")
        keys = list(usage)
        try:
            file_layers = [int(k) for k in keys]
            counters = [{int(e): v for e, v in usage[k].items()} for k in keys]
        except (ValueError, AttributeError) as err:
            raise ValueError(f"{path}: expert_usage_by_layer must map layer -> {{expert: count}} ({err})") from None
        order = np.argsort(file_layers, kind="stable")
        file_layers = [file_layers[i] for i in order]
        counters = [counters[i] for i in order]
        num_experts = num_experts or doc.get("num_experts")
        top_k = top_k or doc.get("top_k")
    for i, c in enumerate(counters):
        for e, n in c.items():
            if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
                raise ValueError(f"{path}: layer entry {i}: count of expert {e} must be a non-negative integer, got {n!r}")
            if e < 0:
                raise ValueError(f"{path}: layer entry {i}: negative expert id {e}")
    E = int(num_experts or hints.get("num_experts") or max(max(c) for c in counters if c) + 1)
    K = int(top_k or hints.get("top_k") or 1)
    counts = np.zeros((len(counters), E), np.float64)
    for i, c in enumerate(counters):
        for e, n in c.items():
            if e >= E:
                raise ValueError(f"{path}: layer entry {i}: expert id {e} >= num_experts={E}")
            counts[i, e] = n
        if counts[i].sum() <= 0:
            raise ValueError(f"{path}: layer entry {i}: all counts are zero")
    if layers is None:
        layers = file_layers or hints.get("layers")
        if layers is None or len(layers) != len(counters):
            layers = list(range(len(counters)))
    elif len(layers) != len(counters):
        raise ValueError(f"layers: {len(layers)} given but the file has {len(counters)} layers")
    ids = sample_from_counts(counts, K, tokens, seed=seed, calibrate=calibrate)
    return Trace(ids, E, np.asarray(layers), source=source or f"{path} (sampled from counts)", approximate=True)


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


# --------------------------------------------------------------------------------------------
# Patterns, splits
# --------------------------------------------------------------------------------------------
def _selected(trace: Trace, tokens: Any, user: int | None) -> np.ndarray:
    ids = trace.expert_ids[_token_index(tokens, trace.num_tokens)]
    if user is not None:
        if trace.user is None:
            raise ValueError("user: the trace has no per-token user ids")
        users = trace.user[_token_index(tokens, trace.num_tokens)]
        ids = ids[users == user]
    return ids


def patterns(
    trace: Trace, tokens: Any = None, user: int | None = None, merge: bool = True
) -> tuple[Int[np.ndarray, "L M K"], Float[np.ndarray, "L M"]]:
    """Empirical routing distribution of the selected tokens as weighted patterns.

    Args:
      trace: the trace.
      tokens: which tokens (indices, bool mask [T] or slice; default all).
      user: keep only tokens of this user (needs ``trace.user``).
      merge: merge identical expert *sets* per layer (ids sorted; order does not matter for
        max or sum) into one pattern whose weight is their share; layers are padded to a common
        M with zero-weight patterns. Without merging, M = T and every weight is 1/T.

    Returns:
      ``(patterns int32 [L, M, K], weight float64 [L, M])``, each layer's weights summing to 1.
    """
    ids = _selected(trace, tokens, user)
    T, L, K = ids.shape
    if T == 0:
        raise ValueError("tokens: no tokens selected")
    if not merge:
        return np.ascontiguousarray(ids.transpose(1, 0, 2)).astype(np.int32), np.full((L, T), 1.0 / T)
    per_layer = []
    for l in range(L):  # host-side preprocessing, once per trace
        uniq, cnt = np.unique(np.sort(ids[:, l], axis=1), axis=0, return_counts=True)
        order = np.argsort(-cnt, kind="stable")  # most frequent first
        per_layer.append((uniq[order], cnt[order]))
    M = max(u.shape[0] for u, _ in per_layer)
    pats = np.zeros((L, M, K), np.int32)
    w = np.zeros((L, M), np.float64)
    for l, (u, c) in enumerate(per_layer):
        pats[l, : u.shape[0]] = u
        pats[l, u.shape[0] :] = u[0]  # padding repeats a real pattern (weight 0)
        w[l, : u.shape[0]] = c / T
    return pats, w


def split(
    trace: Trace, fraction: float = 0.5, by: str = "token", seed: int | None = 0
) -> tuple[Trace, Trace]:
    """Train/test split: ``fraction`` of the tokens (or of the requests) go to the first part.

    Args:
      by: ``"token"`` (tokens assigned independently) or ``"request"`` (whole requests stay on
        one side; needs ``trace.request`` with >= 2 requests).
      seed: shuffle seed; None keeps the original order (first part = the earliest tokens).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction: must be in (0, 1), got {fraction}")
    T = trace.num_tokens
    rng = np.random.default_rng(seed) if seed is not None else None
    if by == "token":
        if T < 2:
            raise ValueError(f"trace: need >= 2 tokens to split, got {T}")
        order = rng.permutation(T) if rng is not None else np.arange(T)
        n = min(max(int(round(fraction * T)), 1), T - 1)
        first = np.zeros(T, bool)
        first[order[:n]] = True
    elif by == "request":
        if trace.request is None:
            raise ValueError("by='request': the trace has no per-token request ids")
        reqs = np.unique(trace.request)
        if reqs.size < 2:
            raise ValueError(f"by='request': need >= 2 requests, the trace has {reqs.size}")
        reqs = rng.permutation(reqs) if rng is not None else reqs
        n = min(max(int(round(fraction * reqs.size)), 1), reqs.size - 1)
        first = np.isin(trace.request, reqs[:n])
    else:
        raise ValueError(f"by: must be 'token' or 'request', got {by!r}")
    return trace.select(first), trace.select(~first)


# --------------------------------------------------------------------------------------------
# Replay at scale
# --------------------------------------------------------------------------------------------
@jax.jit
def _chunk_latency_max(d, ids):
    L = d.shape[-2]
    member = jax.vmap(lambda dd: dd[jnp.arange(L)[None, :, None], ids])(d)  # [B, C, L, K]
    return member.max(-1).sum(-1)


@jax.jit
def _chunk_latency_sum(d, ids):
    L = d.shape[-2]
    member = jax.vmap(lambda dd: dd[jnp.arange(L)[None, :, None], ids])(d)
    return member.sum(-1).sum(-1)


def replay_trace(
    inst: Any,
    placement: Bool[Array, "... N L E"],
    trace: Trace | Int[np.ndarray, "T L K"],
    *,
    batch: int = 16384,
    user: int = 0,
    aggregation: str = "max",
    include_base: bool = False,
    percentiles: Sequence[float] = (50, 95, 99),
    return_tokens: bool = False,
) -> dict[str, Any]:
    """Replay a trace through a placement in chunks of ``batch`` tokens; mean and percentiles.

    Works on one instance (placement [N, L, E]) or a batch (leading axis B on both): every
    instance replays the same tokens. Each chunk is one jitted call of fixed shape.

    Returns:
      ``{"mean", "p50", "p95", "p99", "tokens"}`` (floats, or arrays [B] for a batch), plus
      ``"latency"`` (per-token [T] or [B, T], NumPy) when ``return_tokens``.
    """
    from slimjax._objective import expert_latency_from
    ids = np.asarray(trace.expert_ids if isinstance(trace, Trace) else trace)
    if aggregation not in ("max", "sum"):
        raise ValueError(f"aggregation: must be 'max' or 'sum', got {aggregation!r}")
    batched = inst.latency.ndim == 5
    lat, fb, base = inst.latency, inst.fallback, inst.base
    x = jnp.asarray(placement, bool)
    if not batched:
        lat, fb, base, x = lat[None], fb[None], base[None], x[None]
    B, U, N, L, E = lat.shape
    if x.shape != (B, N, L, E):
        raise ValueError(f"placement: expected shape {((B,) if batched else ()) + (N, L, E)}, got {tuple(placement.shape)}")
    if ids.ndim != 3 or ids.shape[1] != L:
        raise ValueError(f"trace: expert_ids must be [T, L={L}, K], got {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= E):
        raise ValueError(f"trace: expert ids must be in [0, E={E}), got range [{ids.min()}, {ids.max()}]")
    if not 0 <= user < U:
        raise ValueError(f"user: must be in [0, U={U}), got {user}")
    T = ids.shape[0]
    if T == 0:
        raise ValueError("trace: no tokens to replay")
    d = jax.vmap(expert_latency_from)(lat, fb, x)[:, user]  # [B, L, E]
    fn = _chunk_latency_max if aggregation == "max" else _chunk_latency_sum
    chunk = min(batch, T)
    out = np.empty((B, T), np.float64)
    for start in range(0, T, chunk):
        part = ids[start : start + chunk]
        n = part.shape[0]
        if n < chunk:  # pad: one compiled shape for the whole trace
            part = np.concatenate([part, np.zeros((chunk - n,) + part.shape[1:], part.dtype)])
        res = np.asarray(fn(d, jnp.asarray(part, jnp.int32)))
        out[:, start : start + n] = res[:, :n]
    if include_base:
        out += np.asarray(base)[:, user][:, None]
    stats: dict[str, Any] = {"mean": out.mean(1), "tokens": T}
    for p in percentiles:
        stats[f"p{p:g}"] = np.percentile(out, p, axis=1)
    if not batched:
        stats = {k: (float(v[0]) if isinstance(v, np.ndarray) else v) for k, v in stats.items()}
    if return_tokens:
        stats["latency"] = out if batched else out[0]
    return stats


# --------------------------------------------------------------------------------------------
# Routing statistics (calibration of the generators)
# --------------------------------------------------------------------------------------------
def statistics(expert_ids: Trace | Int[np.ndarray, "T L K"], num_experts: int | None = None) -> dict[str, float]:
    """Routing statistics of a trace (means over layers).

    Returns:
      ``freq_cv``: coefficient of variation of the experts' activation frequencies;
      ``top10_share``: share of activations taken by the 10% most used experts;
      ``entropy``: entropy of the activation frequencies / log E (1 = uniform);
      ``distinct_share``: distinct expert sets / tokens;
      ``pair_top10_share``: share of co-activated pairs (K >= 2) falling on the 10% most frequent
        pairs among the E(E-1)/2 possible (NaN when K = 1);
      ``pair_lift``: ``pair_top10_share`` divided by the same statistic of tokens sampled
        independently from the same marginals (Plackett–Luce) — 1 means no co-activation beyond
        popularity, > 1 means structured co-activation.
    """
    if isinstance(expert_ids, Trace):
        E = expert_ids.num_experts if num_experts is None else num_experts
        ids = expert_ids.expert_ids
    else:
        ids = np.asarray(expert_ids)
        E = int(ids.max()) + 1 if num_experts is None else num_experts
    T, L, K = ids.shape
    counts = np.zeros((L, E))
    np.add.at(counts, (np.broadcast_to(np.arange(L)[None, :, None], ids.shape), ids), 1.0)
    f = counts / counts.sum(-1, keepdims=True)
    cv = f.std(-1) / f.mean(-1)
    top = max(1, int(round(0.1 * E)))
    top_share = np.sort(f, -1)[:, ::-1][:, :top].sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(f > 0, f * np.log(f), 0.0), -1) / np.log(E)
    distinct = np.mean([np.unique(np.sort(ids[:, l], 1), axis=0).shape[0] / T for l in range(L)])
    out = {
        "freq_cv": float(cv.mean()),
        "top10_share": float(top_share.mean()),
        "entropy": float(ent.mean()),
        "distinct_share": float(distinct),
        "pair_top10_share": float("nan"),
        "pair_lift": float("nan"),
    }
    if K >= 2:
        share = _pair_top_share(ids, E)
        base_ids = sample_from_counts(np.maximum(counts, 0), K, T, seed=12345, calibrate=True) if T else ids
        base = _pair_top_share(base_ids, E)
        out["pair_top10_share"] = float(share.mean())
        out["pair_lift"] = float((share / np.maximum(base, 1e-12)).mean())
    return out


def _pair_top_share(ids: np.ndarray, E: int) -> np.ndarray:
    """Per layer: share of within-token expert pairs that fall on the top 10% of possible pairs."""
    T, L, K = ids.shape
    s = np.sort(ids, -1)
    a, b = np.triu_indices(K, 1)
    lo, hi = s[..., a], s[..., b]  # [T, L, P]
    valid = lo != hi
    code = lo * E + hi
    n_pairs = E * (E - 1) // 2
    top = max(1, int(round(0.1 * n_pairs)))
    res = np.zeros(L)
    for l in range(L):
        c = np.bincount(code[:, l][valid[:, l]], minlength=E * E).astype(np.float64)
        tot = c.sum()
        res[l] = np.sort(c)[::-1][:top].sum() / tot if tot else np.nan
    return res
