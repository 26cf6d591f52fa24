"""Building blocks shared by the solvers (and by custom solvers): the storage grid, pattern
merging, node orders, priority fill, exact gain kernels, the layer oracles, the (max,+) capacity
DP and the storage projection. Every function works on one instance (vmap it over a batch)."""

from slimjax.ops._fill import priority_fill as priority_fill
from slimjax.ops._gains import add_gain_layer as add_gain_layer
from slimjax.ops._gains import drop_loss_layer as drop_loss_layer
from slimjax.ops._gains import expert_frequency as expert_frequency
from slimjax.ops._gains import pattern_top as pattern_top
from slimjax.ops._gains import scatter_e as scatter_e
from slimjax.ops._gains import second_best as second_best
from slimjax.ops._grid import Grid as Grid
from slimjax.ops._grid import bucket_units as bucket_units
from slimjax.ops._grid import capacity_grid as capacity_grid
from slimjax.ops._maxconv import BACKENDS as BACKENDS
from slimjax.ops._maxconv import DPResult as DPResult
from slimjax.ops._maxconv import capacity_dp as capacity_dp
from slimjax.ops._maxconv import fptas_levels as fptas_levels
from slimjax.ops._maxconv import maxplus_conv as maxplus_conv
from slimjax.ops._maxconv import upper_envelope as upper_envelope
from slimjax.ops._oracle import EXACT_MAX_E as EXACT_MAX_E
from slimjax.ops._oracle import _masks_by_size as masks_by_size
from slimjax.ops._oracle import exact_oracle as exact_oracle
from slimjax.ops._oracle import greedy_oracle as greedy_oracle
from slimjax.ops._oracle import pattern_prep as pattern_prep
from slimjax.ops._order import ORDERS as ORDERS
from slimjax.ops._order import node_orders as node_orders
from slimjax.ops._order import node_speed as node_speed
from slimjax.ops._patterns import _merge_numpy as merge_patterns_host
from slimjax.ops._patterns import merge_codes_fn as merge_codes_fn
from slimjax.ops._patterns import merge_patterns as merge_patterns
from slimjax.ops._patterns import merged_size as merged_size
from slimjax.ops._patterns import with_patterns as with_patterns
from slimjax.ops._projection import project_storage as project_storage

__all__ = [
    "BACKENDS",
    "DPResult",
    "EXACT_MAX_E",
    "Grid",
    "ORDERS",
    "add_gain_layer",
    "bucket_units",
    "capacity_dp",
    "capacity_grid",
    "drop_loss_layer",
    "exact_oracle",
    "expert_frequency",
    "fptas_levels",
    "greedy_oracle",
    "masks_by_size",
    "maxplus_conv",
    "merge_codes_fn",
    "merge_patterns",
    "merge_patterns_host",
    "merged_size",
    "node_orders",
    "node_speed",
    "pattern_prep",
    "pattern_top",
    "priority_fill",
    "project_storage",
    "scatter_e",
    "second_best",
    "upper_envelope",
    "with_patterns",
]
