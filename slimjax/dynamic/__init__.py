"""Dynamic caching: re-placing experts over time as routing drifts, with the cost of moving them.

A *timeline* is T windows of routing over one fixed network (:class:`Timeline`: an
:class:`~slimjax.Instance` with a leading window axis, plus optional per-token routing). A
*policy* chooses the placement x_t of window t from the windows before it; making a copy a node
did not hold moves its size into the node (dropping is free), bounded by a budget per node and
window and/or priced by a penalty. :func:`run` runs one policy over a batch of timelines
(vmapped over timelines, a ``lax.scan`` over windows) and evaluates every x_t on window t's true
routing.

    >>> import jax
    >>> from slimjax import dynamic
    >>> tl = dynamic.drift(jax.random.key(0), 8, 12)                       # 8 drifting timelines
    >>> inc = dynamic.run(tl, dynamic.Incremental(budget=0.1 * tl.windows.capacity[:, 0]))
    >>> static = dynamic.run(tl, "static")                                  # a name: sugar for Static()
    >>> (static.total - inc.total).mean() > 0                               # doctest: +SKIP

Build timelines with :func:`timeline` (from windows), :func:`timeline_from_trace` (a real trace
cut into windows) or :func:`drift` (a synthetic drifting workload). Policies are objects with
their own options — placement policies :class:`Static`, :class:`Resolve`, :class:`Incremental`,
:class:`LFU`, :class:`LRU`, :class:`Hindsight`, and per-token device caches :class:`TokenLRU`,
:class:`TokenLFU`, :class:`Belady` (the offline optimum of the hit rate); their names
(:data:`POLICIES`) are sugar (:func:`as_policy`). :func:`sweep` runs several policies and budgets
and returns flat result rows (for experiment runners and dashboards).
"""

from slimjax.dynamic._drift import DRIFT_MODES as DRIFT_MODES
from slimjax.dynamic._drift import DRIFT_ROUTING as DRIFT_ROUTING
from slimjax.dynamic._drift import drift as drift
from slimjax.dynamic._exact import brute_force_window as brute_force_window
from slimjax.dynamic._myopic import WindowConfig as WindowConfig
from slimjax.dynamic._myopic import window_solve as window_solve
from slimjax.dynamic._objects import FORECASTS as FORECASTS
from slimjax.dynamic._objects import LFU as LFU
from slimjax.dynamic._objects import LRU as LRU
from slimjax.dynamic._objects import POLICIES as POLICIES
from slimjax.dynamic._objects import Belady as Belady
from slimjax.dynamic._objects import Hindsight as Hindsight
from slimjax.dynamic._objects import Incremental as Incremental
from slimjax.dynamic._objects import Policy as Policy
from slimjax.dynamic._objects import Resolve as Resolve
from slimjax.dynamic._objects import Static as Static
from slimjax.dynamic._objects import Status as Status
from slimjax.dynamic._objects import TokenLFU as TokenLFU
from slimjax.dynamic._objects import TokenLRU as TokenLRU
from slimjax.dynamic._objects import as_policy as as_policy
from slimjax.dynamic._run import DynamicResult as DynamicResult
from slimjax.dynamic._run import deploy as deploy
from slimjax.dynamic._run import run as run
from slimjax.dynamic._run import sample_tokens as sample_tokens
from slimjax.dynamic._run import window_config as window_config
from slimjax.dynamic._sweep import result_rows as result_rows
from slimjax.dynamic._sweep import sweep as sweep
from slimjax.dynamic._timeline import ALIGNS as ALIGNS
from slimjax.dynamic._timeline import Timeline as Timeline
from slimjax.dynamic._timeline import stack_timelines as stack_timelines
from slimjax.dynamic._timeline import timeline as timeline
from slimjax.dynamic._timeline import timeline_from_trace as timeline_from_trace
from slimjax.dynamic._timeline import window_count as window_count

__all__ = [
    "ALIGNS",
    "DRIFT_MODES",
    "DRIFT_ROUTING",
    "FORECASTS",
    "POLICIES",
    "Belady",
    "DynamicResult",
    "Hindsight",
    "Incremental",
    "LFU",
    "LRU",
    "Policy",
    "Resolve",
    "Static",
    "Status",
    "Timeline",
    "TokenLFU",
    "TokenLRU",
    "WindowConfig",
    "as_policy",
    "brute_force_window",
    "deploy",
    "drift",
    "result_rows",
    "run",
    "sample_tokens",
    "stack_timelines",
    "sweep",
    "timeline",
    "timeline_from_trace",
    "window_config",
    "window_count",
    "window_solve",
]
