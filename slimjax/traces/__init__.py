"""Real routing traces: the canonical format, loaders, patterns, splits, statistics, recording.

A :class:`Trace` holds the experts each token was routed to at each logged MoE layer,
``expert_ids`` int [T, L, K], with optional per-token ``task``/``user``/``request`` ids and the
original layer indices; its canonical file is an ``.npz`` (:meth:`Trace.save`, :func:`load_npz`).

* :func:`load` reads any supported file, chosen by content: a canonical ``.npz``, per-token JSONL
  logs (:func:`load_jsonl`, joined across files by row order after the warm-up rows), or
  aggregate per-layer counts (:func:`load_counts`: tokens sampled by Plackett–Luce from the
  marginals, marked ``approximate``). :data:`KNOWN_SOURCES` fills in what a file does not state.
* :func:`patterns` turns tokens into the weighted patterns of an instance; :func:`split` makes
  train/test parts by token or by request; :func:`statistics` gives the routing statistics used
  to calibrate the generators.
* :func:`record` records a Hugging Face transformers MoE model's routing (needs the ``traces``
  extra: torch, transformers).

Replaying tokens through a placement is :func:`slimjax.replay` / :func:`slimjax.replay_stats`,
which take a :class:`Trace` as the tokens.
"""

from slimjax.traces._counts import load_counts, sample_from_counts
from slimjax.traces._jsonl import load_jsonl
from slimjax.traces._load import load
from slimjax.traces._patterns import patterns
from slimjax.traces._record import find_routers, record, tiny_model
from slimjax.traces._sources import KNOWN_SOURCES
from slimjax.traces._split import split
from slimjax.traces._statistics import statistics
from slimjax.traces._trace import Trace, load_npz

__all__ = [
    "KNOWN_SOURCES",
    "Trace",
    "find_routers",
    "load",
    "load_counts",
    "load_jsonl",
    "load_npz",
    "patterns",
    "record",
    "sample_from_counts",
    "split",
    "statistics",
    "tiny_model",
]
