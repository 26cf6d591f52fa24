"""Solving a batch (or rows of a larger one) with every solver of the run, progress reported.

Instance i of the run uses the PRNG key ``jax.random.fold_in(key, i)`` (what
:func:`slimjax.solve_batch` gives instance i of one call), so rows solved in chunks or on several
processes draw what the whole batch solved at once would draw.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np

__all__ = ["row_keys", "solve_rows"]

log = logging.getLogger("slimjax")
_KEY_ARRAYS: bool | None = None  # does solve_batch take one key per instance? (probed once)


def row_keys(key, lo: int, hi: int):
    """The keys of instances ``[lo, hi)``: ``fold_in(key, i)`` for each i."""
    import jax
    import jax.numpy as jnp

    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(lo, hi, dtype=jnp.uint32))


def _solve(batch, obj, key, lo: int, whole: bool, exe: dict, progress):
    """``solve_batch`` for rows ``[lo, lo + len(batch))`` with their own keys."""
    global _KEY_ARRAYS
    import jax

    import slimjax

    if whole:  # the whole batch in one call: instance i gets fold_in(key, i) already
        return slimjax.solve_batch(batch, obj, key=key, throw=False, progress=progress, **exe)
    if _KEY_ARRAYS is not False:
        try:
            sol = slimjax.solve_batch(batch, obj, key=row_keys(key, lo, lo + len(batch)), throw=False,
                                      progress=progress, **exe)
            _KEY_ARRAYS = True
            return sol
        except ValueError as e:
            if not str(e).startswith("key:"):
                raise
            _KEY_ARRAYS = False
            log.warning("this solve_batch takes one key per call: randomized solvers draw per chunk, so their "
                        "results depend on the chunk layout (deterministic solvers are unaffected)")
    return slimjax.solve_batch(batch, obj, key=jax.random.fold_in(key, lo), throw=False, progress=progress, **exe)


def solve_rows(batch, solvers: dict, key, *, lo: int = 0, whole: bool = True, execution: dict | None = None,
               on_progress: Callable[[float], None] | None = None) -> dict:
    """Solve ``batch`` (rows ``[lo, lo + len(batch))`` of the run) with every solver.

    Args:
      solvers: ``{name: solver object}`` (:class:`~slimjax.app.Plan`).
      key: the run's solve key.
      whole: the batch is the whole run (then one ``solve_batch`` call per solver, as a user would make it).
      execution: keyword options of ``solve_batch`` (``solve_options``).
      on_progress: called with the fraction of this batch done (0..1), from ``solve_batch``'s callback.

    Returns:
      ``{name: Solution}`` with ``Solution.solver`` set to the name; failed instances have status
      ``failed`` and J NaN (a warning says how many).
    """
    exe = dict(execution or {})
    sols = {}
    S = len(solvers)
    for s, (name, obj) in enumerate(solvers.items()):
        cb = None
        if on_progress is not None:
            def cb(done, total, s=s):
                on_progress((s + done / max(total, 1)) / S)

            on_progress(s / S)
        sol = _solve(batch, obj, key, lo, whole, exe, cb if cb is not None else False)
        sol = dataclasses.replace(sol, solver=name)
        failed = int((~sol.ok).sum())
        if failed:  # one failed instance must not cost the other rows of a sweep
            log.warning("%s: %d of %d instances failed (status 'failed', J = NaN in the results)", name, failed,
                        len(sol.objective))
        log.info("%s: rows %d-%d, mean J %.6g, %.3f s solve + %.2f s compile", name, lo, lo + len(batch) - 1,
                 float(np.nanmean(sol.objective)) if np.isfinite(sol.objective).any() else float("nan"),
                 sol.seconds, sol.compile_seconds)
        sols[name] = sol
    if on_progress is not None:
        on_progress(1.0)
    return sols
