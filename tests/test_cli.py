"""The command line: listing, errors with suggestions, a run that skips finished work and survives SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from phreg_bench.cli import main
from phreg_bench.results.store import read_result

SMALL = ["--protocol-override", "image_size=32", "--protocol-override", "num_train=4",
         "--protocol-override", "num_val=2"]


@pytest.mark.parametrize("kind", ["backbones", "methods", "tasks", "suites", "datasets"])
def test_ls_lists_each_kind(kind, capsys):
    assert main(["ls", kind]) == 0
    assert kind in capsys.readouterr().out


@pytest.mark.parametrize("args, hint", [
    (["run", "-b", "tiny-vt", "-t", "synthetic"], "did you mean 'tiny-vit'"),
    (["run", "-b", "tiny-vit", "-t", "synthetic", "-m", "naclp"], "did you mean 'naclip'"),
    (["run", "-b", "tiny-vit", "-t", "synthetic/segmentaton"], "did you mean 'synthetic/segmentation'"),
    (["run", "-b", "tiny-vit", "-t", "synthetic", "--data-root", "/no/such/folder"], "is not a folder"),
    (["results", "validate", "/no/such/folder"], "does not exist"),
    (["run", "-b", "tiny-vit", "-t", "city"], "needs a text tower"),
])
def test_bad_names_and_paths_fail_with_one_clear_line(args, hint, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert hint in err and "Traceback" not in err


def test_run_writes_valid_results_then_skips_them(tmp_path, capsys):
    args = ["run", "-b", "tiny-vit", "-t", "synthetic", "--results-dir", str(tmp_path / "r"),
            "--leaderboard-dir", str(tmp_path / "lb"), *SMALL]
    assert main(args) == 0
    files = list((tmp_path / "r").rglob("*.json"))
    assert len(files) == 1 and read_result(files[0]).identity.task.name == "synthetic/segmentation"
    assert {p.name for p in (tmp_path / "lb").iterdir()} == {"synthetic.json", "synthetic.md", "index.html"}
    before = files[0].stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "already done" in captured.out + captured.err
    assert files[0].stat().st_mtime_ns == before
    assert main(["results", "validate", str(tmp_path / "r")]) == 0


SLOW_TASKS = textwrap.dedent('''
    from dataclasses import replace
    from phreg_bench.registries import TASKS

    _base = TASKS.get("synthetic/segmentation")
    _settings = {"image_size": 32, "num_train": 4, "num_val": 2, "scene_seed": 0}
    A, B, C, D = (replace(_base, name=f"synthetic/kill-{n}", protocols={"default": {**_settings, "num_val": n}})
                  for n in (2, 3, 4, 5))
''')


def test_sigkill_midway_then_rerun_completes_without_partial_files(tmp_path):
    """Kill the run as soon as its first result lands; the rerun fills in the rest, nothing half-written."""
    (tmp_path / "kill_tasks.py").write_text(SLOW_TASKS)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    results = tmp_path / "results"
    command = [sys.executable, "-m", "phreg_bench", "run", "-b", "tiny-vit", "--results-dir", str(results),
               "-t", "kill_tasks:A,kill_tasks:B,kill_tasks:C,kill_tasks:D"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(results.rglob("*.json")):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = list(results.rglob("*.json"))
    assert 1 <= len(first) < 4, "the kill should land midway"
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    files = list(results.rglob("*.json"))
    assert len(files) == 4
    for file in files:
        json.loads(file.read_text())
        read_result(file)
    assert not [p for p in results.rglob("*") if p.is_file() and p.suffix != ".json"]
    output = done.stdout + done.stderr
    assert output.count("already done") == len(first) and f"{4 - len(first)} done" in output


def test_a_missing_data_folder_is_refused_before_any_task(tmp_path, monkeypatch, capsys):
    # before: every task started, failed on its own ("FAILED linseg/voc21: DatasetError ...") and the run exited 1
    monkeypatch.delenv("PHREG_DATA", raising=False)
    code = main(["run", "-b", "tiny-vit", "-t", "voc", "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "no data folder" in err and "FAILED" not in err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.json"))


def test_argument_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", "-b", "tiny-vit", "-t", "synthetic", "--batch-size", "0"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert "--batch-size" in err and "usage:" not in err


def _commands():
    """``(name, parser)`` of every subcommand, nested ones (``adapter import``) included."""
    import argparse

    from phreg_bench.cli import build_parser

    def walk(name, parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    yield from walk(f"{name} {sub}".strip(), child)
        if name:
            yield name, parser

    return dict(walk("", build_parser()))


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_option_says_what_it_does_and_its_default(command):
    import argparse

    for action in _commands()[command]._actions:
        if not action.option_strings or argparse.SUPPRESS in (action.help, action.default):  # -h
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help text"
        if action.default not in (None, False):
            assert "default" in action.help, f"{command} {action.option_strings[0]} does not state its default"


def test_run_help_names_every_adapter_form():
    import argparse

    from phreg_bench.cli import build_parser

    (subparsers,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    (adapter,) = [a for a in subparsers.choices["run"]._actions if "--adapter" in a.option_strings]
    assert "folder" in adapter.help and "hf-hub:<user>/<repo>" in adapter.help and "--method phreg" in adapter.help
