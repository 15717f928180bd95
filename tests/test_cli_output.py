"""Output a person and a log file can read: results on stdout, progress on stderr, nothing wrapped, cut or
parsed as markup outside a terminal, plain progress lines at a fixed interval."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_core_cli_distill import image_folder
from test_core_fixtures import one_thread  # noqa: F401

from phreg_bench.cli import PhregConsole, add_row, main, make_table, print_table
from phreg_bench.progress import make_progress, track
from phreg_core.progress import PlainProgress

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--protocol-override", "image_size=32", "--protocol-override", "num_train=4",
         "--protocol-override", "num_val=2"]


def cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``phreg-bench ARGS`` in a subprocess whose stdout and stderr are pipes (not a terminal)."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    environment.pop("COLUMNS", None)
    return subprocess.run([sys.executable, "-m", "phreg_bench", *args], capture_output=True, text=True,
                          env=environment, cwd=cwd, timeout=600)


def test_run_writes_results_to_stdout_and_progress_to_stderr_unwrapped(tmp_path):
    results = tmp_path / ("a-results-folder-with-a-long-name-" + "x" * 60) / "run[clip]"
    done = cli("run", "-b", "tiny-vit", "-t", "synthetic", "--results-dir", str(results), *SMALL)
    assert done.returncode == 0, done.stderr
    written = next(results.rglob("*__*.json"))
    out_lines = done.stdout.splitlines()
    assert any(str(written) in line for line in out_lines)  # the full path, on one line
    assert f"results in {results}: 1 done, 0 skipped, 0 failed" in out_lines
    assert "tasks: synthetic/segmentation" in done.stderr and "tasks:" not in done.stdout
    assert max(len(line) for line in out_lines) > 120  # nothing was wrapped at 80 columns


def test_results_show_tells_twin_from_base_in_a_pipe(tmp_path):
    for backbone in ("planted-vit", "planted-vit-twin"):
        assert main(["run", "-b", backbone, "-t", "synthetic", "--results-dir", str(tmp_path), *SMALL]) == 0
    done = cli("results", "show", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "synthetic/segmentation" in line]
    assert len(rows) == 2 and any(" planted-vit " in row for row in rows) and any("planted-vit-twin" in row
                                                                                 for row in rows)


def test_ls_in_a_pipe_keeps_every_name_whole():
    from phreg_bench.registries import TASKS

    done = cli("ls", "tasks")
    assert done.returncode == 0 and done.stderr == ""
    first_column = [line.split("│")[1].strip() for line in done.stdout.splitlines() if line.startswith("│")]
    assert sorted(first_column) == sorted(entry.name for entry in TASKS)


ROWS = [("synthetic/segmentation", "planted-vit-twin", "raw"), ("synthetic/segmentation", "planted-vit", "[/x]")]


@pytest.mark.parametrize("width", [40, 80, None])
def test_tables_fit_or_fold_and_never_cut_a_name(width):
    buffer = io.StringIO()
    console = PhregConsole(file=buffer, width=width)
    table = make_table("run[clip]", ("task", "backbone", "method", "protocol", "kind", "main", "value"))
    for task, backbone, method in ROWS:
        add_row(table, task, backbone, method, "default", "measured", "mIoU", "61.2")
    print_table(table, console)
    text = buffer.getvalue()
    assert "…" not in text and "run[clip]" in text
    for task, backbone, method in ROWS:  # each name whole, on one line
        assert any(backbone in line and (width is not None or task in line) for line in text.splitlines())
        assert task in text and method in text
    if width is not None:
        assert max(len(line) for line in text.splitlines()) <= width


def test_plain_progress_prints_at_a_fixed_interval_with_loss_speed_and_eta():
    now = [0.0]
    stream = io.StringIO()
    progress = PlainProgress(stream=stream, interval_s=10, formats={"speed": "{} img/s"}, clock=lambda: now[0])
    task = progress.add_task("distil", total=100, loss="-", speed="-")
    for step in range(1, 101):
        now[0] = step * 1.0
        progress.update(task, completed=step, loss=f"{1 / step:.4f}", speed="8.0")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10  # every 10 s, the last one at completion
    assert lines[0] == "distil: 10/100 (10.0%), loss 0.1000, 8.0 img/s, elapsed 10s, ETA 1m30s"
    assert lines[-1].startswith("distil: 100/100 (100.0%)") and "ETA" not in lines[-1]


def test_make_progress_outside_a_terminal_gives_plain_lines_for_track(monkeypatch):
    monkeypatch.setenv("PHREG_PROGRESS_SECONDS", "0")
    stream = io.StringIO()
    progress = make_progress(console=PhregConsole(file=stream))
    assert isinstance(progress, PlainProgress)
    with progress:
        assert list(track(range(3), "train head", progress=progress)) == [0, 1, 2]
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("train head: 1/3 (33.3%)") and lines[-1].startswith("train head: 3/3 (100.0%)")


def test_distill_in_a_log_prints_progress_lines_and_the_adapter_on_stdout(tmp_path):
    data = image_folder(tmp_path / "images", 4)
    done = cli("distill", "-b", "tiny-vit", "--data", str(data), "--out", str(tmp_path / "out"), "--registers", "2",
               "--views", "2", "--batch-size", "2", "--epochs", "2", "--num-workers", "0",
               env={"PHREG_PROGRESS_SECONDS": "0"})
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stderr.splitlines() if line.startswith("distil: ")]
    assert len(steps) == 4 and "loss " in steps[0] and "img/s" in steps[0] and "ETA" in steps[0]
    assert f"adapter: {tmp_path / 'out' / 'adapter.safetensors'}" in done.stdout.splitlines()
