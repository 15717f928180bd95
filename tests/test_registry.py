"""The generic registry: lazy targets, aliases, prefixes, decorator, entry points, suggestions."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from phreg_bench.registry import Registry, RegistryError


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
    factory, argument = registry.resolve("timm:vit_small_patch16_224")
    assert factory is str and argument == "vit_small_patch16_224"


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
