"""Why a placement is good: :func:`explain` breaks J down by layer, node, pattern and expert.

Everything is computed on the host in float64 NumPy from one instance and one placement, with the
same definitions as :func:`slimjax.objective`:

* user u gets expert (l, e) from the reachable node that caches it with the lowest latency, if
  that is faster than the fallback; otherwise from the cloud (the fallback);
* a routing pattern (a top-K set) takes as long as its slowest member ("max" aggregation), and
  the node serving that member is the one that decides the pattern's latency;
* a *token-layer step* is one token passing one MoE layer; shares weight every step by its token
  share (``traffic[u] * weight[u, l, m]``) and sum to 1 over the nodes and the cloud.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from jaxtyping import Bool, Float, Int

from slimjax._instance import Instance, is_batched
from slimjax._objective import AGGREGATIONS, check_placement

if TYPE_CHECKING:  # pandas is imported when a placement is explained, not with slimjax
    import pandas as pd

__all__ = ["Explanation", "explain", "node_display_order", "node_names"]

CLOUD = "cloud"


def node_names(n_nodes: int, devices: int) -> list[str]:
    """Display names of the nodes: ``"device"`` (or ``"device 0"``, ... for several users), then
    ``"server 1"``, ``"server 2"``, ... in index order (the generators' convention: the first
    ``devices`` nodes are the users' own devices)."""
    if not 0 <= devices <= n_nodes:
        raise ValueError(f"devices: must be in [0, N={n_nodes}], got {devices}")
    dev = ["device"] if devices == 1 else [f"device {u}" for u in range(devices)]
    return dev + [f"server {i}" for i in range(1, n_nodes - devices + 1)]


def node_display_order(speed: Float[np.ndarray, "N"], devices: int) -> Int[np.ndarray, "N"]:
    """Node indices in display order: the devices first (index order), then the servers fastest
    first (``speed`` = traffic-weighted mean latency, :func:`slimjax.ops.node_speed`; ties keep
    index order, unreachable nodes last)."""
    speed = np.asarray(speed, np.float64)
    servers = np.arange(devices, speed.shape[-1])
    return np.concatenate([np.arange(devices), servers[np.argsort(speed[devices:], kind="stable")]]).astype(np.int64)


def _speed(latency: np.ndarray, traffic: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`slimjax.ops.node_speed` for one instance ([U, N, L, E], [U]) -> [N]."""
    fin = np.isfinite(latency)
    cnt = fin.sum(axis=(2, 3))
    mean = np.where(fin, latency, 0.0).sum(axis=(2, 3)) / np.maximum(cnt, 1)
    w = traffic[:, None] * (cnt > 0)
    wsum = w.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(wsum > 0, (w * mean).sum(0) / np.where(wsum > 0, wsum, 1.0), np.inf)


@dataclasses.dataclass(frozen=True, eq=False)
class Explanation:
    """What :func:`explain` returns: J broken down into tables (pandas DataFrames).

    Times are in the unit of the instance's latencies (seconds for :mod:`slimjax.generate`),
    storage in the unit of ``size`` (bytes for the generators). ``places`` are the node names in
    display order followed by ``"cloud"``.

    Attributes:
      J: the objective of the placement (float64).
      J_empty: the objective with nothing cached (every expert from the cloud).
      layers: one row per MoE layer (index ``layer``): ``J`` (its share of J; the column sums to
        J), ``J_empty``, ``gain`` (= ``J_empty - J``), ``copies`` (cached copies of the layer's
        experts over all nodes), ``cached`` (experts with at least one copy) and ``cloud_steps``
        (share of the layer's token steps whose slowest expert comes from the cloud).
      nodes: one row per node in display order (devices, then servers fastest first; index
        ``node`` = the node's index): ``name``, ``role`` (``"device"``/``"server"``), ``speed``
        (traffic-weighted mean latency, :func:`slimjax.ops.node_speed`), ``capacity``, ``used``,
        ``free`` (= capacity − used), ``copies`` (experts cached), ``activations`` and ``steps``
        (its shares, as in ``shares``).
      shares: one row per place (the nodes in display order, then ``"cloud"``): ``activations``
        = share of expert activations (each of a step's K experts counts 1/K) the place serves;
        ``steps`` = share of token-layer steps whose slowest expert it serves, i.e. whose
        latency it decides. Both columns sum to 1.
      contribution: layer × place: each layer's J split by the place that decides it (the
        slowest member's node under "max"; each member's own node under "sum"); every row sums
        to that layer's J.
      patterns: one row per routing pattern with positive weight: ``user``, ``layer``,
        ``pattern`` (its index m), ``weight``, ``experts`` (tuple of ids), ``latency``,
        ``slowest_expert`` and ``slowest_node`` (the place serving it).
      experts: one row per (layer, expert): ``frequency`` (share of the layer's tokens that
        activate it, traffic-weighted), ``copies`` (nodes caching it), ``served_by`` (the place
        serving most of its traffic).
      placement: bool [N, L, E], the placement explained.
      frequency: float64 [L, E], the ``frequency`` column as an array.
      order: int [N], node indices in display order.
      names: the node names by node index.
      aggregation: "max" or "sum".
    """

    J: float
    J_empty: float
    layers: pd.DataFrame
    nodes: pd.DataFrame
    shares: pd.DataFrame
    contribution: pd.DataFrame
    patterns: pd.DataFrame
    experts: pd.DataFrame
    placement: Any
    frequency: Any
    order: Any
    names: tuple
    aggregation: str = "max"

    @property
    def gain(self) -> float:
        """J(nothing cached) − J: the latency per token the placement saves."""
        return self.J_empty - self.J

    @property
    def gain_frac(self) -> float:
        """``gain / J_empty``: the share of the cloud-only latency saved (0 when J_empty is 0)."""
        return self.gain / self.J_empty if self.J_empty > 0 else 0.0

    @property
    def places(self) -> list[str]:
        """The node names in display order, then ``"cloud"``."""
        return list(self.shares.index)

    def _tables(self, max_layers: int = 12):
        from rich.table import Table

        head = Table(title=None, show_header=False, box=None, pad_edge=False)
        head.add_row("J (per token)", f"{self.J:.6g}")
        head.add_row("J, nothing cached", f"{self.J_empty:.6g}")
        head.add_row("gain", f"{self.gain:.6g} ({100 * self.gain_frac:.1f} % of the cloud-only latency)")

        nodes = Table(title="nodes (devices, then servers fastest first)")
        for c in ("node", "name", "speed", "used", "free", "copies", "activations", "steps"):
            nodes.add_column(c, justify="left" if c == "name" else "right")
        for n, r in self.nodes.iterrows():
            nodes.add_row(str(n), r["name"], f"{r['speed']:.4g}", f"{r['used']:.4g}", f"{r['free']:.4g}",
                          str(int(r["copies"])), f"{100 * r['activations']:.1f} %", f"{100 * r['steps']:.1f} %")
        c = self.shares.loc[CLOUD]
        nodes.add_row("", CLOUD, "", "", "", "", f"{100 * c['activations']:.1f} %", f"{100 * c['steps']:.1f} %")

        lay = self.layers
        shown = lay if len(lay) <= max_layers else lay.sort_values("J", ascending=False).head(max_layers).sort_index()
        title = "layers" if len(lay) <= max_layers else f"the {max_layers} slowest of {len(lay)} layers"
        layers = Table(title=title)
        for c in ("layer", "J", "J_empty", "gain", "copies", "cloud_steps"):
            layers.add_column(c, justify="right")
        for l, r in shown.iterrows():
            layers.add_row(str(l), f"{r['J']:.4g}", f"{r['J_empty']:.4g}", f"{r['gain']:.4g}", str(int(r["copies"])),
                           f"{100 * r['cloud_steps']:.1f} %")
        return head, nodes, layers

    def __rich__(self):
        from rich.console import Group

        return Group(*self._tables())

    def __repr__(self) -> str:
        from rich.console import Console

        console = Console(width=100, record=True, file=io.StringIO(), color_system=None)
        console.print(self.__rich__())
        return "Explanation\n" + console.export_text().rstrip()

    __str__ = __repr__


def explain(
    inst: Instance,
    placement: Bool[np.ndarray, "N L E"] | Any,
    *,
    aggregation: str = "max",
    devices: int | None = None,
    names: Sequence[str] | None = None,
) -> Explanation:
    """Explain a placement of one instance: J by layer, node, pattern and expert.

    Args:
      inst: one (unbatched) :class:`~slimjax.Instance`.
      placement: bool (or 0/1) [N, L, E], or an unbatched :class:`~slimjax.Solution`
        (its ``placement``).
      aggregation: "max" (the K experts run in parallel) or "sum", as in :func:`slimjax.objective`.
      devices: how many of the first nodes are the users' own devices (default U, the
        generators' convention); the others are servers.
      names: display names of the N nodes (default ``"device"``, ``"server 1"``, ...).

    Returns:
      an :class:`Explanation` (its tables are pandas DataFrames; it prints as rich tables).

    Raises:
      ValueError: a batched instance or placement, a placement of the wrong shape or dtype, an
        unknown aggregation, ``devices`` or ``names`` that do not fit N.

    Examples:
      >>> import jax, slimjax
      >>> from slimjax._explain import explain
      >>> inst = slimjax.generate.instance(jax.random.key(0), model={"name": "mixtral_8x7b", "layers": 4})
      >>> ex = explain(inst, slimjax.solve(inst, "greedy").placement)
      >>> bool(abs(ex.layers["J"].sum() - ex.J) < 1e-9)
      True
    """
    x, devices, names = _explain_inputs(inst, placement, aggregation, devices, names)
    lat = np.asarray(inst.latency, np.float64)  # [U, N, L, E]
    fb = np.asarray(inst.fallback, np.float64)  # [U, L, E]
    pat = np.asarray(inst.patterns, np.int64)  # [U, L, M, K]
    w = np.asarray(inst.weight, np.float64)  # [U, L, M]
    tr = np.asarray(inst.traffic, np.float64)  # [U]
    N = lat.shape[1]
    d, serve = _service(x, lat, fb)
    t = _pattern_terms(d, serve, fb, pat, w, tr, aggregation)
    speed = _speed(lat, tr)
    order = node_display_order(speed, devices)
    layers, nodes, shares, contribution = _place_tables(x, inst, t, speed, order, devices, names, N)
    all_names = np.array(list(names) + [CLOUD], dtype=object)
    patterns = _pattern_table(pat, w, t, all_names)
    experts, freq = _expert_table(x, pat, w, tr, serve, all_names)
    return Explanation(
        J=float(t["layer_J"].sum()), J_empty=float(t["layer_J0"].sum()), layers=layers, nodes=nodes, shares=shares,
        contribution=contribution, patterns=patterns, experts=experts, placement=x, frequency=freq, order=order,
        names=names, aggregation=aggregation,
    )


def _explain_inputs(inst: Instance, placement: Any, aggregation: str, devices: int | None,
                    names: Sequence[str] | None) -> tuple[np.ndarray, int, tuple[str, ...]]:
    """Check explain's arguments: the placement as bool [N, L, E], the device count, the node names."""
    if not isinstance(inst, Instance):
        raise ValueError(f"inst: expected a slimjax.Instance, got {type(inst).__name__}")
    if is_batched(inst):
        raise ValueError("inst: explain takes one instance; pass batch[i] and solution.placement[i]")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation: must be one of {AGGREGATIONS}, got {aggregation!r}")
    if hasattr(placement, "placement") and hasattr(placement, "objective"):  # a Solution
        placement = placement.placement
    x = np.asarray(check_placement(inst, placement), bool)  # [N, L, E]
    U, N = inst.latency.shape[:2]
    devices = U if devices is None else int(devices)
    if names is None:
        names = node_names(N, devices)
    names = tuple(str(s) for s in names)
    if len(names) != N:
        raise ValueError(f"names: expected {N} node names, got {len(names)}")
    if len(set(names)) != N or CLOUD in names:
        raise ValueError(f"names: must be distinct and not {CLOUD!r}, got {names}")
    return x, devices, names


def _service(x: np.ndarray, lat: np.ndarray, fb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Who serves what: d [U, L, E] (== slimjax.expert_latency) and the serving place [U, L, E]
    (the fastest caching node when it beats the fallback, else the cloud = N)."""
    N = lat.shape[1]
    masked = np.where(x[None], lat, np.inf)  # [U, N, L, E]
    best_n = masked.argmin(axis=1)  # [U, L, E]
    best = np.take_along_axis(masked, best_n[:, None], axis=1)[:, 0]
    from_node = best < fb
    return np.where(from_node, best, fb), np.where(from_node, best_n, N)


def _pattern_terms(d: np.ndarray, serve: np.ndarray, fb: np.ndarray, pat: np.ndarray, w: np.ndarray,
                   tr: np.ndarray, aggregation: str) -> dict:
    """Per-pattern latencies, slowest members and the per-layer / per-place shares of J."""
    U, L, M, K = pat.shape
    E = d.shape[-1]

    def members(a):  # a [U, L, E] -> [U, L, M, K] at the patterns' ids
        return np.take_along_axis(np.broadcast_to(a[:, :, None, :], (U, L, M, E)), pat, axis=-1)

    dm = members(d)  # [U, L, M, K]
    pm = members(serve)
    if aggregation == "max":
        pl, pl0 = dm.max(-1), members(fb).max(-1)
    else:
        pl, pl0 = dm.sum(-1), members(fb).sum(-1)
    k_slow = dm.argmax(-1)  # first of the slowest members
    slow_e = np.take_along_axis(pat, k_slow[..., None], -1)[..., 0]  # [U, L, M]
    slow_p = np.take_along_axis(pm, k_slow[..., None], -1)[..., 0]  # [U, L, M]
    tw = tr[:, None, None] * w  # [U, L, M] token share of every (user, layer, pattern)
    return {"aggregation": aggregation, "dm": dm, "pm": pm, "pl": pl, "slow_e": slow_e, "slow_p": slow_p, "tw": tw,
            "layer_J": np.einsum("ulm,ulm->l", tw, pl), "layer_J0": np.einsum("ulm,ulm->l", tw, pl0)}


def _place_tables(x: np.ndarray, inst: Instance, t: dict, speed: np.ndarray, order: np.ndarray, devices: int,
                  names: tuple[str, ...], N: int) -> tuple:
    """The layers, nodes, shares and contribution tables of an :class:`Explanation`."""
    import pandas as pd

    size = np.asarray(inst.size, np.float64)  # [L, E]
    cap = np.asarray(inst.capacity, np.float64)  # [N]
    tw, pl, pm, dm, slow_p = t["tw"], t["pl"], t["pm"], t["dm"], t["slow_p"]
    L, K = dm.shape[1], dm.shape[-1]
    P = N + 1  # places: nodes by index, then the cloud
    one_slow = slow_p[..., None] == np.arange(P)  # [U, L, M, P]
    one_mem = pm[..., None] == np.arange(P)  # [U, L, M, K, P]
    if t["aggregation"] == "max":
        contrib = np.einsum("ulm,ulm,ulmp->lp", tw, pl, one_slow)
    else:
        contrib = np.einsum("ulm,ulmk,ulmkp->lp", tw, dm, one_mem)
    mass = tw.sum()  # = L up to the weights' rounding
    steps = np.einsum("ulm,ulmp->p", tw, one_slow) / mass
    acts = np.einsum("ulm,ulmkp->p", tw, one_mem) / (K * mass)
    layer_cloud = np.einsum("ulm,ulm->l", tw, slow_p == N) / np.maximum(tw.sum(axis=(0, 2)), 1e-300)
    place_names = [names[n] for n in order] + [CLOUD]
    place_idx = list(order) + [N]
    layers = pd.DataFrame(
        {
            "J": t["layer_J"],
            "J_empty": t["layer_J0"],
            "gain": t["layer_J0"] - t["layer_J"],
            "copies": x.sum(axis=(0, 2)),
            "cached": x.any(0).sum(-1),
            "cloud_steps": layer_cloud,
        },
        index=pd.RangeIndex(L, name="layer"),
    )
    used = np.einsum("nle,le->n", x.astype(np.float64), size)
    nodes = pd.DataFrame(
        {
            "name": [names[n] for n in order],
            "role": ["device" if n < devices else "server" for n in order],
            "speed": speed[order],
            "capacity": cap[order],
            "used": used[order],
            "free": cap[order] - used[order],
            "copies": x.sum(axis=(1, 2))[order],
            "activations": acts[order],
            "steps": steps[order],
        },
        index=pd.Index(order, name="node"),
    )
    shares = pd.DataFrame({"activations": acts[place_idx], "steps": steps[place_idx]},
                          index=pd.Index(place_names, name="place"))
    contribution = pd.DataFrame(contrib[:, place_idx], index=pd.RangeIndex(L, name="layer"),
                                columns=pd.Index(place_names, name="place"))
    return layers, nodes, shares, contribution


def _pattern_table(pat: np.ndarray, w: np.ndarray, t: dict, all_names: np.ndarray):
    """One row per pattern with positive weight: its experts, latency and slowest member."""
    import pandas as pd

    pos = w > 0
    uu, ll, mm = np.nonzero(pos)
    return pd.DataFrame(
        {
            "user": uu,
            "layer": ll,
            "pattern": mm,
            "weight": w[pos],
            "experts": [tuple(int(e) for e in p) for p in pat[pos]],
            "latency": t["pl"][pos],
            "slowest_expert": t["slow_e"][pos],
            "slowest_node": all_names[t["slow_p"][pos]],
        }
    )


def _expert_table(x: np.ndarray, pat: np.ndarray, w: np.ndarray, tr: np.ndarray, serve: np.ndarray,
                  all_names: np.ndarray) -> tuple:
    """One row per (layer, expert): activation frequency, copies and the place serving most of it."""
    import pandas as pd

    U, L, M, _ = pat.shape
    E = x.shape[-1]
    P = len(all_names)
    member = np.zeros((U, L, M, E), bool)
    np.put_along_axis(member, pat, True, axis=-1)  # distinct membership
    freq_u = np.einsum("ulm,ulme->ule", w, member)  # [U, L, E]
    freq = np.einsum("u,ule->le", tr, freq_u)
    by_place = np.einsum("u,ule,ulep->lep", tr, freq_u, serve[..., None] == np.arange(P))  # [L, E, P]
    top = np.where(by_place.sum(-1) > 0, by_place.argmax(-1), serve[int(tr.argmax())])  # unused experts: the main user
    experts = pd.DataFrame(
        {
            "layer": np.repeat(np.arange(L), E),
            "expert": np.tile(np.arange(E), L),
            "frequency": freq.reshape(-1),
            "copies": x.sum(0).reshape(-1),
            "served_by": all_names[top.reshape(-1)],
        }
    )
    return experts, freq
