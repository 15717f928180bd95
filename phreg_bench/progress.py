"""Progress bars: families call :func:`track`; the CLI decides whether anything is drawn."""

from __future__ import annotations

import time
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


PLAIN_INTERVAL_S = 30.0  # seconds between plain progress lines when the console is not a terminal


def track(iterable: Iterable[T], description: str, total: int | None = None,
          progress: Progress | None = None) -> Iterator[T]:
    """Iterate with a bar on ``progress`` (a :class:`rich.progress.Progress`, e.g. ``RunContext.progress``).

    When the console is not a terminal (a log file, CI), no bar is drawn: a plain line with the count, rate
    and ETA is printed every :data:`PLAIN_INTERVAL_S` seconds instead, and a last one when such a loop ends.
    """
    if progress is None:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    task = progress.add_task(description, total=total, info="")
    plain = not progress.console.is_terminal
    start = last = time.monotonic()
    done, printed = 0, False
    try:
        for item in iterable:
            yield item
            progress.advance(task)
            done += 1
            now = time.monotonic()
            if plain and now - last >= PLAIN_INTERVAL_S:
                last, printed = now, True
                progress.console.print(plain_line(description, done, total, now - start), markup=False,
                                       highlight=False)
        if printed:
            progress.console.print(plain_line(description, done, total, time.monotonic() - start), markup=False,
                                   highlight=False)
    finally:
        progress.remove_task(task)


def plain_line(description: str, done: int, total: int | None, elapsed_s: float) -> str:
    """``"<description>: 120/500 (24%), 1.9 it/s, elapsed 1m03s, ETA 3m20s"`` (no markup)."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    text = f"{description}: {done}" + (f"/{total} ({100 * done / total:.0f}%)" if total else "")
    text += f", {rate:.2f} it/s, elapsed {_duration(elapsed_s)}"
    if total and rate > 0 and done < total:
        text += f", ETA {_duration((total - done) / rate)}"
    return text


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def plain_logger(progress: Progress):
    """A ``log(message)`` that prints above the bars, with no rich markup (messages may contain '[...]')."""
    return lambda message: progress.console.print(message, markup=False, highlight=False)
