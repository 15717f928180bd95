"""The generic registry: lazy targets, aliases, prefixes, decorator, entry points, suggestions, type checks;
the project's registries: owned by their subsystems, light to import and to list."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from phreg_bench.registry import Entry, Registry, RegistryError, RegistryTypeError

ROOT = Path(__file__).resolve().parents[1]


def test_lazy_target_is_imported_on_first_use():
    registry = Registry("thing")
    entry = registry.add("dumps", "json:dumps", aliases=("to-json",))
    assert isinstance(entry.target, str)
    import json

    assert registry.get("to-json") is json.dumps
    assert entry.target is json.dumps


def test_unknown_name_suggests_close_matches():
    registry = Registry("backbone")
    registry.add("dinov2-vit-b14", object())
    with pytest.raises(RegistryError, match="did you mean 'dinov2-vit-b14'"):
        registry.get("dinov2-vit-b1")


def test_duplicates_are_refused():
    registry = Registry("method")
    registry.add("a", 1, aliases=("b",))
    with pytest.raises(RegistryError, match="already registered"):
        registry.add("b", 2)


def test_decorator_and_module_attr_targets():
    registry = Registry("method")

    @registry.register("mine", aliases=("m",))
    def factory():
        return 42

    assert registry.get("m")() == 42
    assert registry.get("os.path:join") is importlib.import_module("os.path").join
    with pytest.raises(RegistryError, match="has no attribute"):
        registry.get("os.path:no_such_function")


def test_prefix_entries_pass_the_rest_through():
    registry = Registry("backbone")
    registry.add("timm:", "builtins:str")
    factory = registry.get("timm:vit_small_patch16_224")
    assert factory.target is str and factory.bound == ("vit_small_patch16_224",)
    assert factory() == "vit_small_patch16_224"


def test_entry_point_plugin_from_an_installed_distribution(tmp_path, monkeypatch):
    """A real distribution (dist-info + module) on sys.path registers through the entry-point group."""
    (tmp_path / "my_plugin_pkg.py").write_text("def factory():\n    return 'from plugin'\n")
    dist = tmp_path / "my_plugin_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [phreg_bench.test_group]
        plugged = my_plugin_pkg:factory
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("backbone", "phreg_bench.test_group")
    assert registry.get("plugged")() == "from plugin"
    assert registry.entry("plugged").source == "plugin:my-plugin-pkg"
    sys.modules.pop("my_plugin_pkg", None)


def test_builtin_registries_list_without_importing_models():
    from phreg_bench.registries import BACKBONES, METHODS, SUITES, TASKS

    assert "tiny-vit" in BACKBONES.names()
    assert {"raw", "maskclip", "naclip", "sclip", "clearclip", "tta", "phreg"} <= set(METHODS.names())
    assert "synthetic/segmentation" in TASKS.names()
    assert "synthetic" in SUITES.names()


def test_factory_registry_checks_what_its_factories_make():
    registry = Registry("widget", makes=int)
    registry.add("three", lambda: 3)
    registry.add("words", lambda: "three")
    registry.add("flag", bool)  # a class is its own factory: a subclass of int is accepted as it is
    registry.add("real", float)
    assert registry.get("three")() == 3
    assert registry.get("flag") is bool
    with pytest.raises(RegistryTypeError, match="widget 'words': its factory .* returned a str, not a int"):
        registry.get("words")()
    with pytest.raises(RegistryTypeError, match="widget 'real' .* is not a subclass of int"):
        registry.get("real")
    registry.add("number", 3)
    with pytest.raises(RegistryTypeError, match="widget 'number' is a int, not a factory"):
        registry.get("number")


def test_value_registry_checks_its_values():
    registry = Registry("suite", instance_of=dict)
    registry.add("fine", {"tasks": []})
    registry.add("listed", ["a"])
    assert registry.get("fine") == {"tasks": []}
    with pytest.raises(RegistryTypeError, match="suite 'listed' .* is a list, not a dict"):
        registry.get("listed")


def test_factories_keep_the_attributes_of_their_target():
    def make():
        return 1

    make.option_schema = {"views": int}
    registry = Registry("widget", makes=int)
    registry.add("made", make)
    assert registry.get("made").option_schema == {"views": int}


def test_builtins_load_once_on_first_lookup_and_before_additions():
    calls = []

    def builtins(registry):
        calls.append(1)
        registry.add("builtin", 1)

    registry = Registry("thing", builtins=builtins)
    assert calls == []
    with pytest.raises(RegistryError, match="already registered"):
        registry.add("builtin", 2)
    assert registry.get("builtin") == 1 and registry.names() == ["builtin"] and calls == [1]


def test_project_factories_are_checked_by_their_registry(monkeypatch):
    from phreg_bench.backbones.build import build_backbone
    from phreg_bench.registries import BACKBONES, METHODS, TASKS

    monkeypatch.setitem(BACKBONES._entries, "not-a-vit", Entry("not-a-vit", lambda argument=None, **kw: object()))
    with pytest.raises(RegistryTypeError, match="backbone 'not-a-vit': its factory .* returned a object, not a Backb"):
        build_backbone("not-a-vit")
    with pytest.raises(RegistryTypeError, match="method 'builtins:dict' .* is not a subclass of DenseModel"):
        METHODS.get("builtins:dict")
    with pytest.raises(RegistryTypeError, match="task 'json:dumps' .* not a TaskSpec"):
        TASKS.get("json:dumps")


def _run_python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_registries_import_light_and_read_task_yaml_on_first_lookup():
    out = _run_python(textwrap.dedent("""
        import sys
        from phreg_bench.registries import BACKBONES, METHODS, SUITES, TASKS
        print(sorted(m for m in ("torch", "yaml", "phreg_bench.tasks.specs") if m in sys.modules))
        assert "tiny-vit" in BACKBONES and "raw" in METHODS
        print(sorted(m for m in ("torch", "yaml", "phreg_bench.tasks.specs") if m in sys.modules))
        assert "synthetic/segmentation" in TASKS.names() and "synthetic" in SUITES
        print(sorted(m for m in ("torch", "phreg_bench.tasks.specs") if m in sys.modules))
    """))
    assert out.splitlines() == ["[]", "[]", "['phreg_bench.tasks.specs']"]


def test_listing_and_help_do_not_import_torch():
    """Every subcommand module is imported to build the parser: each must import torch only when it runs."""
    out = _run_python(textwrap.dedent("""
        import contextlib, io, sys
        from phreg_bench.cli import main
        for argv in (["--help"], ["run", "--help"], ["ls", "methods"], ["ls", "backbones"], ["ls", "tasks"],
                     ["ls", "suites"], ["ls", "datasets"]):
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(argv)
                except SystemExit:
                    pass
            print(" ".join(argv), "torch" in sys.modules)
    """))
    assert out.splitlines() == [f"{argv} False" for argv in ("--help", "run --help", "ls methods", "ls backbones",
                                                              "ls tasks", "ls suites", "ls datasets")]
