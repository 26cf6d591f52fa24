"""HiGHS models: the one place slimjax imports ``highspy``, builds a model and runs it.

Shared by the exact ``milp`` solver (:class:`slimjax.solvers.MILP`) and the HiGHS bounds of
:mod:`slimjax.bounds` (``HighsLP``, ``ThresholdHighs``). ``highspy`` is the optional extra
``slimjax[milp]``; :func:`highspy` imports it or raises an ``ImportError`` that names the extra.

* :class:`Model` — a column-wise model builder: columns and rows are added in blocks (NumPy index
  arrays come back), coefficients as (row, column, value) triplets; :meth:`Model.lp` turns it
  into a ``HighsLp`` (an LP, or a MILP with the integer columns).
* :func:`new_highs` — a quiet ``Highs`` object with a time limit and a thread count (HiGHS keeps
  one thread pool per process and silently refuses to run with another thread count than the
  pool's: the pool is restarted when the count changes).
* :func:`run` — pass a model, run it, return HiGHS's model status in words.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

__all__ = ["Model", "highspy", "new_highs", "run"]

_POOL = {"threads": 0}  # the thread count HiGHS's global scheduler was started with (0 = its default)
_LOCK = threading.Lock()


def highspy() -> Any:
    """The ``highspy`` module, or an ``ImportError`` naming the ``milp`` extra."""
    try:
        import highspy as hs
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "method 'milp' and the HiGHS bounds of slimjax.lower_bound need HiGHS: install the optional extra "
            "with `pip install 'slimjax[milp]'` (it provides highspy)"
        ) from err
    return hs


class Model:
    """Column-wise model builder (NumPy triplets -> ``HighsLp``)."""

    def __init__(self):
        self.cost, self.lo, self.hi, self.integer = [], [], [], []
        self.rows_lo, self.rows_hi = [], []
        self.ti, self.tj, self.tv = [], [], []  # row, col, value
        self.ncol = 0
        self.nrow = 0

    def cols(self, n: int, cost=0.0, lo=0.0, hi=1.0, integer: bool = False) -> np.ndarray:
        """Add ``n`` columns (cost, bounds broadcast to [n]); returns their indices [n]."""
        idx = np.arange(self.ncol, self.ncol + n)
        self.ncol += n
        self.cost.append(np.broadcast_to(np.asarray(cost, np.float64), (n,)))
        self.lo.append(np.broadcast_to(np.asarray(lo, np.float64), (n,)))
        self.hi.append(np.broadcast_to(np.asarray(hi, np.float64), (n,)))
        self.integer.append(np.full(n, integer, bool))
        return idx

    def rows(self, n: int, lo, hi) -> np.ndarray:
        """Add ``n`` rows ``lo ≤ a·x ≤ hi`` (±inf for a free side); returns their indices [n]."""
        idx = np.arange(self.nrow, self.nrow + n)
        self.nrow += n
        self.rows_lo.append(np.broadcast_to(np.asarray(lo, np.float64), (n,)))
        self.rows_hi.append(np.broadcast_to(np.asarray(hi, np.float64), (n,)))
        return idx

    def coef(self, r, c, v) -> None:
        """Coefficients ``a[r, c] = v`` (broadcast; repeated pairs are summed by HiGHS's format)."""
        r, c, v = np.broadcast_arrays(np.asarray(r), np.asarray(c), np.asarray(v, np.float64))
        self.ti.append(r.ravel())
        self.tj.append(c.ravel())
        self.tv.append(v.ravel())

    def lp(self, hs, relax: bool, offset: float):
        """The ``HighsLp`` (``relax``: the integer columns as continuous ones; ``offset`` is added
        to the objective)."""
        inf = hs.kHighsInf
        lp = hs.HighsLp()
        lp.num_col_ = self.ncol
        lp.num_row_ = self.nrow
        cat = lambda parts, dt=np.float64: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)  # noqa: E731
        lp.col_cost_ = cat(self.cost)
        lp.col_lower_ = cat(self.lo)
        lp.col_upper_ = np.where(np.isfinite(cat(self.hi)), cat(self.hi), inf)
        lp.row_lower_ = np.where(np.isfinite(cat(self.rows_lo)), cat(self.rows_lo), -inf)
        lp.row_upper_ = np.where(np.isfinite(cat(self.rows_hi)), cat(self.rows_hi), inf)
        lp.offset_ = float(offset)
        r, c, v = cat(self.ti, np.int64), cat(self.tj, np.int64), cat(self.tv)
        order = np.lexsort((r, c))
        r, c, v = r[order], c[order], v[order]
        start = np.searchsorted(c, np.arange(self.ncol + 1)).astype(np.int32)
        lp.a_matrix_.format_ = hs.MatrixFormat.kColwise
        lp.a_matrix_.start_ = start
        lp.a_matrix_.index_ = r.astype(np.int32)
        lp.a_matrix_.value_ = v
        lp.a_matrix_.num_col_ = self.ncol
        lp.a_matrix_.num_row_ = self.nrow
        if not relax:
            integ = cat(self.integer, bool)
            lp.integrality_ = [hs.HighsVarType.kInteger if b else hs.HighsVarType.kContinuous for b in integ]
        return lp


def new_highs(time_limit: float | None = None, threads: int | None = None, verbose: bool = False):
    """A ``Highs`` object: log only when ``verbose``, ``time_limit`` seconds (None: none),
    ``threads`` (None: HiGHS's default). Restarts HiGHS's process-wide thread pool when the thread
    count differs from the one it was started with (HiGHS would otherwise refuse to run)."""
    hs = highspy()
    h = hs.Highs()
    h.setOptionValue("output_flag", bool(verbose))
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    want = int(threads) if threads is not None else 0
    with _LOCK:
        if want != _POOL["threads"]:
            h.resetGlobalScheduler(True)
            _POOL["threads"] = want
    if threads is not None:
        h.setOptionValue("threads", int(threads))
    return h


def run(h, model: Model, relax: bool, offset: float = 0.0) -> str:
    """Pass ``model`` to ``h`` and run it; returns HiGHS's model status in words (``"Optimal"``,
    ``"Time limit reached"``, ...). Raises RuntimeError when HiGHS refuses to run the model."""
    hs = highspy()
    h.passModel(model.lp(hs, relax, offset))
    ran = h.run()
    status = h.modelStatusToString(h.getModelStatus())
    if ran == hs.HighsStatus.kError and status == "Not Set":
        raise RuntimeError("HiGHS refused to run the model (HighsStatus.kError); rerun with verbose=True for its log")
    return status
