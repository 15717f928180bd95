"""Progress bars: families call :func:`track`; the CLI decides whether anything is drawn."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

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
