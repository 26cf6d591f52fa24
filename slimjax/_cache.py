"""JAX's persistent compilation cache, on by default for the programs a solve compiles.

On the first solve of a process, :func:`ensure_cache` points JAX's persistent compilation cache
at a per-user directory, so that a later process loads the compiled programs from disk instead of
compiling them again. Rules, in order:

* ``SLIMJAX_CACHE=0`` (or ``false``/``off``/``no``) leaves JAX's settings alone: no cache.
* A cache directory the user configured (``jax.config.update("jax_compilation_cache_dir", ...)``
  or the ``JAX_COMPILATION_CACHE_DIR`` environment variable), or the cache turned off with
  ``jax_enable_compilation_cache=False``, is never touched.
* Otherwise the directory is ``SLIMJAX_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/slimjax/jax``
  (``~/.cache/slimjax/jax``; ``~/Library/Caches/slimjax/jax`` on macOS, ``%LOCALAPPDATA%`` on
  Windows), and programs that took at least 0.05 s to compile are kept (JAX's own threshold,
  1 s, is left alone when the user changed it).

A directory that cannot be created leaves the cache off (with a warning), never the solve.

In slimjax's own directory (never in one the user configured), the solver programs are also kept
after tracing, as serialized ``jax.export`` modules under ``programs/``: a later process loads them
instead of tracing and lowering the solver again (the part of a compilation that JAX's cache does
not save), keyed by the solver's configuration, the argument shapes, the JAX version and a digest
of slimjax's source files.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

import jax

__all__ = ["cache_dir", "default_cache_dir", "ensure_cache", "programs_dir", "source_digest"]

log = logging.getLogger("slimjax")

_LOCK = threading.Lock()
_DONE = False
_OURS: str | None = None  # the directory slimjax configured itself (None: the user's or none)
_DIGEST: str | None = None
_OFF = ("0", "false", "off", "no")
_JAX_DEFAULT_MIN_SECS = 1.0  # jax_persistent_cache_min_compile_time_secs when nobody set it
MIN_COMPILE_SECS = 0.05


def default_cache_dir() -> str:
    """The directory slimjax uses when the user configured none (``SLIMJAX_CACHE_DIR`` wins)."""
    env = os.environ.get("SLIMJAX_CACHE_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    if os.environ.get("XDG_CACHE_HOME"):
        base = os.environ["XDG_CACHE_HOME"]
    elif sys.platform == "darwin":
        base = os.path.join("~", "Library", "Caches")
    elif os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        base = os.environ["LOCALAPPDATA"]
    else:
        base = os.path.join("~", ".cache")
    return os.path.abspath(os.path.join(os.path.expanduser(base), "slimjax", "jax"))


def cache_dir() -> str | None:
    """The directory JAX's persistent compilation cache uses now (None: no persistent cache)."""
    if not jax.config.jax_enable_compilation_cache:
        return None
    return jax.config.jax_compilation_cache_dir or None


def ensure_cache() -> str | None:
    """Turn the persistent compilation cache on once per process (see the module docstring).

    Returns:
      the cache directory in use afterwards, or None when there is none.
    """
    global _DONE, _OURS
    if _DONE:
        return cache_dir()
    with _LOCK:
        if _DONE:
            return cache_dir()
        _DONE = True
        if os.environ.get("SLIMJAX_CACHE", "1").strip().lower() in _OFF:
            return cache_dir()
        if not jax.config.jax_enable_compilation_cache or jax.config.jax_compilation_cache_dir:
            return cache_dir()  # the user's own choice
        path = default_cache_dir()
        try:
            os.makedirs(path, exist_ok=True)
            if not os.access(path, os.W_OK):
                raise PermissionError(f"{path} is not writable")
            jax.config.update("jax_compilation_cache_dir", path)
            _OURS = path
            if jax.config.jax_persistent_cache_min_compile_time_secs == _JAX_DEFAULT_MIN_SECS:
                jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
        except Exception as e:  # noqa: BLE001 - a read-only home must not stop a solve
            log.warning("slimjax: persistent compilation cache off (%s); set SLIMJAX_CACHE_DIR or SLIMJAX_CACHE=0", e)
        return cache_dir()


def programs_dir() -> str | None:
    """Where traced solver programs are kept: ``programs/`` in slimjax's own cache directory
    while JAX still uses it (None when the user configured the cache, or it is off)."""
    if _OURS is None or cache_dir() != _OURS:
        return None
    return os.path.join(_OURS, "programs")


def source_digest() -> str:
    """A digest of slimjax's Python sources (a changed solver never loads a stale program)."""
    global _DIGEST
    if _DIGEST is None:
        import hashlib

        root = os.path.dirname(os.path.abspath(__file__))
        h = hashlib.sha256()
        for dirpath, dirnames, files in os.walk(root):
            dirnames.sort()
            for f in sorted(files):
                if f.endswith(".py"):
                    full = os.path.join(dirpath, f)
                    h.update(os.path.relpath(full, root).encode())
                    with open(full, "rb") as fh:
                        h.update(fh.read())
        _DIGEST = h.hexdigest()
    return _DIGEST
