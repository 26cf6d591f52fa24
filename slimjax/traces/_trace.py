"""The canonical trace: :class:`Trace` and its ``.npz`` file.

A :class:`Trace` holds the experts each token was routed to at each logged MoE layer,
``expert_ids`` int [T, L, K], plus optional per-token ``task``/``user``/``request`` ids [T] and
``phase``/``domain`` tags [T] (strings, e.g. ``"prefill"``/``"decode"``), the original layer
indices ``layers`` [L], the number of routed experts per layer and where the trace came from. The
canonical file is an ``.npz`` with those keys (:meth:`Trace.save`, :func:`load_npz`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Trace", "load_npz"]


def _opt_ids(value: Any, T: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
    a = np.asarray(value)
    if a.shape != (T,):
        raise ValueError(f"{name}: expected shape [T={T}], got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: must be integer ids, got dtype {a.dtype}")
    return a.astype(np.int64)


def _opt_tags(value: Any, T: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
    a = np.asarray(value)
    if a.shape != (T,):
        raise ValueError(f"{name}: expected shape [T={T}], got {a.shape}")
    if a.dtype == object:
        if not all(isinstance(v, str) for v in a.tolist()):
            raise ValueError(f"{name}: must be strings (one tag per token)")
    elif a.dtype.kind != "U":
        raise ValueError(f"{name}: must be strings (one tag per token), got dtype {a.dtype}")
    return a.astype(str) if a.size else np.zeros(0, "<U1")


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
      phase, domain: optional str [T] per-token tags (``"prefill"``/``"decode"``; a domain or
        data-set name; ``""`` where a token has none), for :func:`~slimjax.traces.split`.

    Raises:
      ValueError: wrong shapes or dtypes, ids outside [0, num_experts).
    """

    expert_ids: np.ndarray
    num_experts: int
    layers: np.ndarray | list | tuple | None = None
    task: np.ndarray | None = None
    user: np.ndarray | None = None
    request: np.ndarray | None = None
    source: str = ""
    approximate: bool = False
    phase: np.ndarray | Sequence[str] | None = None
    domain: np.ndarray | Sequence[str] | None = None

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
        for name in ("phase", "domain"):
            object.__setattr__(self, name, _opt_tags(getattr(self, name), T, name))
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
        idx = token_index(tokens, self.num_tokens)
        lay = slice(None) if layers is None else np.asarray(layers)
        ids = self.expert_ids[idx][:, lay]
        pick = (lambda a: None if a is None else a[idx])
        return Trace(ids, self.num_experts, self.layers[lay], pick(self.task), pick(self.user), pick(self.request),
                     self.source, self.approximate, pick(self.phase), pick(self.domain))

    # -- canonical file --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> str:
        """Write the canonical ``.npz`` (``.npz`` is appended to ``path`` if missing); returns the path written.

        Other formats: :func:`~slimjax.traces.write_policylang_jsonl`,
        :func:`~slimjax.traces.write_policylang_parquet`.
        """
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
        for name in ("task", "user", "request", "phase", "domain"):
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


def token_index(tokens: Any, T: int) -> Any:
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


def load_npz(path: str | os.PathLike, *, num_experts: int | None = None) -> Trace:
    """Read a canonical ``.npz`` trace.

    Raises:
      ValueError: not a readable ``.npz``, no ``expert_ids``, or an invalid trace (with the path).
    """
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
            return Trace(ids, E, get("layers"), get("task"), get("user"), get("request"), source, approx,
                         get("phase"), get("domain"))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
