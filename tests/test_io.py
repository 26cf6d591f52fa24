"""``slimjax.save``/``slimjax.load`` round trips, their errors, ``atomic_write`` and the placement table."""

from __future__ import annotations

import json
import zipfile

import jax
import numpy as np
import pytest

import slimjax
from slimjax._io import FORMAT_VERSION, atomic_write, load, placement_frame, save
from tests.helpers import random_instance


def _same_arrays(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def test_instance_round_trip_is_exact(tmp_path):
    single = random_instance(3, U=2, N=3, L=2, E=4, M=5, K=2)
    batch = slimjax.stack([random_instance(s) for s in range(3)])
    for obj in (single, batch):
        save(tmp_path / "i.npz", obj)
        back = load(tmp_path / "i.npz")
        assert isinstance(back, slimjax.Instance) and back.batch_shape == obj.batch_shape
        for f in ("latency", "fallback", "size", "capacity", "patterns", "weight", "traffic", "base"):
            _same_arrays(getattr(back, f), getattr(obj, f))


def test_float64_instance_round_trip(tmp_path, x64):
    inst = random_instance(1, dtype=np.float64)
    assert inst.latency.dtype == np.float64
    save(tmp_path / "i64.npz", inst)
    back = load(tmp_path / "i64.npz")
    _same_arrays(back.latency, inst.latency)


def test_float64_instance_needs_x64(tmp_path, x64):
    save(tmp_path / "i64.npz", random_instance(1, dtype=np.float64))
    jax.config.update("jax_enable_x64", False)  # the fixture restores the flag
    with pytest.raises(ValueError, match="float64"):
        load(tmp_path / "i64.npz")


def test_solution_round_trip_is_exact(tmp_path):
    batch = slimjax.stack([random_instance(s) for s in range(4)])
    sol = slimjax.solve_batch(batch, "popularity")
    sol = slimjax.Solution(sol.placement, sol.objective, sol.total, sol.used,
                           np.array([0, 1, 2, 3], np.int8),  # every status survives
                           dict(sol.info, bound=np.arange(4.0), note=np.array(["a", "bb", "c", "d"])),
                           "popularity", 0.25, 1.5)
    save(tmp_path / "s.npz", sol)
    back = load(tmp_path / "s.npz")
    assert isinstance(back, slimjax.Solution)
    for f in ("placement", "objective", "total", "used", "status"):
        _same_arrays(getattr(back, f), getattr(sol, f))
    assert list(back.info) == list(sol.info)
    for k in sol.info:
        _same_arrays(back.info[k], sol.info[k])
    assert (back.solver, back.seconds, back.compile_seconds) == ("popularity", 0.25, 1.5)
    assert list(back.status_names) == ["optimal", "feasible", "time-limit", "failed"]
    one = sol[2]
    save(tmp_path / "one.npz", one)
    _same_arrays(load(tmp_path / "one.npz").placement, one.placement)


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a slimjax file"):
        load(tmp_path / "text.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a slimjax file.*slimjax.save"):
        load(tmp_path / "plain.npz")
    save(tmp_path / "i.npz", random_instance(0))
    with zipfile.ZipFile(tmp_path / "i.npz") as z:
        arrays = {n[:-4]: np.load(z.open(n)) for n in z.namelist()}
    meta = json.loads(str(arrays["__slimjax__"]))
    meta["version"] = FORMAT_VERSION + 1
    arrays["__slimjax__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "newer.npz", **arrays)
    with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 1}"):
        load(tmp_path / "newer.npz")
    with pytest.raises(ValueError, match="obj: expected a slimjax.Instance or slimjax.Solution"):
        save(tmp_path / "x.npz", {"a": 1})


def test_placement_frame():
    batch = slimjax.stack([random_instance(s) for s in range(2)])
    sol = slimjax.solve_batch(batch, "popularity")
    df = placement_frame(sol, batch)
    x = np.asarray(sol.placement)
    assert list(df.columns) == ["instance", "node", "layer", "expert", "size"]
    assert len(df) == int(x.sum())
    assert x[df.instance, df.node, df.layer, df.expert].all()
    # the sizes of the cached copies add up to each node's storage used
    used = df.groupby(["instance", "node"])["size"].sum()
    for (i, n), v in used.items():
        assert np.isclose(v, np.asarray(sol.used)[i, n])
    one = placement_frame(sol[1])
    assert list(one.columns) == ["instance", "node", "layer", "expert"] and (one.instance == 0).all()
    assert len(one) == int(x[1].sum())
    with pytest.raises(ValueError, match="placement"):
        placement_frame(np.zeros((2, 2), bool))


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert p.read_text() == "old" and [q.name for q in tmp_path.iterdir()] == ["f.txt"]
    with atomic_write(p) as tmp:
        tmp.write_text("new")
    assert p.read_text() == "new" and [q.name for q in tmp_path.iterdir()] == ["f.txt"]


def test_public_names_save_and_load(tmp_path):
    """``slimjax.save`` and ``slimjax.load`` are the file functions; the load model is
    ``slimjax.queueing`` (importing it does not replace ``slimjax.load``)."""
    import slimjax.queueing as q

    assert slimjax.save is save and slimjax.placement_frame is placement_frame
    assert slimjax.load is load and q.utilization is slimjax.utilization
    inst = random_instance(4, U=2, N=3, L=2, E=4, M=5, K=2)
    slimjax.save(tmp_path / "i.npz", inst)
    back = slimjax.load(tmp_path / "i.npz")
    _same_arrays(back.latency, inst.latency)
    sol = slimjax.solve(inst, "greedy")
    slimjax.save(tmp_path / "s.npz", sol)
    again = slimjax.load(tmp_path / "s.npz", validate=False)
    _same_arrays(again.placement, sol.placement)
    with pytest.raises(FileNotFoundError, match="path: no such file"):
        slimjax.load(tmp_path / "missing.npz")


def test_ctrl_c_during_a_write_takes_effect_once_the_file_is_in_place(tmp_path):
    """SIGINT inside atomic_write is held: the block finishes, the file is renamed into place,
    then KeyboardInterrupt is raised (a half-written zip would print a traceback when collected)."""
    import os
    import signal
    import time

    p = tmp_path / "a.npz"
    reached = False
    with pytest.raises(KeyboardInterrupt), atomic_write(p) as tmp:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # a Python handler runs between bytecodes of the main thread: it has run by now
        with open(tmp, "wb") as fh:
            np.savez(fh, a=np.arange(3))
        reached = True
    assert reached and np.load(p)["a"].tolist() == [0, 1, 2]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert not list(tmp_path.glob(".*tmp*"))


def test_signals_held_delivers_to_the_handler_in_place_and_nests():
    import os
    import signal

    from slimjax._io import signals_held

    got = []
    old = signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    try:
        with signals_held():
            with signals_held():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
            assert got == []  # the inner block hands it to the outer one, which still holds it
        assert got == [signal.SIGTERM]  # delivered once, after the outer block
    finally:
        signal.signal(signal.SIGTERM, old)
