"""Every bad value is refused before any work starts, naming the option; only the project's own errors
become one-line messages; results validate checks identity and content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_core_cli_distill import image_folder
from test_core_fixtures import one_thread  # noqa: F401

from phreg_bench import runner
from phreg_bench.backbones.build import build_backbone
from phreg_bench.cli import main
from phreg_bench.registries import BACKBONES
from phreg_bench.results.store import ResultStore, read_result

SMALL = ["--protocol-override", "image_size=32", "--protocol-override", "num_train=4",
         "--protocol-override", "num_val=2"]


def exit_code(argv: list[str]) -> int:
    """``main``'s status, including argparse's ``SystemExit(2)`` for a value refused while parsing."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if any backbone is built (the check must come first)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the options were checked")

    monkeypatch.setattr(BACKBONES, "get", refuse)
    monkeypatch.setattr(runner, "build_backbone", refuse)


RUN = ["run", "-b", "tiny-vit", "-t", "synthetic"]


@pytest.mark.parametrize("args, option", [
    (RUN + ["--batch-size", "0"], "--batch-size"),
    (RUN + ["--batch-size", "-4"], "--batch-size"),
    (RUN + ["--num-workers", "-1"], "--num-workers"),
    (RUN + ["-m", "tta", "-o", "views=0"], "views=0"),
    (RUN + ["-m", "tta", "-o", "views=ten"], "views='ten'"),
    (RUN + ["-m", "tta", "-o", "views=2.5"], "views=2.5"),
    (RUN + ["-m", "tta", "-o", "shift_frac=1.5"], "shift_frac=1.5"),
    (RUN + ["-m", "naclip", "-o", "gaussian_std=-1"], "gaussian_std=-1"),
    (RUN + ["-m", "phreg"], "'adapter'"),
    (RUN + ["-m", "dvt"], "'denoiser'"),  # refused before any backbone is built
    (RUN + ["-m", "dvt", "-o", "denoiser=x.pth", "-o", "inner=dvt"], "cannot wrap itself"),
    (RUN + ["--adapter", "/no/such/adapter"], "adapter='/no/such/adapter'"),
    (RUN + ["-m", "raw", "--adapter", "a"], "--adapter implies --method phreg and cannot be combined with --method "
                                            "raw"),
    (RUN + ["-o", "x=[1"], "--method-option x=[1"),
    (RUN + ["--limit", "0"], "--limit"),
    (RUN + ["--limit", "-1"], "--limit"),
    (RUN + ["--device", "tpu"], "--device"),
    (RUN + ["--data-root", "/no/such/folder"], "--data-root"),
    (["distill", "-b", "tiny-vit", "--data", "IMAGES", "--out", "OUT", "--epochs", "0"], "--epochs"),
    (["distill", "-b", "tiny-vit", "--data", "IMAGES", "--out", "OUT", "--batch-size", "0"], "--batch-size"),
    (["distill", "-b", "tiny-vit", "--data", "IMAGES", "--out", "OUT", "--lr", "0"], "--lr"),
    (["distill", "-b", "tiny-vit", "--data", "IMAGES", "--out", "OUT", "--views", "0"], "--views"),
    (["distill", "-b", "tiny-vit", "--data", "IMAGES", "--out", "OUT", "--shift-frac", "2"], "--shift-frac"),
    (["distill", "-b", "tiny-vit", "--data", "/no/such/images", "--out", "OUT"], "--data"),
    (["distill", "-b", "tiny-vit", "--hf-dataset", "x/y", "--out", "OUT"], "phreg-bench[hf]"),
    (["viz", "--size", "0"], "--size"),
    (["viz", "--synthetic", "-5"], "--synthetic"),
    (["viz", "-m", "tta:views=0"], "views=0"),
    (["viz", "--device", "tpu"], "--device"),
])
def test_bad_values_are_refused_before_any_model_naming_the_option(args, option, tmp_path, capsys, no_models):
    images = tmp_path / "images"
    images.mkdir()
    args = [str(images) if a == "IMAGES" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    assert exit_code(args) == 2
    err = capsys.readouterr().err
    assert option in err and "Traceback" not in err
    assert not (tmp_path / "out" / "adapter.safetensors").exists()


def test_tta_options_name_the_method_the_user_asked_for(capsys, no_models):
    assert exit_code(RUN + ["-m", "tta", "-o", "bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "method 'tta' has no option 'bogus'" in err and "'raw' takes no options" not in err


def test_views_is_never_truncated(tmp_path):
    """``views=2.5`` used to run with 2 views and record 2; an integer is passed through as given."""
    assert exit_code(RUN + ["-m", "tta", "-o", "views=2", "--results-dir", str(tmp_path), *SMALL]) == 0
    record = read_result(next(tmp_path.rglob("*__*.json")))
    assert record.identity.method.config["views"] == 2


@pytest.mark.parametrize("extra, flag", [
    (["-m", "tta"], "--method"), (["-o", "views=3"], "--method-option"), (["--limit", "3"], "--limit"),
    (["--weights", "w.safetensors"], "--weights"), (["--budget", "quick"], "--budget"),
    (["--protocol", "paper"], "--protocol"), (["--random-init"], "--random-init"),
])
def test_the_builtin_default_refuses_options_it_does_not_use(extra, flag, tmp_path, capsys, no_models):
    assert exit_code(["run", "--results-dir", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert flag in err and "does not use" in err


def test_the_builtin_default_refuses_a_data_root(tmp_path, capsys, no_models, monkeypatch):
    monkeypatch.delenv("PHREG_DATA", raising=False)
    assert exit_code(["run", "--results-dir", str(tmp_path), "--data-root", str(tmp_path)]) == 2
    assert "--data-root" in capsys.readouterr().err


# -- which errors become one line -------------------------------------------------------------------------
@pytest.mark.parametrize("error", [TypeError("a bug"), RuntimeError("CUDA out of memory"), ValueError("bug"),
                                   OSError(5, "I/O error")])
def test_only_the_projects_own_errors_become_one_line(error, monkeypatch):
    import phreg_bench.cli.ls as ls

    def broken(args):
        raise error

    monkeypatch.setattr(ls, "handle", broken)
    with pytest.raises(type(error)):
        main(["ls", "tasks"])


def test_phreg_debug_shows_the_traceback_of_a_user_error(capsys, monkeypatch):
    monkeypatch.setenv("PHREG_DEBUG", "1")
    assert exit_code(RUN + ["-m", "nope"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "unknown method 'nope'" in err


def test_phreg_debug_shows_the_traceback_of_a_failed_task(tmp_path, capsys, monkeypatch):
    from phreg_bench.synthetic.family import SyntheticSegmentation

    def broken(self, *args, **kwargs):
        raise RuntimeError("deep inside a task")

    monkeypatch.setattr(SyntheticSegmentation, "run", broken)
    args = RUN + ["--results-dir", str(tmp_path), *SMALL]
    assert exit_code(args) == 1
    err = capsys.readouterr().err
    assert "FAILED synthetic/segmentation: RuntimeError: deep inside a task" in err and "Traceback" not in err
    monkeypatch.setenv("PHREG_DEBUG", "1")
    assert exit_code(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "in broken" in err


@pytest.mark.parametrize("backbone", ["tiny-vit", "planted-vit"])
def test_pt_weights_on_builtin_backbones_are_read_or_refused_in_one_line(backbone, tmp_path, capsys):
    wrong = tmp_path / "wrong.pt"
    torch.save({"a": torch.zeros(2)}, wrong)
    assert exit_code(["run", "-b", backbone, "-t", "synthetic", "--weights", str(wrong),
                      "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "wrong.pt" in err and "missing tensors" in err and "Traceback" not in err
    right = tmp_path / "right.pt"
    torch.save(build_backbone(backbone).vision.model.state_dict(), right)
    assert exit_code(["run", "-b", backbone, "-t", "synthetic", "--weights", str(right),
                      "--results-dir", str(tmp_path / "r"), *SMALL]) == 0


@pytest.mark.parametrize("name", ["run[/x]", "run[clip]", "[bold]x"])
def test_names_with_brackets_are_printed_literally(name, tmp_path, capsys):
    results = tmp_path / name
    assert exit_code(RUN + ["--results-dir", str(results), *SMALL]) == 0
    out = capsys.readouterr().out
    assert f"results in {results}:" in out


# -- results validate / show ----------------------------------------------------------------------------
@pytest.fixture
def results(tmp_path) -> Path:
    folder = tmp_path / "results"
    assert exit_code(RUN + ["--results-dir", str(folder), *SMALL]) == 0
    assert exit_code(RUN + ["-b", "planted-vit", "--results-dir", str(folder), *SMALL]) == 0
    return folder


def edit(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record, indent=2))


@pytest.mark.parametrize("change, why", [
    (lambda r: r["metrics"]["values"].update(mIoU=99.0), "record_sha256 does not match"),
    (lambda r: r["method"]["config"].update(views=3), "config_hash"),
    (lambda r: r["protocol"]["settings"].update(num_val=100), "config_hash"),
    (lambda r: r["status"].update(limit=5), "config_hash"),
])
def test_validate_refuses_edited_files(results, change, why, capsys):
    first = sorted(results.rglob("*__*.json"))[0]
    edit(first, change)
    assert main(["results", "validate", str(results)]) == 1
    out = capsys.readouterr().out
    assert "1 valid, 1 invalid" in out and why in out and first.name in out


def test_validate_of_an_empty_folder_fails(tmp_path, capsys):
    assert main(["results", "validate", str(tmp_path)]) == 1
    assert "no result files" in capsys.readouterr().err


def test_show_lists_the_valid_files_and_reports_the_invalid_one(results, capsys):
    broken = sorted(results.rglob("*__*.json"))[0]
    broken.write_text("{ not json")
    assert main(["results", "show", str(results)]) == 1
    captured = capsys.readouterr()
    assert "INVALID" in captured.err and broken.name in captured.err
    assert "synthetic/segmentation" in captured.out


def test_a_store_write_adds_a_checksum_that_read_checks(results):
    path = sorted(results.rglob("*__*.json"))[0]
    record = read_result(path)
    assert len(record.record_sha256) == 64
    assert ResultStore(results).is_done(path)
    edit(path, lambda r: r["timings"].update(total_s=0.0))
    assert not ResultStore(results).is_done(path)  # an edited result is recomputed, not trusted


def test_distill_epochs_and_batch_size_are_used_as_given(tmp_path):
    data = image_folder(tmp_path / "images", 3)
    out = tmp_path / "run"
    assert main(["distill", "-b", "tiny-vit", "--data", str(data), "--out", str(out), "--registers", "2",
                 "--views", "2", "--batch-size", "3", "--epochs", "1", "--num-workers", "0", "--no-progress"]) == 0
    sidecar = json.loads((out / "adapter.json").read_text())
    assert sidecar["config"]["batch_size"] == 3 and sidecar["steps"] == 1
