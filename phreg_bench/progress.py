"""Progress bars: families call :func:`track`; the CLI decides whether anything is drawn.

In a terminal, rich bars; anywhere else (a pipe, a log file, a cluster job) plain lines at a fixed
interval from :class:`phreg_core.progress.PlainProgress` (iteration, fields such as the loss, elapsed, ETA).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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

from phreg_core.progress import PlainProgress

T = TypeVar("T")


def make_progress(console: Console | None = None, **kwargs) -> Progress | PlainProgress:
    """The project's standard bar (description, bar, done/total, elapsed, ETA) on ``console``.

    When ``console`` does not write to a terminal: a :class:`PlainProgress` writing to the same stream (unless
    ``disable=True``: then nothing is shown anywhere).
    """
    if console is not None and not console.is_terminal and not kwargs.get("disable"):
        return PlainProgress(stream=console.file, console=console)
    if console is not None:
        kwargs["console"] = console
    return Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[info]}", markup=False), **kwargs)


def track(iterable: Iterable[T], description: str, total: int | None = None,
          progress: Progress | PlainProgress | None = None) -> Iterator[T]:
    """Iterate with a bar on ``progress`` (a rich ``Progress`` or a ``PlainProgress``, e.g. ``RunContext.progress``)."""
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


def plain_logger(progress: Progress | PlainProgress):
    """A ``log(message)`` that prints above the bars, with no rich markup (messages may contain '[...]')."""
    return lambda message: progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
