"""A discrete-event simulation of top-K routed inference on shared nodes (SimPy), to validate the
M/M/1 approximation behind J_load.

* Tokens arrive at user u as a Poisson process of rate ``rate[u]`` (independent users; drawn as
  one merged Poisson stream of rate ``Σ_u rate[u]`` whose tokens pick their user with
  probability ``rate[u] / Σ rate``).
* A token walks the L layers in order. At layer l it draws a pattern m with probability
  ``weight[u, l, m]`` and sends each distinct member e to its assigned node ``a[u, l, e]``
  (:func:`slimjax.queueing.assignment`, the fastest unloaded copy) in parallel; the layer is done
  when the slowest member returns, and the next layer starts then.
* A member assigned to node n spends half of its link time ``latency[u, n, l, e] −
  service[n, l, e]`` going there, waits in the node's single-server FIFO queue, is served for
  ``service[n, l, e]`` (deterministic) or an exponential time of that mean, and spends the other
  half of the link time coming back. A member at the fallback takes ``fallback[u, l, e]`` and
  does not queue.
* The per-token latency is the time from its arrival to the end of its last layer (the MoE part,
  comparable to J; ``base`` is not added).

The statistics are over ``tokens`` consecutive tokens after ``warmup`` discarded ones, and
arrivals go on until every measured token has finished, so that measured tokens meet a queue in
steady state at both ends (no ramp-up, no ramp-down). The measured utilisation of a node is its
busy time inside the window from the first to the last measured arrival, divided by the window's
length.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from slimjax._instance import Instance, is_batched
from slimjax.queueing._model import assignment, load_report

__all__ = ["SERVICE_KINDS", "SimulationResult", "simulate"]

SERVICE_KINDS = ("exponential", "deterministic")


@dataclasses.dataclass(frozen=True)
class SimulationResult:
    """Statistics of one simulation (NumPy; seconds).

    Attributes:
      mean: mean per-token latency of the measured tokens.
      mean_ci: half-width of a 95 % confidence interval of ``mean`` (batch means, Student t).
      p50, p95, p99: per-token latency percentiles.
      utilization: float [N], measured busy share of every node.
      user_mean: float [U], mean latency of each user's measured tokens (NaN for a user with
        none, see ``user_tokens``).
      user_tokens: int [U], measured tokens per user.
      latencies: float [T], the measured per-token latencies in arrival order.
      tokens: number of measured tokens.
      window: length of the measurement window (s).
    """

    mean: float
    mean_ci: float
    p50: float
    p95: float
    p99: float
    utilization: np.ndarray
    user_mean: np.ndarray
    user_tokens: np.ndarray
    latencies: np.ndarray
    tokens: int
    window: float


def _import_simpy():
    try:
        import simpy
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("simulate needs SimPy: pip install 'slimjax[sim]' (or pip install simpy)") from err
    return simpy


def _check(inst: Instance, placement, tokens, warmup, service, batches) -> None:
    if not isinstance(inst, Instance):
        raise ValueError(f"inst: expected a slimjax.Instance, got {type(inst).__name__}")  # noqa: TRY004
    if is_batched(inst):
        raise ValueError("inst: simulate takes one instance, not a batch (index it: batch[i])")
    if not inst.has_load:
        raise ValueError("service: the simulation needs the load model (service and rate); the instance has none")
    if service not in SERVICE_KINDS:
        raise ValueError(f"service: must be one of {SERVICE_KINDS}, got {service!r}")
    if not isinstance(tokens, (int, np.integer)) or isinstance(tokens, bool) or tokens < 2:
        raise ValueError(f"tokens: must be an integer >= 2, got {tokens!r}")
    if warmup is not None and (not isinstance(warmup, (int, np.integer)) or isinstance(warmup, bool) or warmup < 0):
        raise ValueError(f"warmup: must be a number of tokens >= 0 or None (automatic), got {warmup!r}")
    if not isinstance(batches, (int, np.integer)) or isinstance(batches, bool) or not 2 <= batches <= tokens:
        raise ValueError(f"batches: must be an integer in [2, tokens={tokens}], got {batches!r}")
    rate = np.asarray(inst.rate, np.float64)
    if not rate.sum() > 0:
        raise ValueError("rate: all token rates are 0; there is nothing to simulate")


def simulate(
    inst: Instance,
    placement,
    *,
    tokens: int = 2000,
    warmup: int | None = None,
    service: str = "exponential",
    seed: int = 0,
    batches: int = 20,
) -> SimulationResult:
    """Simulate ``tokens`` tokens of one instance under ``placement`` and measure their latency.

    Args:
      inst: one instance with ``service`` and ``rate``.
      placement: bool [N, L, E].
      tokens: measured tokens (all users together), >= 2.
      warmup: tokens simulated and discarded before the measured ones; ``None`` (default):
        ``max(tokens // 10, ceil(3 · Σ rate · Ĵ))``, three times the tokens in flight, with
        ``Ĵ`` = J_load (``max_utilization=1``) or, for an overloaded placement, J.
      service: "exponential" (service times exponential with mean ``service[n, l, e]``, the M/M/1
        assumption) or "deterministic".
      seed: seed of the NumPy generator (arrivals, users, patterns, service times).
      batches: number of batch means for ``mean_ci``.

    Returns:
      a :class:`SimulationResult`.

    Raises:
      ValueError: bad arguments, an instance without the load model, or a served member whose
        ``latency`` is below its ``service`` (a negative link time).
    """
    _check(inst, placement, tokens, warmup, service, batches)
    simpy = _import_simpy()
    U, N, L, E, _, K = inst.shape
    a, served, half, time = _routes(inst, placement)
    rate = np.asarray(inst.rate, np.float64)
    if warmup is None:
        rep = load_report(inst, jnp.asarray(placement), max_utilization=1.0)
        j_hat = float(rep.objective) if bool(rep.feasible) else float(rep.unloaded)
        warmup = max(tokens // 10, math.ceil(3 * rate.sum() * j_hat))
    first = int(warmup)
    stream = _Stream(np.random.default_rng(seed), rate, np.asarray(inst.weight, np.float64), K,
                     service == "exponential", first + tokens)
    pats = np.asarray(inst.patterns)
    done, busy, window = _run_events(simpy, stream, pats, a, served, half, time, first, tokens, N, L, K)
    meas_users = stream.users_first[first : first + tokens]
    counts = np.bincount(meas_users, minlength=U)
    sums = np.bincount(meas_users, weights=done, minlength=U)
    with np.errstate(invalid="ignore", divide="ignore"):
        user_mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return SimulationResult(
        mean=float(done.mean()),
        mean_ci=_batch_means_ci(done, batches),
        p50=float(np.percentile(done, 50)),
        p95=float(np.percentile(done, 95)),
        p99=float(np.percentile(done, 99)),
        utilization=busy / window if window > 0 else np.zeros(N),
        user_mean=user_mean,
        user_tokens=counts,
        latencies=done,
        tokens=int(done.size),
        window=float(window),
    )


def _routes(inst: Instance, placement) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per (u, l, e): the assignment a (N = fallback), whether a node serves it, half its link time
    (latency − service, each way) and its time (mean service on a node, else the fallback time).

    Raises:
      ValueError: a served member whose latency is below its service (a negative link time).
    """
    U, N, L, E, _, _ = inst.shape
    a = np.asarray(assignment(inst, jnp.asarray(placement)))  # [U, L, E], N = fallback
    lat = np.asarray(inst.latency, np.float64)
    svc = np.asarray(inst.service, np.float64)
    uu, ll, ee = np.meshgrid(np.arange(U), np.arange(L), np.arange(E), indexing="ij")
    served = a < N
    n_idx = np.where(served, a, 0)
    s_mean = svc[n_idx, ll, ee]
    link = lat[uu, n_idx, ll, ee] - s_mean
    p_act = _used(np.asarray(inst.patterns), np.asarray(inst.weight, np.float64), U, L, E)
    bad = served & p_act & (link < -1e-9 * np.maximum(lat[uu, n_idx, ll, ee], 1e-300))
    if bad.any():
        u, l, e = (int(i) for i in np.argwhere(bad)[0])
        n = int(a[u, l, e])
        raise ValueError(
            f"service: service[{n}, {l}, {e}] = {svc[n, l, e]:.6g} exceeds latency[{u}, {n}, {l}, {e}] = "
            f"{lat[u, n, l, e]:.6g}; the simulation needs latency >= service (link time = latency - service)"
        )
    half = np.where(served, np.maximum(link, 0.0) / 2, 0.0)
    time = np.where(served, s_mean, np.asarray(inst.fallback, np.float64))
    return a, served, half, time


def _run_events(simpy, stream: _Stream, pats: np.ndarray, a: np.ndarray, served: np.ndarray, half: np.ndarray,
                time: np.ndarray, first: int, tokens: int, N: int, L: int, K: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The discrete-event run: tokens arrive (stream), each layer waits for its slowest member (a
    FIFO queue per node, the fallback without queueing). Returns the measured tokens' latencies,
    each node's busy time inside the measured window, and that window's length."""
    # The distinct members of every (u, l, m), as tuples (node, half link, time, member slot).
    plan: dict[tuple[int, int, int], list] = {}

    def members(u: int, l: int, m: int) -> list:
        key = (u, l, m)
        out = plan.get(key)
        if out is None:
            seen, out = set(), []
            for k in range(K):
                e = int(pats[u, l, m, k])
                if e in seen:
                    continue
                seen.add(e)
                out.append((int(a[u, l, e]) if served[u, l, e] else -1, float(half[u, l, e]), float(time[u, l, e]), k))
            plan[key] = out
        return out

    last = first + tokens - 1
    t_start, t_end = float(stream.arrive[first]), float(stream.arrive[last])
    env = simpy.Environment()
    queues = [simpy.Resource(env, capacity=1) for _ in range(N)]
    busy = np.zeros(N)
    done = np.full(tokens, np.nan)
    measured_left = [tokens]
    all_done = env.event()

    def expert(n: int, up: float, s: float):
        if up > 0:
            yield env.timeout(up)
        with queues[n].request() as req:
            yield req
            t0 = env.now
            busy[n] += max(0.0, min(t0 + s, t_end) - max(t0, t_start))
            yield env.timeout(s)
        if up > 0:
            yield env.timeout(up)

    def token(i: int, u: int, m_row: np.ndarray, z_row: np.ndarray):
        t0 = env.now
        for l in range(L):
            events = []
            for n, up, t, k in members(u, l, int(m_row[l])):
                if n < 0:
                    events.append(env.timeout(t))
                else:
                    events.append(env.process(expert(n, up, t * z_row[l, k])))
            yield events[0] if len(events) == 1 else env.all_of(events)
        if first <= i <= last:
            done[i - first] = env.now - t0
            measured_left[0] -= 1
            if measured_left[0] == 0:
                all_done.succeed()

    def source():
        i = 0
        while True:  # arrivals go on until the last measured token is done
            gap, u, m_row, z_row = stream.get(i)
            yield env.timeout(gap)
            env.process(token(i, u, m_row, z_row))
            i += 1

    env.process(source())
    env.run(until=all_done)
    return done, busy, t_end - t_start


class _Stream:
    """Per-token random draws (gap, user, pattern per layer, service factors) in blocks: the first
    block holds the warm-up and measured tokens, later ones are drawn while the simulation needs
    them. The draws depend on the seed only."""

    def __init__(self, rng, rate, weight, K: int, exponential: bool, first_block: int):
        self.rng, self.K, self.exponential = rng, K, exponential
        self.total = rate.sum()
        self.p_user = rate / self.total
        cw = np.cumsum(weight, axis=-1)
        self.cw = cw / np.where(cw[..., -1:] > 0, cw[..., -1:], 1.0)
        self.block = max(1024, first_block // 4)
        self.start = 0
        self._draw(first_block)
        self.arrive = np.cumsum(self.gaps)  # arrival times of the first block
        self.users_first = self.users

    def _draw(self, n: int) -> None:
        rng, cw = self.rng, self.cw
        U, L, M = cw.shape
        self.gaps = rng.exponential(1.0 / self.total, size=n)
        self.users = rng.choice(U, size=n, p=self.p_user)
        r = rng.random((n, L))
        m = np.empty((n, L), np.int64)
        for l in range(L):
            m[:, l] = np.minimum((cw[self.users, l] <= r[:, l, None]).sum(-1), M - 1)
        self.m = m
        self.z = rng.exponential(1.0, size=(n, L, self.K)) if self.exponential else np.ones((n, L, self.K))

    def get(self, i: int):
        j = i - self.start
        if j >= self.gaps.size:
            self.start += self.gaps.size
            self._draw(self.block)
            j = i - self.start
        return float(self.gaps[j]), int(self.users[j]), self.m[j], self.z[j]


def _used(pats: np.ndarray, weight: np.ndarray, U: int, L: int, E: int) -> np.ndarray:
    """bool [U, L, E]: the expert is a member of a pattern with positive weight."""
    out = np.zeros((U, L, E), bool)
    uu = np.arange(U)[:, None, None, None]
    ll = np.arange(L)[None, :, None, None]
    pos = np.broadcast_to((weight > 0)[..., None], pats.shape)
    out[np.broadcast_to(uu, pats.shape)[pos], np.broadcast_to(ll, pats.shape)[pos], pats[pos]] = True
    return out


def _batch_means_ci(x: np.ndarray, batches: int) -> float:
    """95 % half-width of the mean from ``batches`` contiguous batch means (Student t)."""
    from scipy import stats

    b = min(batches, x.size)
    means = np.array([c.mean() for c in np.array_split(x, b)])
    return float(stats.t.ppf(0.975, b - 1) * means.std(ddof=1) / math.sqrt(b))
