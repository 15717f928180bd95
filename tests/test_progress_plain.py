"""Progress without a terminal: plain lines (count, ETA) from the one implementation, phreg_core.progress."""

from __future__ import annotations

import io

from rich.console import Console

from phreg_bench.progress import make_progress, track


def _run(monkeypatch, *, terminal: bool, interval: float) -> str:
    monkeypatch.setenv("PHREG_PROGRESS_SECONDS", str(interval))
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=terminal, width=200)
    with make_progress(console=console, transient=True) as progress:
        assert list(track(range(5), "linseg/voc21: train head", progress=progress)) == list(range(5))
    return stream.getvalue()


def test_plain_lines_when_the_console_is_not_a_terminal(monkeypatch):
    out = _run(monkeypatch, terminal=False, interval=0.0)
    lines = [line for line in out.splitlines() if line.startswith("linseg/voc21: train head")]
    assert lines[0].startswith("linseg/voc21: train head: 1/5 (20.0%)") and "ETA" in lines[0]
    assert lines[-1].startswith("linseg/voc21: train head: 5/5 (100.0%)") and "ETA" not in lines[-1]


def test_one_closing_line_for_short_loops_and_none_on_a_terminal(monkeypatch):
    lines = [line for line in _run(monkeypatch, terminal=False, interval=3600.0).splitlines() if "train head" in line]
    assert len(lines) == 1 and lines[0].startswith("linseg/voc21: train head: 5/5")
    assert "train head: 1/5" not in _run(monkeypatch, terminal=True, interval=0.0)


def test_disabled_progress_prints_nothing_outside_a_terminal(monkeypatch):
    monkeypatch.setenv("PHREG_PROGRESS_SECONDS", "0")
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=False, width=200)
    with make_progress(console=console, transient=True, disable=True) as progress:
        assert list(track(range(3), "ttr find", progress=progress)) == [0, 1, 2]
    assert "ttr find" not in stream.getvalue()
