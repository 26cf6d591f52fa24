"""The experiment app behind the ``slimjax`` and ``slimjax-collect`` commands.

``run(cfg)`` takes a composed Hydra config (``conf/config.yaml``), generates a batch of instances
(or reads ``instance.path``), solves it with every method in ``cfg.solvers``
(:func:`slimjax.solve_batch`), evaluates them and writes to the run directory: ``results.parquet``
(one row per instance x solver), ``placements.npz``, ``instances.npz``, ``summary.csv``, figures,
``config.yaml`` and the completion marker ``.complete.json`` (written last). A batch larger than
memory is streamed chunk by chunk into a Parquet dataset (``results/part-*.parquet``). With
``resume=true`` a directory whose marker matches the config's hash is skipped and an interrupted
streamed run continues with its next chunk. :func:`collect` merges the runs of a multirun.

Modules (private; everything public is re-exported here):

=====================  ==========================================================================
``_config``            plain config values, output directory, precision, solver objects, pre-flight
``_hash``              the completion hash (what changes results) and the code fingerprint
``_batch``             the instances of a run, row range by row range (generated, trace, file)
``_solve``             every solver on a batch or rows of one, one PRNG key per instance
``_evaluate``          result rows: config columns, J, gaps to the best / optimum / lower bound
``_summary``           the summary table (from a DataFrame or a dataset), printed and as Markdown
``_results``           the run directory's files, both layouts, read back
``_collect``           merging a multirun, the Hydra callback
``_run``               ``run(cfg)``: in one piece or in chunks, resumable
``_progress``          the console and the progress display
``_loggers``           ``logger=none|csv|wandb``
``_cli``               the console commands
=====================  ==========================================================================
"""

from slimjax.app._batch import BatchSource as BatchSource
from slimjax.app._batch import make_batch as make_batch
from slimjax.app._cli import CONF_DIR as CONF_DIR
from slimjax.app._cli import collect_main as collect_main
from slimjax.app._cli import main as main
from slimjax.app._cli import solver_help as solver_help
from slimjax.app._cli import sweep_slug as sweep_slug
from slimjax.app._collect import MERGED as MERGED
from slimjax.app._collect import CollectCallback as CollectCallback
from slimjax.app._collect import collect as collect
from slimjax.app._collect import find_runs as find_runs
from slimjax.app._collect import varying_columns as varying_columns
from slimjax.app._config import EXECUTION_KEYS as EXECUTION_KEYS
from slimjax.app._config import Plan as Plan
from slimjax.app._config import enable_compilation_cache as enable_compilation_cache
from slimjax.app._config import execution_options as execution_options
from slimjax.app._config import make_solver as make_solver
from slimjax.app._config import output_dir_for as output_dir_for
from slimjax.app._config import preflight as preflight
from slimjax.app._config import set_precision as set_precision
from slimjax.app._config import solver_config as solver_config
from slimjax.app._config import write_solver_configs as write_solver_configs
from slimjax.app._evaluate import config_columns as config_columns
from slimjax.app._evaluate import evaluate as evaluate
from slimjax.app._evaluate import reference as reference
from slimjax.app._hash import MARKER as MARKER
from slimjax.app._hash import code_fingerprint as code_fingerprint
from slimjax.app._hash import config_hash as config_hash
from slimjax.app._hash import hashed_fields as hashed_fields
from slimjax.app._hash import is_complete as is_complete
from slimjax.app._hash import source_hash as source_hash
from slimjax.app._loggers import CSVLogger as CSVLogger
from slimjax.app._loggers import NullLogger as NullLogger
from slimjax.app._loggers import WandbLogger as WandbLogger
from slimjax.app._loggers import make_logger as make_logger
from slimjax.app._results import INSTANCES as INSTANCES
from slimjax.app._results import PLACEMENTS as PLACEMENTS
from slimjax.app._results import RESULTS as RESULTS
from slimjax.app._results import RESULTS_DIR as RESULTS_DIR
from slimjax.app._results import read_placements as read_placements
from slimjax.app._results import read_results as read_results
from slimjax.app._results import results_dataset as results_dataset
from slimjax.app._run import SUMMARY as SUMMARY
from slimjax.app._run import run as run
from slimjax.app._solve import row_keys as row_keys
from slimjax.app._solve import solve_rows as solve_rows
from slimjax.app._summary import markdown_table as markdown_table
from slimjax.app._summary import print_summary as print_summary
from slimjax.app._summary import summarize as summarize
from slimjax.app._summary import summarize_dataset as summarize_dataset
from slimjax.app._summary import summary_caption as summary_caption

__all__ = [
    "CONF_DIR", "EXECUTION_KEYS", "INSTANCES", "MARKER", "MERGED", "PLACEMENTS", "RESULTS", "RESULTS_DIR",
    "SUMMARY", "BatchSource", "CSVLogger", "CollectCallback", "NullLogger", "Plan", "WandbLogger",
    "code_fingerprint", "collect", "collect_main", "config_columns", "config_hash", "enable_compilation_cache",
    "evaluate", "execution_options", "find_runs", "hashed_fields", "is_complete", "main", "make_batch",
    "make_logger", "make_solver", "markdown_table", "output_dir_for", "preflight", "print_summary",
    "read_placements", "read_results", "reference", "results_dataset", "row_keys", "run", "set_precision",
    "solve_rows", "solver_config", "solver_help", "source_hash", "summarize", "summarize_dataset",
    "summary_caption", "sweep_slug", "varying_columns", "write_solver_configs",
]
