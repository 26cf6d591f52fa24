"""The trace formats of the serving and caching tools: readers (detected by content and by
``format=``), the moe-policylang writers, bad files, phase/domain splits and the placement export.

The fixtures in tests/data/formats/ are written by :func:`write_fixtures` from :func:`reference`
(run ``python -m tests.test_trace_formats`` to write them again); the tests check that the
committed files still load to the reference trace and that the text fixtures are what the
writer produces today.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

import slimjax
from slimjax import traces as tr

DATA = Path(__file__).parent / "data" / "formats"
E = 6


def reference() -> tr.Trace:
    """5 tokens (prompt 3: two prefill, one decode; prompt 7: one prefill, one decode), layers 0, 2, 5, top-2 of 6."""
    ids = np.array([
        [[0, 1], [2, 3], [4, 5]],
        [[1, 0], [3, 2], [5, 4]],
        [[0, 5], [1, 4], [2, 3]],
        [[2, 4], [0, 3], [1, 5]],
        [[3, 5], [4, 0], [0, 2]],
    ])
    return tr.Trace(ids, E, layers=[0, 2, 5], request=np.array([3, 3, 3, 7, 7]),
                    phase=["prefill", "prefill", "decode", "prefill", "decode"],
                    domain=["code", "code", "code", "math", "math"], source="fixture")


def _counts(t: tr.Trace) -> np.ndarray:
    """[L, E] how often each expert was chosen per layer."""
    L = t.num_layers
    out = np.zeros((L, t.num_experts), np.int64)
    np.add.at(out, (np.broadcast_to(np.arange(L)[None, :, None], t.shape), t.expert_ids), 1)
    return out


def _vllm_events(t: tr.Trace, passes: list[slice]) -> list[dict]:
    """One event per (forward pass, layer), as a forward hook on each router appends them."""
    return [{"layer_idx": int(lay), "indices": t.expert_ids[p, j].tolist(),
             "weights": np.full(t.expert_ids[p, j].shape, 0.5).tolist()}
            for p in passes for j, lay in enumerate(t.layers)]


def _llamacpp_lines(t: tr.Trace) -> list[str]:
    """``EXPERT|L<l>|T<t>: [ids]`` lines; T restarts at 0 for each prompt."""
    _, pos = np.unique(t.request, return_inverse=True)
    within = np.concatenate([np.arange(n) for n in np.bincount(pos)])
    return [f"EXPERT|L{lay}|T{within[i]}: [{', '.join(map(str, t.expert_ids[i, j].tolist()))}]"
            for i in range(t.num_tokens) for j, lay in enumerate(t.layers.tolist())]


def write_fixtures(folder: Path) -> dict[str, Path]:
    """Write every fixture from :func:`reference` into ``folder``; returns {format: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    t = reference()
    c = _counts(t)
    out = {
        "policylang-jsonl": Path(tr.write_policylang_jsonl(t, folder / "policylang.jsonl", model_name="fixture-moe")),
        "policylang-parquet": Path(tr.write_policylang_parquet(t, folder / "policylang.parquet",
                                                               model_name="fixture-moe")),
        "vllm-hook": folder / "vllm_hook.json",
        "llamacpp": folder / "llamacpp.log",
        "counts-npy": folder / "counts.npy",
        "counts-json": folder / "counts_map.json",
        "counts-sglang": folder / "sglang_expert_distribution.csv",
    }
    out["vllm-hook"].write_text(json.dumps(_vllm_events(t, [slice(0, 3), slice(3, 5)])) + "\n")
    noise = ["llama_model_loader: loaded meta data with 35 key-value pairs", "main: prompt 1"]
    lines = _llamacpp_lines(t)
    out["llamacpp"].write_text("\n".join(noise + lines[:9] + ["main: prompt 2"] + lines[9:]) + "\n")
    np.save(out["counts-npy"], c)
    out["counts-json"].write_text(json.dumps({f"{lay}:{e}": int(c[j, e]) for j, lay in enumerate(t.layers.tolist())
                                              for e in range(E) if c[j, e]}) + "\n")
    out["counts-sglang"].write_text("layer_id,expert_id,count\n" + "".join(
        f"{lay},{e},{int(c[j, e])}\n" for j, lay in enumerate(t.layers.tolist()) for e in range(E) if c[j, e]))
    return out


FILES = {
    "policylang-jsonl": "policylang.jsonl",
    "policylang-parquet": "policylang.parquet",
    "vllm-hook": "vllm_hook.json",
    "llamacpp": "llamacpp.log",
    "counts-npy": "counts.npy",
    "counts-json": "counts_map.json",
    "counts-sglang": "sglang_expert_distribution.csv",
}
PER_TOKEN = ["policylang-jsonl", "policylang-parquet", "vllm-hook", "llamacpp"]


def _fmt(name: str) -> str:
    return "counts" if name.startswith("counts") else name


def assert_same(a: tr.Trace, b: tr.Trace, *, request=True, tags=True):
    np.testing.assert_array_equal(a.expert_ids, b.expert_ids)
    np.testing.assert_array_equal(a.layers, b.layers)
    assert a.num_experts == b.num_experts
    if request:
        np.testing.assert_array_equal(a.request, b.request)
    if tags:
        np.testing.assert_array_equal(a.phase, b.phase)
        np.testing.assert_array_equal(a.domain, b.domain)


# ------------------------------------------------------------------------------------------------
# committed fixtures
# ------------------------------------------------------------------------------------------------
def test_fixtures_are_committed_and_current(tmp_path):
    fresh = write_fixtures(tmp_path)
    for name, fn in FILES.items():
        assert (DATA / fn).is_file(), f"missing fixture {fn} (python -m tests.test_trace_formats)"
        if fresh[name].suffix in (".jsonl", ".json", ".log", ".csv"):  # text: byte for byte
            assert (DATA / fn).read_text() == fresh[name].read_text(), fn


@pytest.mark.parametrize("name", PER_TOKEN)
@pytest.mark.parametrize("detect", [True, False])
def test_per_token_fixture_loads(name, detect):
    t = tr.load(DATA / FILES[name], format=None if detect else _fmt(name), num_experts=E)
    ref = reference()
    if name.startswith("policylang"):
        assert_same(t, ref)  # prompt ids -> request, ph/phase -> phase, domain tag -> domain
        assert "fixture-moe" in t.source
    elif name == "llamacpp":  # T restarts at 0 for the second prompt: a new request
        assert_same(t, ref, request=False, tags=False)
        np.testing.assert_array_equal(t.request, [0, 0, 0, 1, 1])
        assert t.phase is None and t.domain is None
    else:  # hook events carry no request or tags
        assert_same(t, ref, request=False, tags=False)
        assert t.request is None and t.phase is None
    assert not t.approximate


def test_policylang_fixtures_state_e_themselves():
    # the JSONL header and the Parquet metadata written here carry num_experts
    for name in ("policylang-jsonl", "policylang-parquet"):
        assert tr.load(DATA / FILES[name]).num_experts == E
    # other files: the largest id + 1 unless given
    assert tr.load(DATA / FILES["llamacpp"]).num_experts == int(reference().expert_ids.max()) + 1


@pytest.mark.parametrize("name", ["counts-npy", "counts-json", "counts-sglang"])
@pytest.mark.parametrize("detect", [True, False])
def test_counts_fixtures_load_as_approximate(name, detect):
    ref = reference()
    t = tr.load(DATA / FILES[name], format=None if detect else "counts", top_k=2, tokens=3000, seed=1,
                num_experts=E)
    assert t.approximate and t.shape == (3000, 3, 2) and t.num_experts == E
    if name == "counts-npy":  # an [L, E] array has no layer names
        np.testing.assert_array_equal(t.layers, [0, 1, 2])
    else:
        np.testing.assert_array_equal(t.layers, ref.layers)
    c = _counts(ref)
    sampled = _counts(t)
    assert ((sampled > 0) <= (c > 0)).all()  # never an expert the counts never saw
    # marginals: inclusion shares of the sampled tokens vs the file's (sampling noise ~ 1/sqrt(3000))
    np.testing.assert_allclose(sampled / 3000, c / ref.num_tokens, atol=0.06)


# ------------------------------------------------------------------------------------------------
# writers round-trip
# ------------------------------------------------------------------------------------------------
WRITERS = {"policylang-jsonl": tr.write_policylang_jsonl, "policylang-parquet": tr.write_policylang_parquet}


@pytest.mark.parametrize("fmt,suffix", [("policylang-jsonl", ".jsonl"), ("policylang-parquet", ".parquet")])
def test_writers_round_trip(tmp_path, fmt, suffix):
    rng = np.random.default_rng(2)
    T, L, K, En = 40, 4, 3, 16
    ids = np.argsort(rng.random((T, L, En)), -1)[..., :K]
    req = np.repeat([11, 4, 11, 900], 10)  # a request that comes back after another one
    t = tr.Trace(ids, En, layers=[1, 3, 10, 27], request=req,
                 phase=np.where(np.arange(T) % 10 < 3, "prefill", "decode"),
                 domain=np.where(req == 4, "chat", "code"))
    p = WRITERS[fmt](t, tmp_path / f"t{suffix}")
    for f in (None, fmt):
        assert_same(tr.load(p, format=f), t)
    # without request ids or tags: one prompt, no tags; layers as given
    bare = tr.Trace(ids, En, layers=[1, 3, 10, 27])
    p = WRITERS[fmt](bare, tmp_path / f"bare{suffix}")
    back = tr.load(p)
    np.testing.assert_array_equal(back.expert_ids, ids)
    np.testing.assert_array_equal(back.request, np.zeros(T))
    assert back.phase is None and back.domain is None
    # the canonical .npz keeps the tags too
    assert_same(tr.load(t.save(tmp_path / "t.npz")), t)
    np.testing.assert_array_equal(tr.load(tmp_path / "t.npz").domain, t.domain)


def test_policylang_jsonl_fields(tmp_path):
    t = reference()
    p = tr.write_policylang_jsonl(t, tmp_path / "x.jsonl", model_name="m", num_layers=24)
    lines = [json.loads(s) for s in Path(p).read_text().splitlines()]
    assert lines[0] == {"model_name": "m", "num_layers": 24, "num_experts": E, "top_k": 2, "num_entries": 15,
                        "records_full_softmax": False}
    assert lines[1] == {"p": 3, "t": 0, "l": 0, "e": [0, 1], "s": None, "ph": "prefill", "domain": "code"}
    assert [(r["p"], r["t"], r["l"]) for r in lines[-3:]] == [(7, 1, 0), (7, 1, 2), (7, 1, 5)]
    with pytest.raises(ValueError, match="num_layers"):
        tr.write_policylang_jsonl(t, tmp_path / "y.jsonl", num_layers=5)


def test_policylang_parquet_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(tr.write_policylang_parquet(reference(), tmp_path / "x.parquet"))
    assert table.schema.field("layer_idx").type == pa.int32()
    assert table.schema.field("selected_experts").type == pa.list_(pa.int32())
    assert table.column("domain_tag").to_pylist()[:3] == ["code"] * 3


def test_independent_policylang_files_load(tmp_path):
    """Files as another writer would write them: string prompt ids, extra fields, Parquet without metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"model_name": "x", "num_layers": 4, "num_experts": 8, "top_k": 2, "num_entries": 4,
             "records_full_softmax": True}]
    for p, t in (("q1", 0), ("q2", 0)):
        for lay in (1, 3):
            rows.append({"p": p, "t": t, "l": lay, "e": [lay, 7 - lay], "s": [0.6, 0.4], "sm": [0.125] * 8,
                         "ph": "decode", "domain_tag": "law", "lang": "en"})
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    t = tr.load(tmp_path / "a.jsonl")
    assert t.shape == (2, 2, 2) and t.num_experts == 8
    np.testing.assert_array_equal(t.request, [0, 1])  # string prompt ids: codes by first appearance
    assert t.phase.tolist() == ["decode"] * 2 and t.domain.tolist() == ["law"] * 2
    table = pa.table({"prompt_id": pa.array([5, 5, 5, 5], pa.int32()), "token_idx": pa.array([0, 0, 1, 1], pa.int32()),
                      "layer_idx": pa.array([0, 1, 0, 1], pa.int32()),
                      "selected_experts": pa.array([[2], [9], [4], [1]], pa.list_(pa.int32())),
                      "router_scores": pa.array([[1.0]] * 4, pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "b.parquet")
    t = tr.load(tmp_path / "b.parquet")
    assert t.num_experts == 10 and t.request.tolist() == [5, 5] and t.phase is None
    np.testing.assert_array_equal(t.expert_ids[:, :, 0], [[2, 9], [4, 1]])


# ------------------------------------------------------------------------------------------------
# bad files: ValueError naming the file and the line or row
# ------------------------------------------------------------------------------------------------
def _bad_policylang_jsonl(path: Path, kind: str) -> str:
    t = reference()
    tr.write_policylang_jsonl(t, path)
    lines = path.read_text().splitlines()
    rec = json.loads(lines[5])  # line 6
    if kind == "ragged":
        del lines[5]
        want = f"{path}:5"  # token (3, 1)'s first record: line 5, it lacks layer 2
    elif kind == "id":
        rec["e"] = [1, E]
        lines[5] = json.dumps(rec)
        want = f"{path}:6"
    else:
        rec["e"] = [1, 2, 3]
        lines[5] = json.dumps(rec)
        want = f"{path}:6"
    path.write_text("\n".join(lines) + "\n")
    return want


def _bad_policylang_parquet(path: Path, kind: str) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tr.write_policylang_parquet(reference(), path)
    table = pq.read_table(path)
    sel = table.column("selected_experts").to_pylist()
    if kind == "ragged":
        table = table.filter(pa.array(np.arange(table.num_rows) != 4))
        want = f"{path}: row 3"
    else:
        sel[4] = [1, E] if kind == "id" else [1]
        table = table.set_column(table.column_names.index("selected_experts"), "selected_experts",
                                 pa.array(sel, pa.list_(pa.int32())))
        want = f"{path}: row 4"
    pq.write_table(table, path)
    return want


def _bad_vllm(path: Path, kind: str) -> str:
    events = _vllm_events(reference(), [slice(0, 3), slice(3, 5)])
    if kind == "ragged":
        events[4]["indices"] = events[4]["indices"][:1]  # the second pass logs 1 token at layer 2
        want = f"{path}: entry 3 row 1"  # token 4's first row (layer 0) - no row at layer 2
    elif kind == "id":
        events[4]["indices"][1] = [E + 3, 0]
        want = f"{path}: entry 4 row 1"
    else:
        events[4]["indices"][0] = [1, 2, 3]
        want = f"{path}: entry 4 row 0"
    path.write_text(json.dumps(events))
    return want


def _bad_llamacpp(path: Path, kind: str) -> str:
    lines = _llamacpp_lines(reference())
    if kind == "ragged":
        del lines[4]  # token 1, layer 2
        want = f"{path}:4"
    elif kind == "id":
        lines[4] = "EXPERT|L2|T1: [3, 17]"
        want = f"{path}:5"
    else:
        lines[4] = "EXPERT|L2|T1: [3]"
        want = f"{path}:5"
    path.write_text("\n".join(lines) + "\n")
    return want


BAD = {"policylang-jsonl": (_bad_policylang_jsonl, ".jsonl"), "policylang-parquet": (_bad_policylang_parquet, ".parquet"),
       "vllm-hook": (_bad_vllm, ".json"), "llamacpp": (_bad_llamacpp, ".log")}
MESSAGE = {"ragged": "ragged log: layer 2 has 4 tokens but layer 0 has 5", "id": "expert id .* >= num_experts=6",
           "k": "mixed top-K"}


@pytest.mark.parametrize("kind", ["ragged", "id", "k"])
@pytest.mark.parametrize("name", PER_TOKEN)
def test_bad_files_name_file_and_place(tmp_path, name, kind):
    make, suffix = BAD[name]
    path = tmp_path / f"bad{suffix}"
    want = make(path, kind)
    engines = [{}, {"engine": "python"}] if name == "policylang-jsonl" else [{}]  # both JSONL readers
    for fmt in (None, name):
        for engine in engines:
            with pytest.raises(ValueError, match=MESSAGE[kind]) as err:
                tr.load(path, format=fmt, num_experts=E, **engine)
            msg = str(err.value)
            assert want in msg and (want + "0") not in msg and (want + "1") not in msg, msg


def test_policylang_jsonl_fast_reader_is_used_and_agrees(tmp_path, monkeypatch):
    from slimjax.traces import _policylang

    slow = tr.load(DATA / FILES["policylang-jsonl"], engine="python")
    assert_same(slow, reference())

    def refuse(path):
        raise AssertionError("the reference reader was used")

    with monkeypatch.context() as m:
        m.setattr(_policylang, "_read_lines", refuse)
        fast = tr.load(DATA / FILES["policylang-jsonl"])
    assert_same(fast, slow)
    assert fast.source == slow.source
    # string prompt ids and records without a prompt id go to the reference reader, with the same result
    rows = [json.loads(s) for s in (DATA / FILES["policylang-jsonl"]).read_text().splitlines()]
    for r in rows[1:]:
        r["p"] = f"req-{r['p']}"
    (tmp_path / "s.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    t = tr.load(tmp_path / "s.jsonl")
    np.testing.assert_array_equal(t.request, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(t.expert_ids, slow.expert_ids)
    with pytest.raises(ValueError, match="engine"):
        tr.load(tmp_path / "s.jsonl", engine="rust")


def test_bad_file_details(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"model_name": "m", "num_layers": 2, "num_experts": 4, "top_k": 1}\n'
                 '{"p": 0, "t": 0, "l": 0, "e": [1]}\n{"p": 0, "t": 0, "l": 3, "e": [1]}\n')
    with pytest.raises(ValueError, match=rf"{p}:3: layer 3 outside \[0, num_layers=2\)"):
        tr.load(p)
    p.write_text('{"num_experts": 4, "top_k": 2, "model_name": "m"}\n{"p": 0, "t": 0, "l": 0, "e": [1]}\n')
    with pytest.raises(ValueError, match=rf"{p}:2: 1 expert ids, but the header \(line 1\) has 2"):
        tr.load(p)
    p.write_text('{"p": 0, "t": 0, "l": 0, "e": [1]}\n{"p": 0, "t": 0, "l": 0, "e": [2]}\n')
    with pytest.raises(ValueError, match=rf"{p}:2: a second record for prompt 0, token 0, layer 0"):
        tr.load(p)
    p.write_text('{"p": 0, "t": 0, "l": 0, "e": [1]}\n{"p": 0, "l": 1, "e": [2]}\n')
    with pytest.raises(ValueError, match=rf"{p}:2: 't' must be an integer"):
        tr.load(p, format="policylang-jsonl")
    q = tmp_path / "b.log"
    q.write_text("EXPERT|L0|T0: [1, 2]\nEXPERT|L0 T1 [1, 2]\n")
    with pytest.raises(ValueError, match=rf"{q}:2: malformed expert line"):
        tr.load(q)
    q.write_text("EXPERT|L0|T0: [1, 2]\nEXPERT|L0|T1: [1, x]\n")
    with pytest.raises(ValueError, match=rf"{q}:2: expert ids must be integers"):
        tr.load(q)
    c = tmp_path / "c.csv"
    c.write_text("layer_id,expert_id,count\n0,1,5\n0,two,3\n")
    with pytest.raises(ValueError, match=rf"{c}:3: expected three integers"):
        tr.load(c)
    with pytest.raises(ValueError, match="format: must be one of"):
        tr.load(c, format="sglang")
    with pytest.raises(ValueError, match="not a readable Parquet"):
        tr.load(c, format="policylang-parquet")


# ------------------------------------------------------------------------------------------------
# splits by phase and domain
# ------------------------------------------------------------------------------------------------
def test_split_by_phase_and_domain():
    t = tr.load(DATA / FILES["policylang-parquet"])
    pre, dec = tr.split(t, by="phase")
    assert pre.phase.tolist() == ["prefill"] * 3 and dec.phase.tolist() == ["decode"] * 2
    np.testing.assert_array_equal(pre.expert_ids, t.expert_ids[[0, 1, 3]])
    np.testing.assert_array_equal(dec.request, [3, 7])
    a, b = tr.split(t, 0.5, by="domain", seed=None)  # domains in order of first appearance
    assert set(a.domain.tolist()) == {"code"} and set(b.domain.tolist()) == {"math"}
    a, b = tr.split(t, 0.5, by="domain", seed=3)
    assert not set(a.domain.tolist()) & set(b.domain.tolist()) and a.num_tokens + b.num_tokens == 5
    with pytest.raises(ValueError, match="no per-token phase"):
        tr.split(tr.load(DATA / FILES["llamacpp"]), by="phase")
    with pytest.raises(ValueError, match="no decode tokens"):
        tr.split(pre, by="phase")
    with pytest.raises(ValueError, match=">= 2 domains"):
        tr.split(a, by="domain")
    with pytest.raises(ValueError, match="phase: must be strings"):
        tr.Trace(t.expert_ids, E, phase=np.zeros(5, int))


# ------------------------------------------------------------------------------------------------
# placement export per node
# ------------------------------------------------------------------------------------------------
def test_export_placement_round_trips(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.random((3, 4, 8)) < 0.3
    x[1] = False  # a node that caches nothing
    nodes = ["jetson-0", "server,eu", "phone"]  # a comma: quoted in the CSV
    layers = [0, 5, 11, 23]
    pj = slimjax.export_placement(x, tmp_path / "p.json", nodes=nodes, layers=layers)
    doc = json.loads(Path(pj).read_text())
    assert list(doc) == nodes and doc["server,eu"] == {str(v): [] for v in layers}
    back = np.zeros_like(x)
    for n, name in enumerate(nodes):
        for j, lay in enumerate(layers):
            back[n, j, doc[name][str(lay)]] = True
    np.testing.assert_array_equal(back, x)
    pc = slimjax.export_placement(x, tmp_path / "p.txt", format="csv", nodes=nodes, layers=layers)
    with open(pc, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["node", "layer", "expert"] and len(rows) == 1 + int(x.sum())
    back = np.zeros_like(x)
    for node, lay, e in rows[1:]:
        back[nodes.index(node), layers.index(int(lay)), int(e)] = True
    np.testing.assert_array_equal(back, x)
    plain = json.loads(Path(slimjax.export_placement(x, tmp_path / "q.json")).read_text())
    assert list(plain) == ["0", "1", "2"] and list(plain["0"]) == ["0", "1", "2", "3"]
    for bad, match in [({"format": "yaml"}, "format"), ({"nodes": ["a"]}, "nodes: expected 3"),
                       ({"layers": [0, 0, 1, 2]}, "distinct")]:
        with pytest.raises(ValueError, match=match):
            slimjax.export_placement(x, tmp_path / "r.json", **bad)
    with pytest.raises(ValueError, match="format"):
        slimjax.export_placement(x, tmp_path / "r.yaml")
    with pytest.raises(ValueError, match=r"bool \[N, L, E\]"):
        slimjax.export_placement(x[None], tmp_path / "r.json")
    assert not os.path.exists(tmp_path / "r.json")


if __name__ == "__main__":  # write the committed fixtures again
    for name, path in write_fixtures(DATA).items():
        print(f"{name}: {path}")
