"""Experiment loggers for the app (``logger=none|csv|wandb``).

Every logger has ``log_run(cfg, rows, summary, figures)`` (``rows``: one result row per solver,
for the config columns), ``finish(exit_code)`` and ``location`` (where its records are, or None);
the app calls ``finish`` in a ``finally`` block, so a failed run is closed (and marked failed) too.

- ``none``: nothing beyond the run directory's own files.
- ``csv``: appends one row per solver (the summary plus the swept config fields) to a CSV file.
- ``wandb``: one run per grid point, ``group`` = the sweep directory's name, the resolved config,
  per-solver metrics in the run summary, a ``wandb.Table`` of the summary and the figures as
  images; ``mode`` offline by default. Offline runs write ``<run dir>/wandb/offline-run-*``
  (upload later with ``wandb sync``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

__all__ = ["CSVLogger", "NullLogger", "WandbLogger", "make_logger"]

log = logging.getLogger("slimjax")


def _flat_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """``{"<solver>/<column>": value}`` for the numeric summary columns."""
    out = {}
    for rec in summary.to_dict("records"):
        s = rec["solver"]
        for k, v in rec.items():
            if k != "solver" and isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{s}/{k}"] = float(v)
    return out


class NullLogger:
    """``logger=none``."""

    kind = "none"
    location: str | None = None

    def log_run(self, cfg: DictConfig, rows: pd.DataFrame, summary: pd.DataFrame, figures: dict[str, Path]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class CSVLogger(NullLogger):
    """``logger=csv``: one row per solver appended to ``file`` (relative to the run directory)."""

    kind = "csv"

    def __init__(self, out_dir: Path, file: str = "metrics.csv"):
        p = Path(os.path.expanduser(str(file)))
        self.out_dir = Path(out_dir)
        self.path = p if p.is_absolute() else Path(out_dir) / p
        self.location = str(self.path)

    def log_run(self, cfg, rows, summary, figures):
        first = rows.drop_duplicates("solver").set_index("solver")
        cfg_cols = [
            c
            for c in rows.columns
            if c in ("name", "seed", "batch_size", "model", "network", "routing", "U", "N", "L", "E", "M", "K")
            or c.startswith(("network.", "routing.", "model."))
        ]
        df = summary.copy()
        for c in cfg_cols:
            df[c] = df["solver"].map(first[c])
        df.insert(0, "run_dir", str(self.out_dir))
        header = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(self.path, mode="a", header=header, index=False)


class WandbLogger(NullLogger):
    """``logger=wandb``: one wandb run per call of the app (per grid point)."""

    kind = "wandb"

    def __init__(self, cfg: DictConfig, out_dir: Path, group: str | None, options: dict):
        import wandb

        self.wandb = wandb
        self.options = options
        mode = options.get("mode") or "offline"
        save_dir = Path(os.path.expanduser(str(options.get("dir") or out_dir)))
        save_dir.mkdir(parents=True, exist_ok=True)
        config = OmegaConf.to_container(cfg, resolve=True)
        config.pop("hydra", None)
        name = None
        try:
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
            name = ",".join(hc.overrides.task) or hc.job.name
        except Exception:
            pass
        self.run = wandb.init(
            project=options.get("project") or "slimjax",
            entity=options.get("entity"),
            group=options.get("group") or group or Path(out_dir).name,
            job_type=options.get("job_type"),
            tags=list(options.get("tags") or []),
            notes=options.get("notes"),
            name=name,
            config=config,
            dir=str(save_dir),
            mode=mode,
            reinit="finish_previous",
            settings=wandb.Settings(silent=bool(options.get("quiet", True))),
        )
        # where to find the run: its page when online, its files (for `wandb sync`) when offline
        url = getattr(self.run, "url", None) if mode == "online" else None
        self.location = url or str(getattr(self.run, "sync_dir", None) or Path(self.run.dir).parent)

    def log_run(self, cfg, rows, summary, figures):
        wb = self.wandb
        metrics = _flat_metrics(summary)
        self.run.log(metrics)
        for k, v in metrics.items():
            self.run.summary[k] = v
        tbl = summary.copy()
        for c in tbl.columns:
            if tbl[c].dtype == object:
                tbl[c] = tbl[c].astype(str)
        self.run.log({"summary_table": wb.Table(dataframe=tbl)})
        if self.options.get("log_figures", True):
            imgs = {
                f"figures/{k}": wb.Image(str(p))
                for k, p in figures.items()
                if Path(p).suffix.lower() in (".png", ".jpg", ".jpeg")
            }
            if imgs:
                self.run.log(imgs)

    def log_curves(self, curves: pd.DataFrame) -> None:
        """Per-window curves (``experiment=dynamic``): columns ``solver``, ``window`` and metrics;
        one wandb step per window, keys ``<solver>/<metric>``."""
        for t, g in curves.groupby("window", sort=True):
            row = {f"{r['solver']}/{k}": float(v) for r in g.to_dict("records") for k, v in r.items()
                   if k not in ("solver", "window") and v == v}
            self.run.log(row, step=int(t))

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def make_logger(cfg: DictConfig, out_dir: Path, group: str | None = None):
    """The logger selected by ``cfg.logger.kind`` (``none``, ``csv`` or ``wandb``)."""
    node = cfg.get("logger")
    options: dict[str, Any] = OmegaConf.to_container(node, resolve=True) if node is not None else {"kind": "none"}
    kind = options.get("kind", "none")
    if kind in (None, "none"):
        return NullLogger()
    if kind == "csv":
        return CSVLogger(out_dir, options.get("file") or "metrics.csv")
    if kind == "wandb":
        return WandbLogger(cfg, out_dir, group, options)
    raise ValueError(f"logger.kind: must be none, csv or wandb, got {kind!r}")
