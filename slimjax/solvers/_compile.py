"""Ahead-of-time compilation with the compile time measured apart from the run time.

Every jitted program that a solve runs goes through :func:`call`: the first call for a given
(function, static arguments, argument shapes/dtypes/shardings) lowers and compiles it with
``jax.jit(f).lower(...).compile()`` and keeps the executable; later calls run the executable
directly. The seconds spent lowering and compiling are added to a :class:`Clock`, so that
``Solution.compile_seconds`` is exactly that and ``Solution.seconds`` is the rest of the call,
from one run (no second run is needed to separate them).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import jax

__all__ = ["Clock", "call", "clear_cache"]

_CACHE: dict = {}
_LOCK = threading.Lock()
_MAX_ENTRIES = 512


class Clock:
    """Accumulates the compile seconds of one solve call."""

    __slots__ = ("compile_seconds", "compiled", "peak_bytes")

    def __init__(self):
        self.compile_seconds = 0.0
        self.compiled = 0  # number of programs compiled during the call
        self.peak_bytes = 0  # largest XLA memory footprint (arguments + outputs + temporaries) run


def _aval(x):
    typeof = getattr(jax, "typeof", None)
    a = typeof(x) if typeof is not None else jax.api_util.shaped_abstractify(x)
    sh = x.sharding if isinstance(x, jax.Array) and getattr(x, "committed", False) else None
    return a, sh


def call(fn: Callable, static: tuple, args: tuple, clock: Clock | None = None) -> Any:
    """``fn(*static, *args)`` where ``fn`` is ``jax.jit(g, static_argnums=range(len(static)))``.

    Compiles once per signature (timed into ``clock``) and runs the cached executable.
    """
    leaves, treedef = jax.tree_util.tree_flatten(args)
    key = (fn, static, treedef, tuple(_aval(x) for x in leaves))
    hit = _CACHE.get(key)
    if hit is None:
        t0 = time.perf_counter()
        compiled = fn.lower(*static, *args).compile()
        if clock is not None:
            clock.compile_seconds += time.perf_counter() - t0
            clock.compiled += 1
        hit = (compiled, _footprint(compiled))
        with _LOCK:
            if len(_CACHE) >= _MAX_ENTRIES:  # bound the cache (shapes swept one by one)
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = hit
    compiled, nbytes = hit
    if clock is not None:
        clock.peak_bytes = max(clock.peak_bytes, nbytes)
    return compiled(*args)


def _footprint(compiled) -> int:
    """Bytes XLA reports for a program (arguments + outputs + temporaries; 0 when unknown)."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        return 0


def clear_cache() -> None:
    """Forget every compiled program (the next solve compiles again; for tests and benchmarks)."""
    with _LOCK:
        _CACHE.clear()
