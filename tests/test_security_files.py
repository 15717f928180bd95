"""No code from a data file: checkpoints load with weights_only, a scan forbids unsafe loaders, file modes,
full disks and torn logs."""

from __future__ import annotations

import ast
import errno
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from fixtures_train import distill_args
from test_core_fixtures import one_thread, random_images, tiny_timm  # noqa: F401

from phreg_core.atomic import write_atomic, write_text_atomic
from phreg_core.data import TensorImageDataset
from phreg_core.errors import FileFormatError, PhregError, WriteError
from phreg_core.student import Student
from phreg_core.teacher import default_teacher
from phreg_core.trainer import distill

REPO = Path(__file__).resolve().parents[1]


def config(out: Path, **overrides) -> dict:
    values = dict(epochs=2, batch_size=2, lr=1e-3, lr_end=1e-4, progress=False, views=2, out_dir=str(out),
                  base_name="tiny", base_weights_sha256="0" * 64, checkpoint_every=1, log_every=1)
    values.update(overrides)
    return distill_args(**values)


def run(out: Path, **overrides):
    base = tiny_timm()
    return distill(default_teacher(base), Student(base, 2), TensorImageDataset(random_images(4)),
                   **config(out, **overrides))


class Payload:
    """A pickle that creates ``marker`` when unpickled (what a crafted checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def plant(out: Path, marker: Path) -> Path:
    path = out / "checkpoints" / "step-99999999.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "phreg-checkpoint", "version": 2, "payload": Payload(marker)}, path)
    return path


# -- checkpoints ------------------------------------------------------------------------------------------
def test_checkpoint_holds_only_tensors_and_plain_containers(tmp_path):
    from phreg_core.checkpoint import load_checkpoint

    run(tmp_path, max_steps=2)
    newest = sorted((tmp_path / "checkpoints").glob("step-*.pt"))[-1]
    state = torch.load(newest, map_location="cpu", weights_only=True)  # raises if anything else is inside
    assert state["format"] == "phreg-checkpoint" and state["position"]["step"] == 2
    assert load_checkpoint(newest)["rng"]["python"]["state"].dtype == torch.int64


def test_crafted_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    planted = plant(tmp_path / "run", marker)
    with pytest.raises(FileFormatError, match="step-99999999.pt"):
        run(tmp_path / "run", resume=True, max_steps=1)
    assert not marker.exists()
    assert planted.exists()  # refused, not silently deleted


def test_crafted_checkpoint_via_the_cli_is_one_line_naming_the_file(tmp_path, capsys):
    from PIL import Image

    from phreg_bench.cli import main

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(images / "a.png")
    marker = tmp_path / "pwned"
    plant(tmp_path / "out", marker)
    code = main(["distill", "-b", "tiny-vit", "--data", str(images), "--out", str(tmp_path / "out"), "--resume",
                 "--registers", "2", "--views", "2", "--batch-size", "1", "--num-workers", "0", "--no-progress",
                 "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "step-99999999.pt" in err and "Traceback" not in err
    assert not marker.exists()


def test_old_or_foreign_checkpoints_are_refused_by_name(tmp_path):
    from phreg_core.checkpoint import load_checkpoint

    path = tmp_path / "checkpoints" / "step-00000001.pt"
    path.parent.mkdir(parents=True)
    torch.save({"format": "phreg-checkpoint", "version": 1}, path)
    with pytest.raises(FileFormatError, match="version 1"):
        load_checkpoint(path)
    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(FileFormatError, match="step-00000001.pt"):
        load_checkpoint(path)
    torch.save({"format": "phreg-checkpoint", "version": 2, "position": "nonsense"}, path)
    with pytest.raises(FileFormatError, match="damaged"):
        run(tmp_path, resume=True, max_steps=1)


# -- one scan for every unsafe loader ---------------------------------------------------------------------
ALLOWED = {  # file -> why its (allowlisted) unpickler is safe
    "phreg_bench/backbones/torchscript_archive.py": "pickle.Unpickler subclass with a find_class allowlist",
}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "marshal", "shelve", "joblib", "cloudpickle"}
PICKLE_LOADERS = {"load", "loads", "Unpickler", "_Unpickler", "open"}  # shelve.open unpickles too


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_uses(source: str, filename: str) -> list[str]:
    """``file:line: what`` for every use of a loader that can run code from a data file."""
    found = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.module:
            names = {alias.name for alias in node.names}
            if node.module.split(".")[0] in PICKLE_MODULES and names & PICKLE_LOADERS:
                found.append(f"{where}: from {node.module} import {', '.join(sorted(names & PICKLE_LOADERS))}")
            if node.module == "yaml" and names & {"load", "load_all", "unsafe_load", "full_load", "Loader",
                                                  "UnsafeLoader", "FullLoader"}:
                found.append(f"{where}: imports an unsafe yaml loader")
            if node.module in ("torch", "torch.jit") and "load" in names:
                found.append(f"{where}: from {node.module} import load (call torch.load(..., weights_only=True))")
            continue
        if isinstance(node, ast.Attribute) and node.attr in PICKLE_LOADERS and \
                ast.unparse(node.value).split(".")[0] in PICKLE_MODULES:
            found.append(f"{where}: {ast.unparse(node)}")
            continue
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        dotted = ast.unparse(func)
        leaf = dotted.rsplit(".", 1)[-1]
        if isinstance(func, ast.Name) and func.id in UNSAFE_CALLS:
            found.append(f"{where}: {func.id}()")
        elif dotted.endswith("torch.load"):
            if not _is_true(_keyword(node, "weights_only")):
                found.append(f"{where}: torch.load without weights_only=True")
        elif dotted.endswith("jit.load"):
            found.append(f"{where}: torch.jit.load")
        elif dotted.startswith("yaml.") and leaf in ("load", "load_all", "unsafe_load", "full_load"):
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or "SafeLoader" not in ast.unparse(loader):
                found.append(f"{where}: {dotted} without SafeLoader")
        elif leaf == "load" and dotted.split(".")[0] in ("np", "numpy") and _is_true(_keyword(node, "allow_pickle")):
            found.append(f"{where}: numpy.load(allow_pickle=True)")
    return found


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load(p)", "import torch\ntorch.load(p, weights_only=False)", "import pickle\npickle.loads(b)",
    "from pickle import loads", "import dill\ndill.load(f)", "import marshal\nmarshal.loads(b)", "eval('1')",
    "exec('x=1')", "import pickle\nclass U(pickle.Unpickler): pass", "import shelve\nshelve.open(p)",
    "import yaml\nyaml.load(s)", "import yaml\nyaml.load(s, Loader=yaml.Loader)", "import torch\ntorch.jit.load(p)",
    "import numpy as np\nnp.load(p, allow_pickle=True)", "import yaml\nyaml.unsafe_load(s)",
    "from torch import load", "from yaml import load",
])
def test_the_scan_catches_each_unsafe_loader(snippet):
    assert unsafe_uses(snippet, "x.py"), snippet


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load(p, weights_only=True)", "import yaml\nyaml.safe_load(s)",
    "import yaml\nyaml.load(s, Loader=yaml.SafeLoader)", "import numpy as np\nnp.load(p, mmap_mode='r')",
    "model.eval()", "json.loads(s)", "import pickle\ntry:\n    pass\nexcept pickle.UnpicklingError:\n    pass",
])
def test_the_scan_passes_safe_code(snippet):
    assert unsafe_uses(snippet, "x.py") == []


def test_no_package_source_can_run_code_from_a_data_file():
    problems = []
    for package in ("phreg_core", "phreg_bench"):
        for path in sorted((REPO / package).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if relative in ALLOWED:
                continue
            problems += unsafe_uses(path.read_text(), relative)
    assert problems == [], "\n".join(problems)


# -- file modes -------------------------------------------------------------------------------------------
@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_atomic_writes_honour_the_umask(tmp_path, umask_022):
    for name, write in [("a.json", lambda p: write_text_atomic(p, "{}")),
                        ("b.png", lambda p: write_atomic(p, lambda t: Path(t).write_bytes(b"x"), suffix=".png"))]:
        path = write(tmp_path / name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, name
    os.umask(0o077)
    assert stat.S_IMODE(write_text_atomic(tmp_path / "c.json", "{}").stat().st_mode) == 0o600


def test_results_adapters_and_checkpoints_are_0644_under_umask_022(tmp_path, umask_022):
    run(tmp_path, max_steps=2)
    written = [tmp_path / "adapter.safetensors", tmp_path / "adapter.json",
               *sorted((tmp_path / "checkpoints").glob("*.pt"))]
    assert len(written) >= 3
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# -- a full disk ------------------------------------------------------------------------------------------
def test_a_full_disk_while_saving_a_checkpoint_names_the_file(tmp_path, monkeypatch):
    def torch_full_disk(obj, path, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", torch_full_disk)
    with pytest.raises(WriteError, match=r"could not write .*step-00000001\.pt: PytorchStreamWriter failed") as info:
        run(tmp_path, max_steps=1)
    assert "MiB free" in str(info.value) and "inline_container" not in str(info.value)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp file left


def test_a_full_disk_while_saving_the_adapter_names_the_file(tmp_path, monkeypatch):
    import safetensors.torch

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    with pytest.raises(WriteError, match=r"could not write .*adapter\.safetensors: No space left on device"):
        run(tmp_path, max_steps=1)


def test_a_full_disk_while_writing_a_result_names_the_file(tmp_path, monkeypatch):
    real_open = open

    def full(path, mode="r", *args, **kwargs):
        if "w" in mode and ".r.json." in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(WriteError, match=r"r\.json: No space left on device"):
        write_text_atomic(tmp_path / "r.json", "{}")
    assert list(tmp_path.iterdir()) == []


# -- the training log -------------------------------------------------------------------------------------
def test_a_torn_log_line_is_dropped_on_resume_and_reported(tmp_path, caplog):
    run(tmp_path, max_steps=2)
    log = tmp_path / "log.jsonl"
    good = log.read_bytes()
    log.write_bytes(good + b'{"step": 3, "epoch": 1, "lo')  # killed mid-append
    with caplog.at_level("WARNING"):
        result = run(tmp_path, max_steps=4, resume=True)
    assert result.steps == 4
    assert "torn last line" in caplog.text and "log.jsonl" in caplog.text
    lines = log.read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(line)["step"] for line in lines[:-1]] == [1, 2, 3, 4]
    assert log.read_bytes().startswith(good)  # kept lines stay byte for byte


def test_a_damaged_log_line_in_the_middle_names_the_file_and_line(tmp_path):
    run(tmp_path, max_steps=2)
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"not json\n" + log.read_bytes())
    with pytest.raises(FileFormatError, match=r"log\.jsonl, line 1"):
        run(tmp_path, max_steps=3, resume=True)


def test_every_error_here_is_a_phreg_error():
    assert issubclass(FileFormatError, PhregError) and issubclass(WriteError, PhregError)


def test_results_index_html_and_figures_are_0644_under_umask_022(tmp_path, umask_022):
    from phreg_bench.cli import main

    assert main(["run", "-b", "tiny-vit", "-t", "synthetic", "--results-dir", str(tmp_path / "r"),
                 "--leaderboard-dir", str(tmp_path / "lb"), "--protocol-override", "image_size=32",
                 "--protocol-override", "num_train=4", "--protocol-override", "num_val=2"]) == 0
    assert main(["viz", "-b", "tiny-vit", "--synthetic", "0", "--out", str(tmp_path / "fig")]) == 0
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.suffix for p in written} >= {".json", ".html", ".md", ".png"}
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {str(p): "0o644" for p in written}
