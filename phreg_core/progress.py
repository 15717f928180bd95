"""Progress for logs: plain lines at a fixed interval where a live progress bar cannot be drawn.

Outside a terminal (a pipe, a log file, a cluster job) rich draws nothing until the end, so long work looks
hung. :class:`PlainProgress` has the part of :class:`rich.progress.Progress`'s interface the project uses
(``add_task``, ``update``, ``advance``, ``remove_task``, ``start``/``stop``, a context manager), and prints
one line per task every ``interval_s`` seconds and when it finishes::

    distil: 120/2000 (6.0%), loss 0.4321, 12.3 img/s, elapsed 1m02s, ETA 16m11s

The interval is 30 s, or ``$PHREG_PROGRESS_SECONDS``.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = ["DEFAULT_INTERVAL_S", "PlainProgress", "format_duration", "is_terminal"]

DEFAULT_INTERVAL_S = 30.0


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (a live bar can be drawn there)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def format_duration(seconds: float) -> str:
    """``75.2`` -> ``1m15s``; ``3725`` -> ``1h02m05s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float
    fields: dict[str, Any]
    started: float
    printed: float
    done_printed: bool = False


class PlainProgress:
    """Plain progress lines on ``stream`` (default: standard error) every ``interval_s`` seconds.

    ``formats`` maps a field name to a format for its value (``{"speed": "{} img/s"}``); fields without one
    print as ``name value``; empty fields are left out. ``clock`` is injectable for tests.
    """

    def __init__(self, stream: TextIO | None = None, interval_s: float | None = None,
                 formats: dict[str, str] | None = None, console: Any = None,
                 clock: Callable[[], float] = time.monotonic, prefix: str = ""):
        self.stream = stream
        self.prefix = prefix  # e.g. "[rank 0/8] " under torchrun
        if interval_s is None:
            interval_s = float(os.environ.get("PHREG_PROGRESS_SECONDS", DEFAULT_INTERVAL_S))
        self.interval_s = interval_s
        self.formats = dict(formats or {})
        self.console = console  # where callers print their own messages (rich Progress has one too)
        self.clock = clock
        self._tasks: dict[int, _Task] = {}
        self._ids = itertools.count()

    # -- the rich.progress.Progress interface the project uses ---------------------------------------
    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        """Nothing to draw until the first interval has passed."""

    def stop(self) -> None:
        for task in self._tasks.values():
            self._finish(task)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        task_id = next(self._ids)
        now = self.clock()
        self._tasks[task_id] = _Task(description, total, completed, dict(fields), now, now)
        return task_id

    def update(self, task_id: int, *, completed: float | None = None, advance: float | None = None,
               total: float | None = None, description: str | None = None, **fields: Any) -> None:
        task = self._tasks[task_id]
        if total is not None:
            task.total = total
        if description is not None:
            task.description = description
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        task.fields.update(fields)
        now = self.clock()
        if task.total is not None and task.completed >= task.total:
            self._finish(task)
        elif now - task.printed >= self.interval_s:
            self._print(task, now)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def remove_task(self, task_id: int) -> None:
        task = self._tasks.pop(task_id)
        self._finish(task)

    # -- lines ---------------------------------------------------------------------------------------
    def line(self, task: _Task, now: float) -> str:
        """``description: done/total (pct), fields..., elapsed, ETA``."""
        elapsed = now - task.started
        done = f"{task.completed:g}"
        parts = []
        if task.total:
            parts.append(f"{done}/{task.total:g} ({100 * task.completed / task.total:.1f}%)")
        else:
            parts.append(done)
        for name, value in task.fields.items():
            if value in ("", None, "-"):
                continue
            parts.append(self.formats[name].format(value) if name in self.formats else f"{name} {value}")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if task.total and 0 < task.completed < task.total and elapsed > 0:
            parts.append(f"ETA {format_duration(elapsed / task.completed * (task.total - task.completed))}")
        return f"{self.prefix}{task.description}: {', '.join(parts)}"

    def _print(self, task: _Task, now: float) -> None:
        task.printed = now
        stream = self.stream or sys.stderr
        stream.write(self.line(task, now) + "\n")
        stream.flush()

    def _finish(self, task: _Task) -> None:
        if not task.done_printed and task.completed > 0:
            task.done_printed = True
            self._print(task, self.clock())
