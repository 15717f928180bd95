"""One implementation per concept, checked on the source: one file sha256, one canonical JSON, one atomic
write (temp file + rename), and an import graph without circles (registration as an import side effect
made one)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("phreg_core", "phreg_bench")


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    found = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = (path, ast.parse(path.read_text()))
    return found


def _called_names(node: ast.AST) -> set[str]:
    """Names of every call under ``node``: ``open``; ``hashlib.sha256`` as itself and ``sha256``; ``p.read_bytes``
    as ``read_bytes``."""
    names = set()
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            func = call.func
            if isinstance(func, ast.Name):
                names.add(func.id)
            elif isinstance(func, ast.Attribute):
                names.add(func.attr)
                if isinstance(func.value, ast.Name):
                    names.add(f"{func.value.id}.{func.attr}")
    return names


def test_one_file_sha256_and_one_canonical_json():
    from phreg_bench.results import hashing as result_hashing
    from phreg_core import hashing

    assert result_hashing.canonical_json is hashing.canonical_json
    file_hashers, json_helpers = [], []
    for name, (_, tree) in _modules().items():
        if name == "phreg_core.hashing":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                calls = _called_names(node)
                if "sha256" in calls and calls & {"open", "read_bytes", "read"}:
                    file_hashers.append(f"{name}:{node.name}")
                if node.name == "canonical_json":
                    json_helpers.append(f"{name}:{node.name}")
    assert not file_hashers, f"hash files with phreg_core.hashing.file_sha256, not {file_hashers}"
    assert not json_helpers, f"use phreg_core.hashing.canonical_json, not {json_helpers}"


def test_one_atomic_write():
    own = []
    for name, (_, tree) in _modules().items():
        if name == "phreg_core.atomic":
            continue
        calls = _called_names(tree)
        own += [f"{name}: {call}" for call in ("tempfile.mkstemp", "NamedTemporaryFile", "os.replace", "os.rename")
                if call in calls]
    assert not own, f"write through phreg_core.atomic, not a temp file of one's own: {own}"


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Project modules ``name`` imports (module or function level; ``if TYPE_CHECKING:`` blocks left out)."""
    guarded = [node for node in ast.walk(tree)
               if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)]
    skipped = {id(n) for node in guarded for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            candidates = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                found.add(candidate)
    return found


def test_no_import_circles():
    modules = _modules()
    graph = {name: _imports(name, tree, set(modules)) for name, (_, tree) in modules.items()}

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reachable = {name: reach(name) for name in graph}
    circles = sorted({tuple(sorted(m for m in reachable[name] if name in reachable[m]))
                      for name in graph if name in reachable[name]})
    assert not circles, f"import circles: {circles}"
    assert not [n for n in graph if n.startswith("phreg_core") and any(m.startswith("phreg_bench") for m in graph[n])]
