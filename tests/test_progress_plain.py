"""Progress without a terminal: plain lines (count, rate, ETA) instead of a bar nobody sees."""

from __future__ import annotations

import io

from rich.console import Console

from phreg_bench import progress as progress_module
from phreg_bench.progress import make_progress, plain_line, track


def _run(monkeypatch, *, terminal: bool, interval: float) -> str:
    monkeypatch.setattr(progress_module, "PLAIN_INTERVAL_S", interval)
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=terminal, width=200)
    with make_progress(console=console, transient=True) as progress:
        assert list(track(range(5), "linseg/voc21: train head", progress=progress)) == list(range(5))
    return stream.getvalue()


def test_plain_lines_when_the_console_is_not_a_terminal(monkeypatch):
    out = _run(monkeypatch, terminal=False, interval=0.0)
    lines = [line for line in out.splitlines() if line.startswith("linseg/voc21: train head")]
    assert lines[0].startswith("linseg/voc21: train head: 1/5 (20%)") and "it/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("linseg/voc21: train head: 5/5 (100%)") and "ETA" not in lines[-1]


def test_no_plain_lines_for_short_loops_or_on_a_terminal(monkeypatch):
    assert "train head: " not in _run(monkeypatch, terminal=False, interval=3600.0)
    assert "train head: 1/5" not in _run(monkeypatch, terminal=True, interval=0.0)


def test_plain_line_format():
    assert plain_line("x", 120, 500, 63.0) == "x: 120/500 (24%), 1.90 it/s, elapsed 1m03s, ETA 3m20s"
    assert plain_line("x", 7, None, 7200.0) == "x: 7, 0.00 it/s, elapsed 2h00m00s"
