"""Issue 10 §2.3: every family's protocol settings are a validated dataclass, resolved after the overrides.

Unknown ``--protocol-override`` keys and unknown ``--protocol`` names are refused (with the valid ones listed)
before any model is built; values are converted to their field's type and range-checked.
"""

from __future__ import annotations

import pytest

from phreg_bench import runner
from phreg_bench.cli import main
from phreg_bench.protocol_settings import ProtocolError
from phreg_bench.registries import TASK_FAMILIES, TASKS
from phreg_bench.runner import RunRequest, resolve_task_settings, run
from phreg_bench.tasks.base import RunContext
from phreg_core.errors import PhregError

FAMILY_TASKS = ["ovseg/voc21", "linseg/voc21", "depth/nyu", "synthetic/segmentation"]


@pytest.fixture
def no_model(monkeypatch):
    """Building a backbone fails the test: validation must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the protocol settings were validated")

    monkeypatch.setattr(runner, "build_backbone", refuse)


def _run(task: str, *, protocol: str | None = None, **overrides):
    request = RunRequest(backbone="tiny-vit", tasks=[task], protocol=protocol, protocol_overrides=overrides)
    return run(request, RunContext(), log=lambda message: None)


@pytest.mark.parametrize("task", FAMILY_TASKS)
def test_unknown_override_key_is_refused_before_any_model_is_built(task, no_model):
    family = TASK_FAMILIES.get(TASKS.get(task).family)()
    valid = family.setting_keys(TASKS.get(task))
    with pytest.raises(ProtocolError, match="--protocol-override iter") as caught:
        _run(task, iter=5)
    assert isinstance(caught.value, PhregError)
    assert "valid keys" in str(caught.value) and all(key in str(caught.value) for key in valid)


@pytest.mark.parametrize("task", FAMILY_TASKS)
def test_unknown_protocol_name_is_refused_with_the_valid_names(task, no_model):
    with pytest.raises(ProtocolError, match="--protocol bogus") as caught:
        _run(task, protocol="bogus")
    assert all(name in str(caught.value) for name in TASKS.get(task).protocols)


@pytest.mark.parametrize("task, key, value, message", [
    ("linseg/voc21", "iters", -1, "must be > 0"),
    ("linseg/voc21", "iters", "abc", "must be an integer"),
    ("linseg/voc21", "train_features", "online", "must be one of 'cached', 'full'"),
    ("linseg/voc21", "input_size", 0, "'auto' or > 0"),
    ("linseg/voc21", "head_batchnorm", "maybe", "true or false"),
    ("depth/nyu", "betas", [0.9], "list of 2 values"),
    ("depth/nyu", "max_depth", 0.0001, "must be > min_depth"),
    ("depth/nyu", "momentum", {"bse": 0.8}, "'bse'"),
    ("depth/nyu", "gradient_loss_layout", "mine", "'published', 'per-image'"),
    ("ovseg/voc21", "prob_thd", 2, "must be in [0, 1]"),
    ("ovseg/voc21", "crop", -1, "must be >= 0"),
    ("ovseg/voc21", "templates", "no-such-file.txt", "not found"),
    ("synthetic/segmentation", "num_val", 0, "must be > 0"),
    ("linseg/voc21", "budget", "quick", "use --budget"),
])
def test_bad_values_name_the_override(task, key, value, message, no_model):
    with pytest.raises(ProtocolError, match=f"--protocol-override {key}") as caught:
        _run(task, **{key: value})
    assert message in str(caught.value)


def test_values_are_converted_to_their_types():
    spec = TASKS.get("linseg/voc21")
    family = TASK_FAMILIES.get("linseg")()
    # "1e-3" is what YAML 1.1 (the CLI's value parser) makes of 1e-3: a string
    settings = family.resolve_settings(spec, None, RunContext(), {"lr": "1e-3", "input_size": 48.0,
                                                                   "head_batchnorm": "false"})
    assert settings["lr"] == 0.001 and isinstance(settings["lr"], float)
    assert settings["input_size"] == 48 and isinstance(settings["input_size"], int)
    assert settings["head_batchnorm"] is False
    depth = TASK_FAMILIES.get("depth")().resolve_settings(TASKS.get("depth/nyu"), None, RunContext(),
                                                          {"momentum": {"base": 0.8}})
    assert depth["momentum"] == {"policy": "one-cycle", "base": 0.8, "max": 0.95, "pct_start": 0.3}


def test_an_override_applies_to_the_tasks_that_have_the_setting():
    logs: list[str] = []
    specs = [TASKS.get("linseg/voc21"), TASKS.get("depth/nyu")]
    request = RunRequest(backbone="x", protocol_overrides={"train_crop": [40, 56], "iters": 7})
    resolved = resolve_task_settings(specs, request, RunContext(), log=logs.append)
    assert resolved["depth/nyu"]["train_crop"] == [40, 56] and resolved["depth/nyu"]["iters"] == 7
    assert "train_crop" not in resolved["linseg/voc21"] and resolved["linseg/voc21"]["iters"] == 7
    assert any("linseg/voc21 has no setting train_crop" in line for line in logs)
    with pytest.raises(ProtocolError, match="none of the tasks") as caught:
        resolve_task_settings(specs, RunRequest(backbone="x", protocol_overrides={"iter": 5}), RunContext())
    assert "linseg:" in str(caught.value) and "depth:" in str(caught.value)


def test_a_resolved_dict_edited_by_hand_is_checked_again_by_run():
    spec = TASKS.get("synthetic/segmentation")
    family = TASK_FAMILIES.get("synthetic")()
    settings = {**family.resolve_settings(spec, None, RunContext()), "num_vall": 3}
    with pytest.raises(ProtocolError, match="num_vall"):
        family.run(None, spec, settings, RunContext())


@pytest.mark.parametrize("args, hint", [
    (["--protocol-override", "iter=5"], "--protocol-override iter"),
    (["--protocol", "bogus"], "--protocol bogus"),
    (["--protocol-override", "num_val=-2"], "must be > 0"),
])
def test_cli_refuses_bad_protocols_in_one_line(args, hint, tmp_path, capsys):
    assert main(["run", "-b", "tiny-vit", "-t", "synthetic", "--results-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert hint in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.json"))
