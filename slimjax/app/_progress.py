"""What the app prints while it works: one owner of the console and of the progress display.

On a terminal, a rich progress bar (instances done / total, rate, elapsed, ETA) that redraws in
place; otherwise (a log file, a pipe, a SLURM job) a plain line at most every ``interval`` seconds.
Each message is printed once: lines also go to the job's log file through the ``slimjax`` logger,
whose console handler (``conf/hydra/job_logging/slimjax.yaml``) shows warnings only.
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["Reporter", "make_console"]

log = logging.getLogger("slimjax")


def make_console():
    """A rich console; 140 columns wide when stdout is not a terminal (logs, pipes)."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 140)


def _rate(r: float) -> str:
    return f"{r:,.0f}" if r >= 100 else f"{r:.3g}"


def _duration(s: float) -> str:
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


class Reporter:
    """Console lines and one progress display per run (see the module docstring).

    Args:
      console: a rich console (:func:`make_console`).
      quiet: print nothing (other processes of a multi-process run).
      interval: seconds between two progress lines when the output is not a terminal.
    """

    def __init__(self, console=None, *, quiet: bool = False, interval: float = 10.0):
        self.console = console or make_console()
        self.quiet = quiet
        self.interval = interval
        self._bar = None
        self._task = None
        self._total = 0
        self._done = 0.0
        self._t0 = 0.0
        self._last = 0.0
        self._label = ""

    @property
    def terminal(self) -> bool:
        return bool(self.console.is_terminal)

    def line(self, message: str, style: str | None = None) -> None:
        """Print ``message`` (and write it to the job log)."""
        log.info("%s", message)
        if not self.quiet:
            self.console.print(message, style=style, markup=False, highlight=False, soft_wrap=True)

    # -- progress ---------------------------------------------------------------------------------
    def start(self, total: int, label: str, done: float = 0.0) -> None:
        """Begin a progress display over ``total`` instances (``done`` of them finished before)."""
        self._total, self._done, self._label = int(total), float(done), label
        self._t0 = self._last = time.perf_counter()
        self._start_done = float(done)
        if self.quiet:
            return
        if self.terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=True,
            )
            self._task = self._bar.add_task(label, total=self._total, completed=int(done), rate="")
            self._bar.start()

    def rate(self) -> float:
        """Instances per second since :meth:`start` (finished-before instances not counted)."""
        dt = time.perf_counter() - self._t0
        return (self._done - self._start_done) / dt if dt > 0 else 0.0

    def update(self, done: float, description: str | None = None) -> None:
        """Set the number of instances finished (fractions allowed: a chunk half solved)."""
        self._done = min(float(done), self._total)
        if self.quiet:
            return
        r = self.rate()
        if self._bar is not None:
            self._bar.update(self._task, completed=self._done, rate=f"{_rate(r)} inst/s" if r else "",
                             **({"description": description} if description else {}))
            return
        now = time.perf_counter()
        if now - self._last >= self.interval and self._done < self._total:  # the end has its own line
            self._last = now
            eta = _duration((self._total - self._done) / r) if r > 0 else "?"
            self.line(f"{self._label}: {self._done / max(self._total, 1):.0%} ({int(self._done):,}/{self._total:,} "
                      f"instances), {_rate(r)} instances/s, elapsed {_duration(now - self._t0)}, ETA {eta}")

    def stop(self) -> float:
        """End the display; returns the seconds since :meth:`start`."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        return time.perf_counter() - self._t0
