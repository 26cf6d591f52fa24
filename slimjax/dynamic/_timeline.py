"""Timelines: T windows of routing over one fixed network, optionally with the tokens behind them.

A :class:`Timeline` holds an :class:`~slimjax.Instance` with a leading *window* axis ``[T, ...]``
(a batch of timelines: ``[B, T, ...]``). Every window has its own routing (``patterns``,
``weight``, ``traffic``); the network (``latency``, ``fallback``, ``size``, ``capacity``, ``base``)
is the same in every window of a timeline. All windows have one shape: pattern lists are padded
to a common ``M`` with zero-weight copies of a real pattern.

Optional per-token routing (for the token-level LRU policy and for per-token percentiles):
``tokens`` int32 ``[(B,) T, W, L, K]`` (the experts of every token of the window),
``token_user`` int32 ``[(B,) T, W]`` and ``token_weight`` float ``[(B,) T, W]`` (each window sums
to 1; 0 marks padding). A window's weighted token mean of the per-token latency equals J of that
window when its patterns are built from the same tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from slimjax._instance import FIELDS, Instance

__all__ = ["Timeline", "timeline", "stack_timelines", "timeline_from_trace", "window_count", "NETWORK_FIELDS", "ALIGNS"]

#: Fields that describe the network: equal in every window of a timeline.
NETWORK_FIELDS = ("latency", "fallback", "size", "capacity", "base")
#: Window boundaries of :func:`timeline_from_trace`.
ALIGNS = ("token", "request", "task")


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Timeline:
    """T windows of routing over one network (a batch of timelines: leading axis B).

    Attributes:
      windows: :class:`~slimjax.Instance` ``[(B,) T, ...]``; window t's routing in
        ``patterns``/``weight``/``traffic``, the network repeated in every window.
      tokens: int32 ``[(B,) T, W, L, K]`` or None: the experts of each token of each window.
      token_user: int32 ``[(B,) T, W]`` or None: the user of each token.
      token_weight: float ``[(B,) T, W]`` or None: each token's share of its window (0 = padding).

    Build one with :func:`timeline`, :func:`timeline_from_trace` or :func:`slimjax.dynamic.drift`.
    """

    windows: Instance
    tokens: Any = None
    token_user: Any = None
    token_weight: Any = None

    def tree_flatten(self):
        return (self.windows, self.tokens, self.token_user, self.token_weight), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """``(B,)`` for a batch of timelines, ``()`` for one."""
        return tuple(self.windows.latency.shape[:-5])

    @property
    def num_windows(self) -> int:
        """T."""
        return int(self.windows.latency.shape[-5])

    @property
    def shape(self) -> tuple[int, int, int, int, int, int]:
        """(U, N, L, E, M, K) of every window."""
        return self.windows.shape

    @property
    def has_tokens(self) -> bool:
        return self.tokens is not None

    def __len__(self) -> int:
        if not self.batch_shape:
            raise TypeError("len() of a single (unbatched) Timeline; its windows: .num_windows")
        return self.batch_shape[0]

    def __getitem__(self, index) -> "Timeline":
        """Index the batch of timelines (``tl[3]``, ``tl[:4]``)."""
        if not self.batch_shape:
            raise IndexError("Timeline is not batched; index its windows with .windows[t]")
        return jax.tree_util.tree_map(lambda a: a[index], self)

    def __repr__(self) -> str:
        U, N, L, E, M, K = self.shape
        b = f"batch={self.batch_shape[0]}, " if self.batch_shape else ""
        W = f", W={self.tokens.shape[-3]}" if self.has_tokens else ""
        return f"Timeline({b}T={self.num_windows}, U={U}, N={N}, L={L}, E={E}, M={M}, K={K}{W})"


# ----------------------------------------------------------------------------------------------
# Construction and validation
# ----------------------------------------------------------------------------------------------


def _pad_axis(a: np.ndarray, size: int | np.integer, axis: int, fill: str | float = "first") -> np.ndarray:
    """Pad ``a`` along ``axis`` to ``size``: with copies of index 0 (``"first"``) or a constant."""
    n = a.shape[axis]
    if n == size:
        return a
    if fill == "first":
        rep = np.take(a, [0], axis=axis)
        pad = np.repeat(rep, size - n, axis=axis)
    else:
        shp = list(a.shape)
        shp[axis] = size - n
        pad = np.full(shp, fill, a.dtype)
    return np.concatenate([a, pad], axis=axis)


def _host_fields(inst: Instance) -> dict[str, np.ndarray]:
    return {f: np.asarray(getattr(inst, f)) for f in FIELDS}


def _check_network_fixed(v: dict[str, np.ndarray], nb: int) -> None:
    """Every network field must be the same in every window (axis ``nb``)."""
    for f in NETWORK_FIELDS:
        a = v[f]
        same = a == np.take(a, [0], axis=nb)  # inf == inf (unreachable) holds; NaN is refused by Instance
        if not same.all():
            idx = tuple(int(i) for i in np.argwhere(~same)[0])
            raise ValueError(
                f"windows.{f}: the network is fixed over a timeline, so {f} must be equal in every window; "
                f"window {idx[nb]} differs from window 0 at index {idx}"
            )


def _check_tokens(tokens, user, weight, lead: tuple, L: int, E: int, U: int):
    tokens = np.asarray(tokens)
    if tokens.ndim != len(lead) + 3 or tokens.shape[: len(lead)] != lead or tokens.shape[-2] != L:
        raise ValueError(f"tokens: expected shape {list(lead)} + [W, L={L}, K], got {list(tokens.shape)}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens: must be integer expert ids, got dtype {tokens.dtype}")
    W = tokens.shape[-3]
    if tokens.shape[-1] > E:
        raise ValueError(f"tokens: K={tokens.shape[-1]} exceeds E={E}")
    bad = (tokens < 0) | (tokens >= E)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"tokens: expert ids must be in [0, E={E}), got {tokens[idx]} at index {idx}")
    user = np.zeros(lead + (W,), np.int32) if user is None else np.asarray(user)
    if user.shape != lead + (W,):
        raise ValueError(f"token_user: expected shape {list(lead + (W,))}, got {list(user.shape)}")
    if not np.issubdtype(user.dtype, np.integer) or (user < 0).any() or (user >= U).any():
        raise ValueError(f"token_user: must be integer user ids in [0, U={U})")
    weight = np.full(lead + (W,), 1.0 / max(W, 1)) if weight is None else np.asarray(weight, np.float64)
    if weight.shape != lead + (W,):
        raise ValueError(f"token_weight: expected shape {list(lead + (W,))}, got {list(weight.shape)}")
    if not np.isfinite(weight).all() or (weight < 0).any():
        raise ValueError("token_weight: must be finite and >= 0")
    s = weight.sum(-1)
    if (np.abs(s - 1) > 1e-4 * max(1.0, W**0.5)).any():
        idx = tuple(int(i) for i in np.argwhere(np.abs(s - 1) > 1e-4 * max(1.0, W**0.5))[0])
        raise ValueError(f"token_weight: every window's token weights must sum to 1, sums to {s[idx]:.6g} at {idx}")
    return tokens.astype(np.int32), user.astype(np.int32), weight


def _from_arrays(windows: Instance, tokens, token_user, token_weight, validate: bool) -> Timeline:
    nb = len(windows.batch_shape)
    if nb not in (1, 2):
        raise ValueError(
            f"windows: expected an Instance with a window axis [T, ...] or [B, T, ...], got batch shape {windows.batch_shape}"
        )
    T = windows.batch_shape[-1]
    if T < 2:
        raise ValueError(f"windows: a timeline needs T >= 2 windows (x_0 is deployed on window 0), got T={T}")
    if validate:
        _check_network_fixed(_host_fields(windows), nb - 1)
    U, N, L, E, M, K = windows.shape
    if tokens is None:
        if token_user is not None or token_weight is not None:
            raise ValueError("tokens: token_user / token_weight given without tokens")
        return Timeline(windows)
    fdt = windows.weight.dtype
    if validate:
        tokens, token_user, token_weight = _check_tokens(tokens, token_user, token_weight, windows.batch_shape, L, E, U)
    elif token_user is None or token_weight is None:
        tokens, token_user, token_weight = _check_tokens(tokens, token_user, token_weight, windows.batch_shape, L, E, U)
    return Timeline(windows, jnp.asarray(tokens, jnp.int32), jnp.asarray(token_user, jnp.int32),
                    jnp.asarray(token_weight, fdt))


def timeline(
    windows: Instance | Sequence[Instance],
    *,
    tokens: Any = None,
    token_user: Any = None,
    token_weight: Any = None,
    validate: bool = True,
) -> Timeline:
    """Build a timeline (or a batch of them) from its windows.

    Args:
      windows: a sequence of T single instances (one per window; pattern lists may differ in
        length, they are padded), or an Instance with a window axis ``[T, ...]`` or ``[B, T, ...]``.
      tokens: optional per-token routing: an array ``[(B,) T, W, L, K]``, or (with a sequence of
        windows) a sequence of T arrays ``[W_t, L, K]`` (padded to the longest with weight 0).
      token_user: like ``tokens`` without the last two axes (default: user 0).
      token_weight: like ``token_user`` (default: uniform over each window's tokens).
      validate: check shapes, that the network is the same in every window, and the tokens.

    Raises:
      ValueError: naming the field and the rule (e.g. ``windows.capacity`` differing by window).

    Examples:
      >>> import jax, slimjax
      >>> from slimjax.dynamic import timeline
      >>> batch = slimjax.generate.instances(jax.random.key(0), 3, model="mixtral_8x7b")
      >>> tl = timeline([batch[0], batch[0].replace(patterns=batch[1].patterns), batch[0]])
      >>> tl.num_windows
      3
    """
    if isinstance(windows, Instance):
        return _from_arrays(windows, tokens, token_user, token_weight, validate)
    wins = list(windows)
    if not wins or not all(isinstance(w, Instance) for w in wins):
        raise ValueError("windows: expected a non-empty sequence of slimjax.Instance (one per window) or a batched Instance")
    if any(w.batch_shape for w in wins):
        raise ValueError("windows: every window of a sequence must be a single (unbatched) Instance")
    M = max(w.shape[4] for w in wins)
    fields = []
    for t, w in enumerate(wins):
        v = _host_fields(w)
        if w.shape[:4] != wins[0].shape[:4] or w.shape[5] != wins[0].shape[5]:
            raise ValueError(f"windows: window {t} has shape {w.shape}, window 0 has {wins[0].shape} (only M may differ)")
        v["patterns"] = _pad_axis(v["patterns"], M, axis=2)
        v["weight"] = _pad_axis(v["weight"], M, axis=2, fill=0.0)
        fields.append(v)
    stacked = Instance(**{f: np.stack([v[f] for v in fields]) for f in FIELDS}, validate=validate)
    if tokens is not None and not isinstance(tokens, np.ndarray) and not isinstance(tokens, jax.Array):
        toks = [np.asarray(a) for a in tokens]
        if len(toks) != len(wins):
            raise ValueError(f"tokens: expected one array per window ({len(wins)}), got {len(toks)}")
        W = max(a.shape[0] for a in toks)
        users = [np.zeros(a.shape[0], np.int32) for a in toks] if token_user is None else [np.asarray(u) for u in token_user]
        wts = ([np.full(a.shape[0], 1.0 / max(a.shape[0], 1)) for a in toks] if token_weight is None
               else [np.asarray(x, np.float64) for x in token_weight])
        if len(users) != len(toks) or len(wts) != len(toks):
            raise ValueError("token_user, token_weight: expected one array per window, like tokens")
        for t, a in enumerate(toks):
            if a.ndim != 3 or a.shape[0] < 1:
                raise ValueError(f"tokens[{t}]: expected shape [W_t >= 1, L, K], got {list(a.shape)}")
        tokens = np.stack([_pad_axis(a, W, 0) for a in toks])
        token_user = np.stack([_pad_axis(u, W, 0, fill=0) for u in users])
        token_weight = np.stack([_pad_axis(x, W, 0, fill=0.0) for x in wts])
    return _from_arrays(stacked, tokens, token_user, token_weight, validate)


def stack_timelines(timelines: Sequence[Timeline]) -> Timeline:
    """Stack single timelines with equal T, U, N, L, E, K into a batch (M and W padded)."""
    tls = list(timelines)
    if not tls or not all(isinstance(t, Timeline) and not t.batch_shape for t in tls):
        raise ValueError("timelines: expected a non-empty sequence of single (unbatched) Timelines")
    ref = tls[0]
    for i, t in enumerate(tls):
        if t.num_windows != ref.num_windows or t.shape[:4] != ref.shape[:4] or t.shape[5] != ref.shape[5]:
            raise ValueError(f"timelines: timeline {i} has T={t.num_windows}, shape {t.shape}; timeline 0 has "
                             f"T={ref.num_windows}, shape {ref.shape} (only M and W may differ)")
        if t.has_tokens != ref.has_tokens:
            raise ValueError("timelines: either every timeline has tokens or none has")
    M = max(t.shape[4] for t in tls)
    fields = {}
    for f in FIELDS:
        parts = [np.asarray(getattr(t.windows, f)) for t in tls]
        if f == "patterns":
            parts = [_pad_axis(p, M, axis=3) for p in parts]
        elif f == "weight":
            parts = [_pad_axis(p, M, axis=3, fill=0.0) for p in parts]
        fields[f] = np.stack(parts)
    windows = Instance(**fields, validate=False)
    if not ref.has_tokens:
        return Timeline(windows)
    W = max(t.tokens.shape[1] for t in tls)
    tok = np.stack([_pad_axis(np.asarray(t.tokens), W, 1) for t in tls])
    usr = np.stack([_pad_axis(np.asarray(t.token_user), W, 1, fill=0) for t in tls])
    wt = np.stack([_pad_axis(np.asarray(t.token_weight), W, 1, fill=0.0) for t in tls])
    return Timeline(windows, jnp.asarray(tok), jnp.asarray(usr), jnp.asarray(wt, windows.weight.dtype))


# ----------------------------------------------------------------------------------------------
# From a real trace
# ----------------------------------------------------------------------------------------------


def _window_bounds(trace, window_tokens: int, align: str, drop_last: bool) -> list[tuple[int | np.integer, int | np.integer]]:
    """[(start, end)] token ranges of the windows, in trace order."""
    T = trace.num_tokens
    if align == "token":
        bounds = [(s, min(s + window_tokens, T)) for s in range(0, T, window_tokens)]
        if drop_last and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < window_tokens:
            bounds = bounds[:-1]
        return bounds
    ids = getattr(trace, align)
    if ids is None:
        raise ValueError(f"align={align!r}: the trace has no per-token {align} ids; use align='token'")
    ids = np.asarray(ids)
    cuts = np.flatnonzero(np.diff(ids) != 0) + 1  # a new run of the same id starts here
    runs = list(zip(np.r_[0, cuts], np.r_[cuts, T]))
    bounds: list[tuple[int, int]] = []
    start = end = 0
    for a, b in runs:
        if b - a > window_tokens:  # a run longer than a window: close the current one, split the run
            if end > start:
                bounds.append((start, end))
            for s in range(a, b, window_tokens):
                bounds.append((s, min(s + window_tokens, b)))
            start = end = b
            continue
        if b - start > window_tokens:  # the run does not fit: close the window at the last boundary
            bounds.append((start, end))
            start = a
        end = b
    if end > start:
        bounds.append((start, end))
    return bounds


def timeline_from_trace(
    trace: Any,
    window_tokens: int,
    network: Instance,
    *,
    align: str = "token",
    drop_last: bool = True,
    merge: bool = True,
) -> Timeline:
    """Cut a routing trace into windows of ``window_tokens`` tokens, in the trace's order.

    Args:
      trace: a :class:`slimjax.traces.Trace`.
      window_tokens: tokens per window (>= 1).
      network: an :class:`~slimjax.Instance` (or a batch ``[B, ...]``: B timelines, one per network)
        whose ``latency``, ``fallback``, ``size``, ``capacity`` and ``base`` are used; its routing is
        replaced by each window's. ``L`` and ``E`` must match the trace. With ``U > 1`` users the
        trace needs per-token ``user`` ids in ``[0, U)``; each window's ``traffic`` is then the
        users' shares of its tokens (a user without tokens in a window gets traffic 0).
      align: ``"token"`` (fixed windows of ``window_tokens``), or ``"request"`` / ``"task"``: cut only
        at request (task) boundaries, packing whole consecutive runs of one id while they fit in
        ``window_tokens`` (a run longer than a window is split).
      drop_last: with ``align="token"``, drop a last window shorter than ``window_tokens``.
      merge: merge identical expert sets of a window into one pattern (J is unchanged).

    Returns:
      a :class:`Timeline` ``[(B,) T, ...]`` with the tokens of every window (``token_weight`` =
      1 / tokens in the window).

    Raises:
      ValueError: naming the argument and the rule.
    """
    from slimjax.traces import Trace, patterns as trace_patterns

    if not isinstance(trace, Trace):
        raise ValueError(f"trace: expected a slimjax.traces.Trace, got {type(trace).__name__}")
    if isinstance(window_tokens, bool) or not isinstance(window_tokens, (int, np.integer)) or window_tokens < 1:
        raise ValueError(f"window_tokens: must be an integer >= 1, got {window_tokens!r}")
    if align not in ALIGNS:
        raise ValueError(f"align: must be one of {ALIGNS}, got {align!r}")
    if not isinstance(network, Instance):
        raise ValueError(f"network: expected a slimjax.Instance, got {type(network).__name__}")
    if len(network.batch_shape) > 1:
        raise ValueError(f"network: expected one instance or a batch [B, ...], got batch shape {network.batch_shape}")
    U, N, L, E, _, _ = network.shape
    Tt, Lt, K = trace.shape
    if Lt != L:
        raise ValueError(f"network: has L={L} MoE layers, the trace logs {Lt}; select layers with trace.select(layers=...)")
    if trace.num_experts != E:
        raise ValueError(f"network: has E={E} experts per layer, the trace has num_experts={trace.num_experts}")
    if U > 1:
        if trace.user is None:
            raise ValueError(f"trace: a network with U={U} users needs per-token user ids (trace.user)")
        if trace.user.min() < 0 or trace.user.max() >= U:
            raise ValueError(f"trace.user: ids must be in [0, U={U}), got range [{trace.user.min()}, {trace.user.max()}]")
    bounds = _window_bounds(trace, int(window_tokens), align, drop_last)
    if len(bounds) < 2:
        raise ValueError(f"window_tokens: {window_tokens} leaves {len(bounds)} window(s) of the trace's {Tt} tokens; "
                         "a timeline needs at least 2")
    users = np.zeros(Tt, np.int64) if trace.user is None or U == 1 else trace.user
    per_window = []
    for a, b in bounds:
        idx = np.arange(a, b)
        pats_u, w_u, traffic = [], [], np.zeros(U)
        for u in range(U):
            sel = idx[users[a:b] == u]
            traffic[u] = sel.size / idx.size
            if sel.size == 0:  # no token of this user: any valid routing, it has traffic 0
                pats_u.append(np.broadcast_to(np.arange(K, dtype=np.int32), (L, 1, K)))
                w_u.append(np.ones((L, 1)))
                continue
            p, w = trace_patterns(trace, tokens=sel, merge=merge)
            pats_u.append(p)
            w_u.append(w)
        Mw = max(p.shape[1] for p in pats_u)
        pats = np.stack([_pad_axis(np.asarray(p), Mw, 1) for p in pats_u])
        wts = np.stack([_pad_axis(np.asarray(w), Mw, 1, fill=0.0) for w in w_u])
        per_window.append((pats, wts, traffic))
    M = max(p.shape[2] for p, _, _ in per_window)
    pats = np.stack([_pad_axis(p, M, 2) for p, _, _ in per_window])  # [T, U, L, M, K]
    wts = np.stack([_pad_axis(w, M, 2, fill=0.0) for _, w, _ in per_window])
    traffic = np.stack([tr for _, _, tr in per_window])  # [T, U]
    Tw = len(bounds)
    W = max(b - a for a, b in bounds)
    tokens = np.stack([_pad_axis(trace.expert_ids[a:b], W, 0) for a, b in bounds])  # [T, W, L, K]
    tok_user = np.stack([_pad_axis(users[a:b].astype(np.int32), W, 0, fill=0) for a, b in bounds])
    tok_w = np.stack([_pad_axis(np.full(b - a, 1.0 / (b - a)), W, 0, fill=0.0) for a, b in bounds])
    net = _host_fields(network)
    lead = network.batch_shape
    fields = {}
    for f in NETWORK_FIELDS:
        a = net[f]
        fields[f] = np.repeat(np.expand_dims(a, len(lead)), Tw, axis=len(lead))
    for f, a in (("patterns", pats), ("weight", wts), ("traffic", traffic)):
        fields[f] = np.broadcast_to(a, lead + a.shape) if lead else a
    fdt = np.asarray(network.weight).dtype
    fields["weight"] = fields["weight"].astype(fdt)
    fields["traffic"] = fields["traffic"].astype(fdt)
    windows = Instance(**fields, validate=True)
    bc = (lambda a: np.broadcast_to(a, lead + a.shape)) if lead else (lambda a: a)
    return Timeline(windows, jnp.asarray(bc(tokens), jnp.int32), jnp.asarray(bc(tok_user), jnp.int32),
                    jnp.asarray(bc(tok_w), fdt))


def window_count(trace: Any, window_tokens: int, align: str = "token", drop_last: bool = True) -> int:
    """How many windows :func:`timeline_from_trace` cuts (without building them)."""
    return len(_window_bounds(trace, int(window_tokens), align, drop_last))
