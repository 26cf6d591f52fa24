"""The persistent compilation cache: on by default, moved by SLIMJAX_CACHE_DIR, off with
SLIMJAX_CACHE=0, and never in the way of a cache directory the user configured.

Every check runs in a fresh subprocess (the cache is set up once per process) and asserts on
JAX's own cache events and on the files in the directories, never on timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

CHILD = textwrap.dedent(
    """
    import json, sys
    import jax
    import slimjax
    from slimjax._cache import cache_dir

    if len(sys.argv) > 1:  # the user's own directory, set in code before the first solve
        jax.config.update("jax_compilation_cache_dir", sys.argv[1])
    inst = slimjax.generate.instances(jax.random.key(0), 1, model="moe_llava_phi2")[0]
    jax.block_until_ready(inst)
    events = {}
    jax.monitoring.register_event_listener(lambda name, **kw: events.__setitem__(name, events.get(name, 0) + 1))
    sol = slimjax.solve(inst, "successive")
    print(json.dumps({
        "requests": events.get("/jax/compilation_cache/compile_requests_use_cache", 0),
        "hits": events.get("/jax/compilation_cache/cache_hits", 0),
        "writes": events.get("/jax/compilation_cache/cache_misses", 0),
        "cache_dir": cache_dir(),
        "J": float(sol.objective),
    }))
    """
)


def _files(path) -> int:
    return sum(len(f) for _, _, f in os.walk(path)) if os.path.isdir(path) else 0


def _child(env_extra: dict, *args) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLIMJAX_CACHE", "JAX_COMPILATION_CACHE"))}
    env.update(PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu",
               # every program is written (JAX's 1 s threshold would make the counts depend on load)
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_solve_from_the_cache(tmp_path):
    d = str(tmp_path / "cache")
    first = _child({"SLIMJAX_CACHE_DIR": d})
    assert first["cache_dir"] == os.path.abspath(d)
    assert first["hits"] == 0 and first["writes"] > 0
    programs = _files(os.path.join(d, "programs"))
    assert programs > 0  # the traced solver programs were stored
    n = _files(d)
    assert n >= first["writes"] + programs
    second = _child({"SLIMJAX_CACHE_DIR": d})
    # every program of the solve came from the directory (traced and compiled); nothing was written
    assert second["requests"] > 0 and second["hits"] == second["requests"]
    assert second["writes"] == 0 and _files(d) == n
    assert second["J"] == first["J"]  # the same executable, loaded instead of compiled
    off = _child({"SLIMJAX_CACHE": "0"})
    # the stored module is the traced program itself, but it is compiled inside another jit:
    # J may differ by float rounding (float32), never more
    assert abs(off["J"] - first["J"]) <= 1e-6 * abs(off["J"])


@pytest.mark.slow  # three more processes; the default run keeps the second-process test
def test_cache_off_and_the_users_own_directory(tmp_path):
    ours, theirs, in_code = (str(tmp_path / n) for n in ("ours", "theirs", "in_code"))
    off = _child({"SLIMJAX_CACHE": "0", "SLIMJAX_CACHE_DIR": ours})
    assert off["cache_dir"] is None and off["writes"] == off["hits"] == 0 and _files(ours) == 0
    env = _child({"SLIMJAX_CACHE_DIR": ours, "JAX_COMPILATION_CACHE_DIR": theirs})
    assert env["cache_dir"] == theirs and _files(theirs) > 0 and _files(ours) == 0
    code = _child({"SLIMJAX_CACHE_DIR": ours}, in_code)
    assert code["cache_dir"] == in_code and _files(in_code) > 0 and _files(ours) == 0


def test_default_directory_rules(monkeypatch, tmp_path):
    from slimjax._cache import default_cache_dir

    monkeypatch.setenv("SLIMJAX_CACHE_DIR", str(tmp_path / "x"))
    assert default_cache_dir() == str(tmp_path / "x")
    monkeypatch.delenv("SLIMJAX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == os.path.join(str(tmp_path / "xdg"), "slimjax", "jax")


def test_only_slimjax_configured_programs_are_stored():
    """A user's own solver class is not covered by slimjax's source digest: never stored."""
    import dataclasses

    from slimjax.solvers import Polish, Successive, chain
    from slimjax._compile import _ours

    @dataclasses.dataclass(frozen=True)
    class Mine:
        rounds: int = 3

    assert _ours((Successive(), chain(Successive(), Polish())))
    assert not _ours((Mine(),))
    assert not _ours((Successive(), {"nested": Mine()}))
    assert not _ours((lambda x: x,))
