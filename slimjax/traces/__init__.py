"""Real routing traces: the canonical format, loaders, patterns, splits, statistics, recording.

A :class:`Trace` holds the experts each token was routed to at each logged MoE layer,
``expert_ids`` int [T, L, K], with optional per-token ``task``/``user``/``request`` ids and the
original layer indices; its canonical file is an ``.npz`` (:meth:`Trace.save`, :func:`load_npz`).

* :func:`load` reads any supported file, chosen by content (or ``format=``, one of
  :data:`FORMATS`): a canonical ``.npz``, per-token JSONL logs (:func:`load_jsonl`, joined
  across files by row order after the warm-up rows), moe-policylang JSONL and Parquet traces
  (:func:`load_policylang_jsonl`, :func:`load_policylang_parquet`), vLLM forward-hook events
  (:func:`load_vllm_events`), llama.cpp expert logs (:func:`load_llamacpp`), or aggregate
  per-layer counts (:func:`load_counts`: tokens sampled by Plackett–Luce from the marginals,
  marked ``approximate``). :data:`KNOWN_SOURCES` fills in what a file does not state.
* :func:`write_policylang_jsonl` and :func:`write_policylang_parquet` write a trace for
  moe-policylang (:meth:`Trace.save` writes the canonical ``.npz``).
* :func:`patterns` turns tokens into the weighted patterns of an instance; :func:`split` makes
  train/test parts by token, request, domain or phase; :func:`statistics` gives the routing
  statistics used to calibrate the generators.
* :func:`record` records a Hugging Face transformers MoE model's routing (needs the ``traces``
  extra: torch, transformers).

Replaying tokens through a placement is :func:`slimjax.replay` / :func:`slimjax.replay_stats`,
which take a :class:`Trace` as the tokens.
"""

from slimjax.traces._counts import load_counts, sample_from_counts
from slimjax.traces._events import load_llamacpp, load_vllm_events
from slimjax.traces._jsonl import load_jsonl
from slimjax.traces._load import FORMATS, load
from slimjax.traces._patterns import patterns
from slimjax.traces._policylang import (
    load_policylang_jsonl,
    load_policylang_parquet,
    write_policylang_jsonl,
    write_policylang_parquet,
)
from slimjax.traces._record import find_routers, record, tiny_model
from slimjax.traces._sources import KNOWN_SOURCES
from slimjax.traces._split import split
from slimjax.traces._statistics import statistics
from slimjax.traces._trace import Trace, load_npz

__all__ = [
    "FORMATS",
    "KNOWN_SOURCES",
    "Trace",
    "find_routers",
    "load",
    "load_counts",
    "load_jsonl",
    "load_llamacpp",
    "load_npz",
    "load_policylang_jsonl",
    "load_policylang_parquet",
    "load_vllm_events",
    "patterns",
    "record",
    "sample_from_counts",
    "split",
    "statistics",
    "tiny_model",
    "write_policylang_jsonl",
    "write_policylang_parquet",
]
