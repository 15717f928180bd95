"""Progress bars: families call :func:`track`; the CLI decides whether anything is drawn."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def make_progress(**kwargs) -> Progress:
    """The project's standard bar: description, bar, done/total, elapsed, ETA."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), **kwargs)


def track(iterable: Iterable[T], description: str, total: int | None = None,
          progress: Progress | None = None) -> Iterator[T]:
    """Iterate with a bar on ``progress`` (a :class:`rich.progress.Progress`, e.g. ``RunContext.progress``)."""
    if progress is None:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    task = progress.add_task(description, total=total, info="")
    try:
        for item in iterable:
            yield item
            progress.advance(task)
    finally:
        progress.remove_task(task)


def plain_logger(progress: Progress):
    """A ``log(message)`` that prints above the bars, with no rich markup (messages may contain '[...]')."""
    return lambda message: progress.console.print(message, markup=False, highlight=False)


PROGRESS_INTERVAL_ENV = "PHREG_PROGRESS_INTERVAL_S"
DEFAULT_INTERVAL_S = 30.0


def progress_interval_s() -> float:
    """Seconds between two plain progress lines (``PHREG_PROGRESS_INTERVAL_S``, default 30)."""
    raw = os.environ.get(PROGRESS_INTERVAL_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"{PROGRESS_INTERVAL_ENV}={raw!r}: must be a number of seconds >= 0")
    return value


class PlainProgress:
    """Progress as plain log lines: at most one line per task every ``interval_s`` seconds, and one when a
    task ends. For ``torchrun`` / SLURM logs, where redrawn bars are unreadable; only rank 0 gets one.

    Implements the part of :class:`rich.progress.Progress` that :func:`track` and :func:`plain_logger` use
    (``add_task``, ``advance``, ``update``, ``remove_task``, ``console``), so a family cannot tell them apart.
    """

    def __init__(self, console: Console, interval_s: float | None = None, prefix: str = "",
                 clock: Callable[[], float] = time.monotonic):
        self.console = console
        self.interval_s = progress_interval_s() if interval_s is None else interval_s
        self.prefix = prefix
        self._clock = clock
        self._tasks: dict[int, dict] = {}
        self._next_id = 0

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        task, self._next_id = self._next_id, self._next_id + 1
        now = self._clock()
        self._tasks[task] = {"description": description, "total": total, "completed": completed, "start": now,
                             "printed": now, "fields": fields}
        return task

    def advance(self, task: int, advance: float = 1) -> None:
        self._tasks[task]["completed"] += advance
        self._maybe_print(task)

    def update(self, task: int, *, completed: float | None = None, total: float | None = None, **fields) -> None:
        state = self._tasks[task]
        if completed is not None:
            state["completed"] = completed
        if total is not None:
            state["total"] = total
        state["fields"].update(fields)
        self._maybe_print(task)

    def remove_task(self, task: int) -> None:
        self._print(task, final=True)
        del self._tasks[task]

    def _maybe_print(self, task: int) -> None:
        if self._clock() - self._tasks[task]["printed"] >= self.interval_s:
            self._print(task)

    def line(self, task: int, *, final: bool = False) -> str:
        state = self._tasks[task]
        elapsed = self._clock() - state["start"]
        done, total = state["completed"], state["total"]
        text = f"{self.prefix}{state['description']}: {done:g}" + (f"/{total:g}" if total else "")
        if total:
            text += f" ({100 * done / total:.0f}%)"
        rate = done / elapsed if elapsed > 0 else 0.0
        text += f", {elapsed:.0f} s, {rate:.3g}/s"
        if total and rate > 0 and not final:
            text += f", ETA {(total - done) / rate:.0f} s"
        return text + (" (done)" if final else "")

    def _print(self, task: int, *, final: bool = False) -> None:
        self.console.print(self.line(task, final=final), markup=False, highlight=False)
        self._tasks[task]["printed"] = self._clock()
