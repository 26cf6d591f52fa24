"""Real routing traces: canonical format, loaders (incl. malformed files, both JSONL readers),
patterns, splits, instances built from traces and their replay, the recorder's missing extra."""

from __future__ import annotations

import collections
import json
import os
import pickle
import sys

import numpy as np
import pytest

import slimjax
from slimjax import traces as tr
from slimjax.generate import instance_from_trace
from tests.reference import latency_ref


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def real_like_ids(seed: int, T: int, L: int, E: int, K: int, tasks: int = 6, requests: int = 0):
    """Tokens of a synthetic router with task clusters (co-activation from geometry), NumPy."""
    rng = np.random.default_rng(seed)
    r = 8
    centres = rng.normal(size=(tasks, r))
    W = rng.normal(size=(L, r, E)) / np.sqrt(r)
    b = 0.7 * rng.normal(size=(L, E))
    task = rng.integers(0, tasks, size=T)
    if requests:  # consecutive tokens of one request share its task
        req = np.sort(rng.integers(0, requests, size=T))
        task = rng.integers(0, tasks, size=requests)[req]
    z = centres[task] + 0.4 * rng.normal(size=(T, r))
    logits = np.einsum("tr,lre->tle", z, W) + b[None] + 0.3 * rng.gumbel(size=(T, L, E))
    ids = np.argsort(-logits, axis=-1)[..., :K]
    return ids, task, (req if requests else None)


def write_jsonl(path, rows, meta=None):
    with open(path, "w") as f:
        if meta is not None:
            f.write(json.dumps({"type": "meta", **meta}) + "\n")
        f.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def route(layer, ids, i=0, req="r0"):
    return {"type": "route", "req_id": req, "token_idx": i, "layer": layer, "topk_ids": [int(v) for v in ids],
            "topk_weights": [0.1] * len(ids)}


def empty_placement(inst):
    U, N, L, E, M, K = inst.shape
    return np.zeros((N, L, E), bool)


# ------------------------------------------------------------------------------------------------
# Trace and the canonical .npz
# ------------------------------------------------------------------------------------------------
def test_canonical_round_trip(tmp_path):
    ids, task, req = real_like_ids(0, 50, 3, 8, 2, requests=5)
    t = tr.Trace(ids, 8, layers=[1, 5, 9], task=task, user=np.arange(50) % 2, request=req, source="synthetic")
    p = t.save(tmp_path / "t")
    assert p.endswith(".npz") and os.path.exists(p)
    back = tr.load(p)
    np.testing.assert_array_equal(back.expert_ids, t.expert_ids)
    for f in ("layers", "task", "user", "request"):
        np.testing.assert_array_equal(getattr(back, f), getattr(t, f))
    assert back.num_experts == 8 and back.source == "synthetic" and back.approximate is False
    assert back.expert_ids.dtype == np.int32
    # detection is by content, not by the file name
    other = tmp_path / "no_extension"
    other.write_bytes(open(p, "rb").read())
    assert tr.load(other).shape == (50, 3, 2)
    # approximate flag and missing optional fields survive too
    t2 = tr.Trace(ids[:, :1], 8, approximate=True)
    b2 = tr.Trace.load(t2.save(tmp_path / "a.npz"))
    assert b2.approximate and b2.task is None and b2.request is None and b2.layers.tolist() == [0]


def test_trace_validation():
    ids = np.zeros((4, 2, 2), int)
    with pytest.raises(ValueError, match="num_experts"):
        tr.Trace(ids + 8, 8)
    with pytest.raises(ValueError, match="expert_ids"):
        tr.Trace(ids - 1, 8)
    with pytest.raises(ValueError, match=r"expert_ids: expected shape"):
        tr.Trace(ids[0], 8)
    with pytest.raises(ValueError, match="layers"):
        tr.Trace(ids, 8, layers=[0, 1, 2])
    with pytest.raises(ValueError, match="task"):
        tr.Trace(ids, 8, task=np.zeros(3, int))
    with pytest.raises(ValueError, match="K=2 exceeds"):
        tr.Trace(ids, 1)


def test_npz_malformed(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, something=np.zeros(3))
    with pytest.raises(ValueError, match="expert_ids"):
        tr.load(p)
    np.savez(p, expert_ids=np.full((3, 1, 2), 9), num_experts=np.int64(8))
    with pytest.raises(ValueError, match=r"bad\.npz.*num_experts=8"):
        tr.load(p)
    (tmp_path / "trunc.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="trunc.npz"):
        tr.load(tmp_path / "trunc.npz")


# ------------------------------------------------------------------------------------------------
# JSONL loader
# ------------------------------------------------------------------------------------------------
def _logger_files(tmp_path, warm=100, T=40, layers=(0, 5), E=16, K=4, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.stack([rng.permuted(np.tile(np.arange(E), (T, 1)), axis=1)[:, :K] for _ in layers], 1)  # [T, L, K]
    files = []
    for j, lay in enumerate(layers):
        dummy = [route(lay, [3, 1, 2, 0][:K][::-1] if i % 2 else [3, 1, 2, 0][:K], i) for i in range(warm)]
        real = [route(lay, truth[t, j], t % 7, req=f"r{t // 10}") for t in range(T)]
        f = tmp_path / f"moe_layer{lay}.jsonl"
        write_jsonl(f, dummy + real, meta={"model_id": "test/model", "layers_logged": [lay], "top_k": K})
        files.append(str(f))
    return files, truth


def test_jsonl_join_layers_and_auto_warmup(tmp_path):
    files, truth = _logger_files(tmp_path)
    t = tr.load(tmp_path, num_experts=16)  # a folder: one file per layer, joined by row order
    assert t.shape == truth.shape and t.layers.tolist() == [0, 5] and t.num_experts == 16
    np.testing.assert_array_equal(t.expert_ids, truth)  # 100 dummy rows (same set, any order) detected
    assert t.request is not None and len(np.unique(t.request)) == 4
    # explicit warm-up and a list of files give the same; a wrong warm-up shifts the tokens
    t2 = tr.load(files[::-1], warmup=100, num_experts=16)
    np.testing.assert_array_equal(t2.expert_ids, truth)
    t3 = tr.load(files, warmup=0, num_experts=16)
    assert t3.num_tokens == 140
    # E defaults to max id + 1 when nothing says it
    assert tr.load(tmp_path).num_experts == int(truth.max()) + 1


def test_jsonl_single_file_many_layers(tmp_path):
    f = tmp_path / "mixed.jsonl"
    rows = []
    for t in range(5):
        rows += [{"layer": 3, "topk_ids": [t, t + 1]}, {"layer": 1, "topk_ids": [t + 2, t]}]
    write_jsonl(f, rows)
    t = tr.load(f, num_experts=10)
    assert t.layers.tolist() == [1, 3] and t.shape == (5, 2, 2)
    np.testing.assert_array_equal(t.expert_ids[:, 1], [[i, i + 1] for i in range(5)])
    sub = tr.load(f, num_experts=10, layers=[3])
    assert sub.shape == (5, 1, 2)
    with pytest.raises(ValueError, match="layer 7 is not in the logs"):
        tr.load(f, layers=[7])


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", r"bad\.jsonl:3: malformed JSON"),
        ('{"type": "route", "layer": 0}', r"bad\.jsonl:3: route row without expert ids"),
        ('{"type": "route", "layer": 0, "topk_ids": [1, "x"]}', r"bad\.jsonl:3: 'topk_ids' must be"),
        ('{"type": "route", "layer": 0, "topk_ids": [1, -2]}', r"bad\.jsonl:3: negative expert id"),
        ('{"type": "route", "layer": "zero", "topk_ids": [1, 2]}', r"bad\.jsonl:3: 'layer' must be an integer"),
        ('{"type": "route", "layer": 0, "topk_ids": [1, 2, 3]}', r"bad\.jsonl:3: expected 2 expert ids"),
        ('{"type": "route", "layer": 0, "topk_ids": [1, 99]}', r"bad\.jsonl:3: expert id 99 >= num_experts=8"),
        ("[1, 2]", r"bad\.jsonl:3: expected a JSON object"),
    ],
)
@pytest.mark.parametrize("engine", ["auto", "python"])
def test_jsonl_malformed(tmp_path, bad_line, message, engine):
    f = tmp_path / "bad.jsonl"
    write_jsonl(f, [route(0, [1, 2]), bad_line, route(0, [2, 3])], meta={"num_experts": 8})
    with pytest.raises(ValueError, match=message):
        tr.load(f, engine=engine)


def test_jsonl_fast_reader_is_used_and_agrees(tmp_path, monkeypatch):
    """pyarrow reads clean logs (the line-by-line reader is not called); both give the same trace."""
    pytest.importorskip("pyarrow")
    from slimjax.traces import _jsonl

    files, truth = _logger_files(tmp_path)
    (tmp_path / "other").mkdir()
    extra = tmp_path / "other" / "blank_lines.jsonl"  # blank lines, CRLF, unknown fields, other record types
    extra.write_bytes(b'\n{"type": "meta", "model_id": "m", "num_experts": 9}\r\n\n'
                      b'{"layer": 2, "topk_ids": [1, 2], "req_id": "a", "more": {"x": [1.5]}}\n'
                      b'   \n{"type": "timing", "ms": 3}\n{"layer": 2, "topk_ids": [8, 0], "req_id": "b"}')
    slow = [tr.load(tmp_path, num_experts=16, engine="python"), tr.load(extra, engine="python")]
    calls = []
    monkeypatch.setattr(_jsonl, "_read_lines", lambda path: calls.append(path))
    fast = [tr.load(tmp_path, num_experts=16), tr.load(extra)]
    assert calls == []  # nothing fell back
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a.expert_ids, b.expert_ids)
        np.testing.assert_array_equal(a.request, b.request)
        assert a.layers.tolist() == b.layers.tolist() and a.num_experts == b.num_experts and a.source == b.source
    np.testing.assert_array_equal(fast[0].expert_ids, truth)
    assert fast[1].num_experts == 9 and fast[1].request.tolist() == [0, 1] and fast[1].layers.tolist() == [2]
    # the line numbers of the fast reader (blank lines skipped) point at the right rows
    rows = _jsonl._read_arrow(str(extra))
    assert rows.line.tolist() == [4, 7]
    # a file with a bad row is handed to the line-by-line reader, which names the line
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [route(0, [1, 2]), route(0, [3, -1])])
    assert _jsonl._read_arrow(str(bad)) is None


def test_jsonl_not_utf8(tmp_path):
    f = tmp_path / "latin.jsonl"
    f.write_bytes(json.dumps(route(0, [1, 2])).encode() + b"\n" + b'{"layer": 0, "topk_ids": [1, 2], "req_id": "\xe9"}\n')
    for engine in ("auto", "python"):
        with pytest.raises(ValueError, match=r"latin\.jsonl:2: not UTF-8"):
            tr.load_jsonl(f, engine=engine)
    with pytest.raises(ValueError, match="engine"):
        tr.load_jsonl(f, engine="pyarrow")


def test_jsonl_layers_of_different_length(tmp_path):
    files, _ = _logger_files(tmp_path, warm=0, T=10)
    with open(files[1], "a") as f:
        f.write(json.dumps(route(5, [1, 2, 3, 4])) + "\n")
    with pytest.raises(ValueError, match="layer 5 has 11 rows after warm-up but layer 0 has 10"):
        tr.load(files, warmup=0)
    with pytest.raises(ValueError, match="all dropped"):
        tr.load(files, warmup=50)


def test_unknown_and_empty_files(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="unknown trace format"):
        tr.load(tmp_path / "x.txt")
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty file"):
        tr.load(tmp_path / "e.jsonl")
    (tmp_path / "m.jsonl").write_text(json.dumps({"type": "meta"}) + "\n")
    with pytest.raises(ValueError, match="no route rows"):
        tr.load(tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match="no such file"):
        tr.load(tmp_path / "missing.npz")


# ------------------------------------------------------------------------------------------------
# Aggregate counts -> approximate traces (Plackett–Luce)
# ------------------------------------------------------------------------------------------------
def test_counts_pickle_restricted_and_marginals(tmp_path):
    rng = np.random.default_rng(1)
    E, K = 16, 4
    pop = rng.dirichlet(np.full(E, 2.0), size=2)
    pop = np.minimum(pop, 0.8 / K)
    pop /= pop.sum(-1, keepdims=True)
    tokens = 100_000
    counters = [collections.Counter({np.int64(e): np.int64(round(K * tokens * p[e])) for e in range(E)}) for p in pop]
    f = tmp_path / "c.pkl"
    f.write_bytes(pickle.dumps(counters))  # numpy int64 scalars inside Counters, like the OLMoE files
    t = tr.load(f, num_experts=E, top_k=K, tokens=20_000, seed=3)
    assert t.approximate and t.shape == (20_000, 2, K) and t.layers.tolist() == [0, 1]
    assert all(len(set(row)) == K for row in t.expert_ids[:50, 0].tolist())  # sampled without replacement
    freq = np.stack([np.bincount(t.expert_ids[:, l].ravel(), minlength=E) for l in range(2)]) / (20_000 * K)
    target = np.array([[counters[l][e] for e in range(E)] for l in range(2)], float)
    target /= target.sum(-1, keepdims=True)
    np.testing.assert_allclose(freq, target, atol=0.006)  # calibrated PL reproduces the marginals
    # deterministic for a seed
    np.testing.assert_array_equal(tr.load(f, num_experts=E, top_k=K, tokens=100, seed=3).expert_ids,
                                  tr.load(f, num_experts=E, top_k=K, tokens=100, seed=3).expert_ids)


def test_counts_pickle_refuses_other_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    f = tmp_path / "evil.pkl"
    f.write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(ValueError, match=r"evil\.pkl: not a counts pickle.*not allowed"):
        tr.load(f)
    assert not (tmp_path / "pwned").exists()
    g = tmp_path / "trunc.pkl"
    g.write_bytes(pickle.dumps([collections.Counter({1: 2})])[:-5])
    with pytest.raises(ValueError, match=r"trunc\.pkl: not a counts pickle"):
        tr.load(g)
    h = tmp_path / "neg.pkl"
    h.write_bytes(pickle.dumps([collections.Counter({1: -2})]))
    with pytest.raises(ValueError, match="non-negative"):
        tr.load(h)
    i = tmp_path / "range.pkl"
    i.write_bytes(pickle.dumps([collections.Counter({1: 5, 9: 3})]))
    with pytest.raises(ValueError, match="expert id 9 >= num_experts=4"):
        tr.load(i, num_experts=4)


def test_counts_pickle_crosslayer_pairs(tmp_path):
    pairs = [collections.Counter({(0, 1): 30, (2, 1): 10, (3, 0): 60}), collections.Counter({(1, 2): 40, (0, 3): 60})]
    f = tmp_path / "x.pkl"
    f.write_bytes(pickle.dumps(pairs))
    t = tr.load(f, num_experts=4, top_k=1, tokens=5000)
    assert t.approximate and t.shape == (5000, 3, 1)
    freq = np.stack([np.bincount(t.expert_ids[:, l, 0], minlength=4) / 5000 for l in range(3)])
    np.testing.assert_allclose(freq, [[0.3, 0, 0.1, 0.6], [0.6, 0.4, 0, 0], [0, 0, 0.4, 0.6]], atol=0.03)


def test_counts_json(tmp_path):
    doc = {"num_experts": 6, "layers": [1, 3], "expert_usage_by_layer": {"3": {"0": 10, "5": 30}, "1": {"2": 5}}}
    f = tmp_path / "s.json"
    f.write_text(json.dumps(doc))
    t = tr.load(f, tokens=300)
    assert t.approximate and t.num_experts == 6 and t.top_k == 1 and t.layers.tolist() == [1, 3]
    assert set(np.unique(t.expert_ids[:, 0])) == {2} and set(np.unique(t.expert_ids[:, 1])) <= {0, 5}
    (tmp_path / "b.json").write_text('{"expert_usage_by_layer": {"1": {"0": 10}},\n "x": }')
    with pytest.raises(ValueError, match=r"b\.json:2: malformed"):
        tr.load(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps({"expert_usage_by_layer": {"1": {"a": 3}}}))
    with pytest.raises(ValueError, match=r"c\.json: expert_usage_by_layer must map"):
        tr.load(tmp_path / "c.json")
    (tmp_path / "d.json").write_text(json.dumps({"num_experts": 2, "expert_usage_by_layer": {"1": {"0": 3, "4": 1}}}))
    with pytest.raises(ValueError, match="expert id 4 >= num_experts=2"):
        tr.load(tmp_path / "d.json")
    with pytest.raises(ValueError, match="exceeds 1/K"):  # one expert in > 1/K of the slots
        tr.load(f, top_k=2)


# ------------------------------------------------------------------------------------------------
# The real traces of the shared folder (skipped when absent)
# ------------------------------------------------------------------------------------------------
def test_real_traces_load(shared_dir):
    raw = os.path.join(shared_dir, "traces", "raw")
    qwen = tr.load(os.path.join(raw, "weiran0129__vLLM-MoE-Logger"))
    assert qwen.shape == (4357, 3, 4) and qwen.num_experts == 60 and qwen.layers.tolist() == [0, 12, 23]
    assert not qwen.approximate
    # the SOURCE notes' warm-up (8448 rows) is what the content-based detection finds as well
    np.testing.assert_array_equal(tr.load(os.path.join(raw, "weiran0129__vLLM-MoE-Logger"), warmup="detect").expert_ids,
                                  qwen.expert_ids)
    slow = tr.load(os.path.join(raw, "weiran0129__vLLM-MoE-Logger"), engine="python")  # the reference reader
    np.testing.assert_array_equal(slow.expert_ids, qwen.expert_ids)
    np.testing.assert_array_equal(slow.request, qwen.request)
    olmoe = tr.load(os.path.join(raw, "KaxitPandya__cerebras-assesment2", "moe_routes.jsonl"))
    assert olmoe.shape == (4471, 1, 8) and olmoe.num_experts == 64 and not olmoe.approximate
    assert tr.load(os.path.join(raw, "KaxitPandya__cerebras-assesment2", "moe_routes.jsonl"),
                   warmup="detect").num_tokens == 4471
    for rel, shape, E in [
        ("allenai__OLMoE/olmoe/expert_counts/c4.pkl", (512, 3, 8), 64),
        ("allenai__OLMoE/olmoe/expert_counts_crosslayer/c4.pkl", (512, 3, 8), 64),
        ("allenai__OLMoE/mistral/expert_counts/c4.pkl", (512, 3, 2), 8),
        ("cyanmishra92__specMoE/expert_statistics_3d.json", (512, 6, 1), 128),
    ]:
        t = tr.load(os.path.join(raw, rel), tokens=512)
        assert t.approximate and t.shape == shape and t.num_experts == E, rel
    assert tr.load(os.path.join(raw, "cyanmishra92__specMoE", "expert_statistics_3d.json"),
                   tokens=8).layers.tolist() == [1, 3, 5, 7, 9, 11]


# ------------------------------------------------------------------------------------------------
# patterns, split
# ------------------------------------------------------------------------------------------------
def test_patterns_merge_and_weights():
    ids, _, _ = real_like_ids(2, 300, 3, 8, 2)
    ids[:5, 0] = ids[:5, 0, ::-1]  # order within a set does not matter
    t = tr.Trace(ids, 8, user=np.arange(300) % 3)
    pats, w = tr.patterns(t)
    assert pats.dtype == np.int32 and pats.shape[0] == 3 and w.shape == pats.shape[:2]
    np.testing.assert_allclose(w.sum(-1), 1.0)
    for l in range(3):
        want = collections.Counter(tuple(sorted(r)) for r in ids[:, l].tolist())
        got = {tuple(p): wt for p, wt in zip(pats[l].tolist(), w[l]) if wt > 0}
        assert got.keys() == want.keys()
        for k, c in want.items():
            assert got[k] == pytest.approx(c / 300)
        assert (w[l] > 0).sum() == len(want)  # padding has weight 0
    raw_p, raw_w = tr.patterns(t, merge=False)
    assert raw_p.shape == (3, 300, 2) and np.allclose(raw_w, 1 / 300)
    up, uw = tr.patterns(t, user=1)
    assert uw[0].sum() == pytest.approx(1.0)
    assert collections.Counter(tuple(sorted(r)) for r in ids[1::3, 0].tolist()).keys() == \
        {tuple(p) for p, wt in zip(up[0].tolist(), uw[0]) if wt > 0}
    sp, sw = tr.patterns(t, tokens=np.arange(10))
    assert sw[0].sum() == pytest.approx(1.0) and (sw[0] > 0).sum() <= 10
    with pytest.raises(ValueError, match="no tokens"):
        tr.patterns(t, tokens=np.zeros(300, bool))
    with pytest.raises(ValueError, match="no per-token user"):
        tr.patterns(tr.Trace(ids, 8), user=0)


def test_split_by_token_and_request():
    ids, task, req = real_like_ids(3, 200, 2, 8, 2, requests=12)
    t = tr.Trace(ids, 8, task=task, request=req)
    a, b = tr.split(t, 0.5, by="token", seed=0)
    assert a.num_tokens == 100 and b.num_tokens == 100
    both = np.concatenate([a.expert_ids, b.expert_ids])
    assert sorted(map(tuple, both.reshape(200, -1).tolist())) == sorted(map(tuple, ids.reshape(200, -1).tolist()))
    a2, _ = tr.split(t, 0.5, by="token", seed=0)
    np.testing.assert_array_equal(a.expert_ids, a2.expert_ids)  # deterministic
    first, _ = tr.split(t, 0.25, by="token", seed=None)
    np.testing.assert_array_equal(first.expert_ids, ids[:50])  # seed=None keeps the order
    ra, rb = tr.split(t, 0.5, by="request", seed=1)
    assert not set(ra.request.tolist()) & set(rb.request.tolist())
    assert ra.num_tokens + rb.num_tokens == 200 and ra.task is not None
    with pytest.raises(ValueError, match="no per-token request"):
        tr.split(tr.Trace(ids, 8), 0.5, by="request")
    with pytest.raises(ValueError, match=">= 2 requests"):
        tr.split(tr.Trace(ids, 8, request=np.zeros(200, int)), 0.5, by="request")
    with pytest.raises(ValueError, match="fraction"):
        tr.split(t, 1.0)
    with pytest.raises(ValueError, match="by:"):
        tr.split(t, 0.5, by="layer")


# ------------------------------------------------------------------------------------------------
# instance_from_trace, latency vs reference, replay
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("L,E,K,model", [(32, 8, 2, "mixtral_8x7b"), (6, 64, 6, "deepseek_v2_lite")])
def test_instance_from_unseen_canonical_trace(tmp_path, L, E, K, model):
    ids, _, _ = real_like_ids(4, 120, L, E, K)
    path = tr.Trace(ids, E, layers=np.arange(L) * 2).save(tmp_path / "unseen.npz")
    t = tr.load(path)
    inst = instance_from_trace(t, model=model, network={"servers": 3, "storage_fraction": 0.4}, key=7)
    U, N, L2, E2, M, K2 = inst.shape
    assert (U, N, L2, E2, K2) == (1, 4, L, E, K)
    rng = np.random.default_rng(0)
    for p in (0.0, 0.3, 0.7):
        x = rng.random((N, L, E)) < p
        J = float(slimjax.objective(inst, x))
        assert J == pytest.approx(latency_ref(inst, x), rel=2e-5)
        # replay of the same tokens (a Trace; 50 tokens per step, padded) has J as its mean
        st = slimjax.replay_stats(inst, x, t, chunk=50)
        assert st["mean"] == pytest.approx(J, rel=2e-5) and st["tokens"] == 120
        ref_tokens = np.asarray(slimjax.replay(inst, x, t.expert_ids))
        np.testing.assert_allclose(np.asarray(slimjax.replay(inst, x, t, chunk=50)), ref_tokens, rtol=1e-6)
        for q in (50, 95, 99):
            assert st[f"p{q}"] == pytest.approx(np.percentile(ref_tokens, q), rel=1e-6)
    # unmerged patterns give the same J
    inst_raw = instance_from_trace(t, model=model, network={"servers": 3, "storage_fraction": 0.4}, key=7, merge=False)
    assert inst_raw.shape[4] == 120
    x = rng.random((N, L, E)) < 0.5
    assert float(slimjax.objective(inst_raw, x)) == pytest.approx(float(slimjax.objective(inst, x)), rel=2e-5)


def test_instance_from_trace_multi_user_and_errors():
    ids, _, _ = real_like_ids(5, 90, 2, 8, 2)
    user = np.repeat([0, 1, 1], 30)
    t = tr.Trace(ids, 8, user=user)
    inst = instance_from_trace(t, model="mixtral_8x7b", network={"users": 2, "servers": 2}, key=1)
    assert inst.shape[:2] == (2, 4)
    np.testing.assert_allclose(np.asarray(inst.traffic), [1 / 3, 2 / 3], rtol=1e-6)
    x = np.random.default_rng(1).random((4, 2, 8)) < 0.5
    J = float(slimjax.objective(inst, x))
    assert J == pytest.approx(latency_ref(inst, x), rel=2e-5)
    # J = traffic-weighted replay means of each user's tokens
    means = [slimjax.replay_stats(inst, x, t.select(user == u), user=u)["mean"] for u in (0, 1)]
    assert J == pytest.approx(means[0] / 3 + 2 * means[1] / 3, rel=2e-5)
    with pytest.raises(ValueError, match="no per-token user ids"):
        instance_from_trace(tr.Trace(ids, 8), model="mixtral_8x7b", network={"users": 2})
    with pytest.raises(ValueError, match="no preset has E=7"):
        instance_from_trace(tr.Trace(ids % 7, 7))
    assert instance_from_trace(t).shape[3] == 8  # preset found from E and K


def test_batch_of_trace_instances_replays_like_each():
    ids, _, _ = real_like_ids(6, 70, 2, 8, 2)
    t = tr.Trace(ids, 8)
    insts = [instance_from_trace(t, model="mixtral_8x7b", key=k, network={"servers": 2}) for k in range(3)]
    batch = slimjax.stack(insts)  # the same trace in every instance: equal M, so they stack
    xs = np.random.default_rng(2).random((3, 3, 2, 8)) < 0.5
    st = slimjax.replay_stats(batch, xs, t, include_base=True)
    for i in range(3):
        one = slimjax.replay_stats(insts[i], xs[i], t, include_base=True)
        assert st["mean"][i] == pytest.approx(one["mean"], rel=1e-6)
        assert st["p95"][i] == pytest.approx(one["p95"], rel=1e-6)
        assert one["mean"] == pytest.approx(float(slimjax.objective(insts[i], xs[i]) + insts[i].base[0]), rel=2e-5)
    with pytest.raises(ValueError, match="expert_ids: expected shape"):
        slimjax.replay(insts[0], xs[0], ids[:, :1])


def test_recorder_without_torch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ImportError, match=r"'traces' extra.*slimjax\[traces\]"):
        tr.tiny_model("mixtral")
    with pytest.raises(ImportError, match="'traces' extra"):
        tr.record(object(), [[1, 2]])


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------
def test_statistics_tell_structure_from_popularity():
    rng = np.random.default_rng(0)
    uniform = np.stack([rng.permuted(np.tile(np.arange(16), (3000, 1)), axis=1)[:, :2] for _ in range(2)], 1)
    s_u = tr.statistics(tr.Trace(uniform, 16))
    assert s_u["freq_cv"] < 0.1 and s_u["entropy"] > 0.99 and 0.85 < s_u["pair_lift"] < 1.1
    ids, _, _ = real_like_ids(0, 3000, 2, 16, 2, tasks=4)
    s_c = tr.statistics(tr.Trace(ids, 16))
    assert s_c["pair_lift"] > 1.15 and s_c["distinct_share"] < s_u["distinct_share"]
    assert np.isnan(tr.statistics(tr.Trace(ids[..., :1], 16))["pair_lift"])


# ------------------------------------------------------------------------------------------------
# held-out quality on real-like traces (needs the solvers)
# ------------------------------------------------------------------------------------------------
def _held_out(L, E, K, T, model, options):
    ids, _, _ = real_like_ids(11, T, L, E, K)
    path_free = tr.Trace(ids, E)
    train, test = tr.split(path_free, 0.5, by="token", seed=0)
    net = {"servers": 3, "storage_fraction": 0.3}
    batch = slimjax.stack([instance_from_trace(train, model=model, network=net, key=k) for k in range(2)])
    res = {}
    for method, opts in (("successive", options), ("popularity", {})):
        sol = slimjax.solve_batch(batch, solver=method, **opts)
        res[method] = slimjax.replay_stats(batch, np.asarray(sol.placement), test)["mean"]  # [2] held-out means
    assert np.all(res["successive"] < res["popularity"]), res


@pytest.mark.parametrize("L,E,K,T,model", [(32, 8, 2, 600, "mixtral_8x7b"), (26, 64, 6, 300, "deepseek_v2_lite")])
def test_successive_beats_popularity_on_held_out_tokens(L, E, K, T, model):
    """``"successive"`` with its defaults (``Successive()``: one fastest-first pass, oracle ``auto`` =
    exact for E = 8 and greedy for E = 64, dense DP, no revisit, restarts or polish), placed on a
    random half of the tokens, beats ``popularity`` on the other half on both instances."""
    _held_out(L, E, K, T, model, {})
