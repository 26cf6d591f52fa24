"""Ahead-of-time compilation with the compile time measured apart from the run time.

Every jitted program that a solve runs goes through :func:`call`: the first call for a given
(function, static arguments, argument shapes/dtypes/shardings) lowers and compiles it with
``jax.jit(f).lower(...).compile()`` and keeps the executable; later calls run the executable
directly. The seconds spent lowering and compiling are added to a :class:`Clock`, so that
``Solution.compile_seconds`` is exactly that and ``Solution.seconds`` is the rest of the call,
from one run (no second run is needed to separate them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

import jax

from slimjax._cache import ensure_cache, programs_dir, source_digest

__all__ = ["Clock", "call", "clear_cache", "compile_lowered", "fast_compile_for"]

_CACHE: dict = {}
_LOCK = threading.Lock()
_MAX_ENTRIES = 512
log = logging.getLogger("slimjax")


#: XLA CPU options of the programs compiled with ``fast=True``: the elemental fusion emitters
#: instead of the MLIR ones. Measured on 2 cores (mixtral_8x7b, E = 8): the default method's
#: programs compile ~25 % faster *and* run 15-25 % faster; with E = 64 or 256 they run 13-44 %
#: slower, so :func:`fast_compile_for` picks them by E. Results are the same (the same float
#: operations; tests/test_regression.py). ``SLIMJAX_FAST_COMPILE=0`` turns them off.
FAST_COMPILE_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
#: the largest E whose programs get :data:`FAST_COMPILE_OPTIONS`
FAST_COMPILE_MAX_EXPERTS = 16
_FAST_UNSUPPORTED = False  # this XLA build does not know the option (an older or newer jaxlib)


def _fast_enabled() -> bool:
    return (not _FAST_UNSUPPORTED and os.environ.get("SLIMJAX_FAST_COMPILE", "1").strip().lower() not in
            ("0", "false", "off", "no") and jax.default_backend() == "cpu")


def compile_lowered(lowered, fast: bool = False):
    """``lowered.compile()``, with :data:`FAST_COMPILE_OPTIONS` when ``fast`` on the CPU backend
    (falling back to the defaults, once and for the process, where XLA does not know them)."""
    global _FAST_UNSUPPORTED
    if fast and _fast_enabled():
        try:
            return lowered.compile(compiler_options=FAST_COMPILE_OPTIONS)
        except Exception as e:  # noqa: BLE001 - XLA raises its own runtime error type
            if "compile option" not in str(e) and "compiler_options" not in str(e):
                raise
            _FAST_UNSUPPORTED = True
            log.debug("slimjax: %s not supported by this XLA (%s)", FAST_COMPILE_OPTIONS, e)
    return lowered.compile()


def fast_compile_for(experts: int) -> bool:
    """Whether programs over instances with ``experts`` experts per layer compile with
    :data:`FAST_COMPILE_OPTIONS` (E <= :data:`FAST_COMPILE_MAX_EXPERTS`)."""
    return int(experts) <= FAST_COMPILE_MAX_EXPERTS


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


def call(fn: Callable, static: tuple, args: tuple, clock: Clock | None = None, *, fast: bool = False) -> Any:
    """``fn(*static, *args)`` where ``fn`` is ``jax.jit(g, static_argnums=range(len(static)))``.

    Compiles once per signature (timed into ``clock``) and runs the cached executable. With
    slimjax's persistent cache on, the traced program is also kept on disk (a serialized
    ``jax.export`` module) and a later process loads it instead of tracing again. ``fast``:
    compile with :data:`FAST_COMPILE_OPTIONS` (see :func:`compile_lowered`).
    """
    leaves, treedef = jax.tree_util.tree_flatten(args)
    avals = tuple(_aval(x) for x in leaves)
    key = (fn, static, treedef, avals, bool(fast))
    hit = _CACHE.get(key)
    if hit is None:
        ensure_cache()  # solver objects called directly get the persistent cache too
        t0 = time.perf_counter()
        run = None
        where = programs_dir()
        if where is not None:
            try:
                run = _stored(fn, static, treedef, avals, leaves, where, fast)
            except Exception as e:  # noqa: BLE001 - the store is an optimisation, never a failure
                log.debug("slimjax: program store skipped (%s)", e)
                run = None
        if run is None:
            compiled = compile_lowered(fn.lower(*static, *args), fast)
            run = (lambda a, c=compiled: c(*a)), compiled
        if clock is not None:
            clock.compile_seconds += time.perf_counter() - t0
            clock.compiled += 1
        hit = (run[0], _footprint(run[1]), run[1])  # runner, XLA footprint, the executable
        with _LOCK:
            if len(_CACHE) >= _MAX_ENTRIES:  # bound the cache (shapes swept one by one)
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = hit
    runner, nbytes, _ = hit
    if clock is not None:
        clock.peak_bytes = max(clock.peak_bytes, nbytes)
    return runner(args)


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


_PRIMITIVES = (int, float, complex, str, bytes, bool, type(None))


def _ours(x, depth: int = 0) -> bool:
    """Whether a static argument is made only of plain values and slimjax's own classes, so that
    its repr plus slimjax's source digest identify the program (a user's class is not covered by
    the digest: a program it configures is never stored)."""
    if depth > 32:
        return False
    if isinstance(x, _PRIMITIVES):
        return True
    t = type(x)
    mine = t.__module__.startswith("slimjax")
    if isinstance(x, (tuple, list, frozenset)):
        return (t in (tuple, list, frozenset) or mine) and all(_ours(v, depth + 1) for v in x)
    if isinstance(x, dict):
        return t is dict and all(_ours(k, depth + 1) and _ours(v, depth + 1) for k, v in x.items())
    if not mine:
        return False
    if dataclasses.is_dataclass(x):
        return all(_ours(getattr(x, f.name), depth + 1) for f in dataclasses.fields(x))
    return True


def _stored(fn, static, treedef, avals, leaves, where, fast: bool = False):
    """The program from the store, or traced, exported and stored; None when it cannot be keyed.

    The exported module takes the flat argument leaves (PRNG keys as their raw data) and returns
    the flat outputs; its output structure is stored beside it. Both processes run the same
    module, compiled through JAX's persistent cache.
    """
    if not str(getattr(fn, "__module__", "")).startswith("slimjax") or not _ours(tuple(static)):
        return None
    text = repr((getattr(fn, "__module__", ""), getattr(fn, "__qualname__", ""), static, str(treedef),
                 [(str(a), str(sh)) for a, sh in avals], jax.__version__, jax.default_backend(),
                 bool(jax.config.jax_enable_x64), source_digest()))
    if " at 0x" in text or "..." in text:  # an object or array without a faithful repr
        return None
    path = os.path.join(where, hashlib.sha256(text.encode()).hexdigest() + ".pkl")
    impls = [jax.random.key_impl(x) if _is_key(x) else None for x in leaves]
    if os.path.exists(path):
        with open(path, "rb") as f:
            saved = pickle.load(f)
        exp, out_tree = saved["module"], saved["out_tree"]
    else:
        out_box = []

        def flat(*raw):
            ls = [jax.random.wrap_key_data(r, impl=i) if i is not None else r for r, i in zip(raw, impls)]
            out = fn(*static, *jax.tree_util.tree_unflatten(treedef, ls))
            outs, tree = jax.tree_util.tree_flatten(out)
            out_box.append(tree)
            return outs

        raw = [jax.random.key_data(x) if i is not None else x for x, i in zip(leaves, impls)]
        exp = jax.export.export(jax.jit(flat))(*raw)
        out_tree = out_box[-1]
        os.makedirs(where, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            # the Exported itself (its vjp hook dropped): Exported.serialize needs flatbuffers
            pickle.dump({"module": dataclasses.replace(exp, _get_vjp=None), "out_tree": out_tree}, f)
        os.replace(tmp, path)
    raw = [jax.random.key_data(x) if i is not None else x for x, i in zip(leaves, impls)]
    compiled = compile_lowered(jax.jit(exp.call).lower(*raw), fast)

    def run(a):
        ls = jax.tree_util.tree_leaves(a)
        r = [jax.random.key_data(x) if i is not None else x for x, i in zip(ls, impls)]
        return jax.tree_util.tree_unflatten(out_tree, compiled(*r))

    return run, compiled


def _footprint(compiled) -> int:
    """Bytes XLA reports for a program (arguments + outputs + temporaries; 0 when unknown)."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        return 0


def compiled_programs() -> list:
    """``(function name, executable)`` of every program compiled in this process (for size checks)."""
    with _LOCK:
        return [(getattr(k[0], "__name__", str(k[0])), v[2]) for k, v in _CACHE.items()]


def clear_cache() -> None:
    """Forget every compiled program (the next solve compiles again; for tests and benchmarks)."""
    with _LOCK:
        _CACHE.clear()
