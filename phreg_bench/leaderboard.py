"""Leaderboards built from result files only: JSON, Markdown and one self-contained HTML page.

Rules: a row is one result identity minus the task (backbone and weights, method and config, protocol, the
row variant its task family declares (probes: budget and feature mode), settings overridden from the
preset, precision, seed), columns the suite's tasks; runs that differ in any of these are separate rows whose
``variant`` names the difference, and only a rerun of the same identity supersedes (the newest is kept). A
mean only for complete rows whose main metrics agree in name and direction; a delta against the raw row of
the same identity minus the method (records of the removed ``phreg:<base>`` prefix count as ``<base>``);
every file left out is listed with the reason (invalid, version, spec or protocol mismatch, failed run, partial run,
superseded). Reported (paper) rows carry a marker and are never averaged with measured runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phreg_bench.leaderboard_page import BASELINE_METHOD, REPORTED_MARK, to_html, to_markdown
from phreg_bench.results.hashing import canonical_json
from phreg_bench.results.records import ResultRecord, Score
from phreg_bench.results.schema import ResultError
from phreg_bench.results.store import read_result, result_files, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from phreg_bench.tasks.base import TaskFamily

__all__ = ["BASELINE_METHOD", "REPORTED_MARK", "build", "build_all", "build_table", "collect", "to_html",
           "to_markdown", "write_index"]


@dataclass(frozen=True)
class Cell:
    """One task's result in a row: its score and where it comes from."""

    score: Score
    file: str
    config_hash: str
    citation: dict[str, Any] | None
    budget_applies: bool  # for the page: the budget column means something only for runs that train a probe


@dataclass
class Row:
    kind: str
    backbone: str
    method: str
    budget: str | None  # the family's row variant (protocol.variant), e.g. "full/cached"; None: none
    cells: dict[str, Cell] = field(default_factory=dict)  # task -> its result
    identity: dict[str, Any] = field(default_factory=dict)  # everything the row is keyed on (see _identity)
    baseline: dict[str, Any] = field(default_factory=dict)  # the identity of its raw row (same, method raw)
    variant: str = ""  # what differs from the canonical run: settings, precision, seed, weights

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, canonical_json(self.identity))


def _expected_protocol(suite: dict[str, Any], task: str, spec) -> str:
    protocol = suite.get("protocol")
    if isinstance(protocol, dict):
        protocol = protocol.get(task)
    return protocol or spec.default_protocol


def _method_label(record: ResultRecord, configs_by_method: dict[tuple[str, str], set[str]]) -> str:
    method = record.identity.method
    config = canonical_json(method.config)
    if len(configs_by_method[(record.identity.backbone.name, method.name)]) > 1:
        return f"{method.name}[{hashlib.sha256(config.encode()).hexdigest()[:6]}]"
    return method.name


_UNRECORDED = "(unrecorded)"


def _settings_deviation(record: ResultRecord, family: TaskFamily, spec) -> dict[str, Any]:
    """Recorded protocol settings that differ from the task's preset (overrides), key -> recorded value; the
    settings the family's row variant names are left out (the variant keeps those rows apart).

    Raises :class:`~phreg_bench.protocol_settings.ProtocolError` when the preset cannot be resolved.
    """
    if record.kind != "measured":
        return {}  # a paper's number: only its protocol name and budget are known
    settings = record.identity.protocol.settings
    preset = family.recorded_preset(spec, settings)
    missing = object()
    deviation = {}
    for key in sorted((set(settings) | set(preset)) - {"name", *family.variant_keys}):
        value = settings.get(key, missing)
        if value != preset.get(key, missing):
            deviation[key] = _UNRECORDED if value is missing else value
    return deviation


def _identity(record: ResultRecord, deviation: dict[str, Any]) -> dict[str, Any]:
    """Everything in a result's identity except the task: what a leaderboard row is keyed on."""
    identity = record.identity
    return {
        "backbone": identity.backbone.identity,
        "method": identity.method.to_json(),
        "protocol": identity.protocol.name,
        "budget": identity.protocol.variant,
        "settings": deviation,
        "precision": record.precision_ran,
        "seed": identity.seed,
    }


def _baseline(record: ResultRecord, identity: dict[str, Any]) -> dict[str, Any]:
    """The identity of the row this one's delta is taken against: the same, on the base backbone, method raw."""
    return {**identity, "backbone": record.identity.backbone.base_identity,
            "method": {"name": BASELINE_METHOD, "config": {}}}


def _variant_label(identity: dict[str, Any], weights_differ: bool) -> str:
    parts = [f"{key} {value}" if value == _UNRECORDED else f"{key}={canonical_json(value)}"
             for key, value in identity["settings"].items()]
    if identity["precision"] not in (None, "fp32"):
        parts.append(identity["precision"])
    if identity["seed"] not in (None, 0):
        parts.append(f"seed {identity['seed']}")
    if weights_differ:
        parts.append(f"weights {_weights_label(identity['backbone'])}")
    return ", ".join(parts)


def _weights_label(backbone: dict[str, Any]) -> str:
    """Weights (sha256 prefix or id) and, where recorded, the positional-embedding resampling policy."""
    sha = backbone.get("weights_sha256")
    label = sha[:12] if sha else str(backbone.get("weights_id"))
    policy = backbone.get("pos_resample")
    return f"{label}, pos_resample={policy}" if policy else label


def _exclusion(record: ResultRecord, spec, suite: dict[str, Any]) -> str | None:
    """Why a readable result of one of the suite's tasks is left out of the board (``None``: it is not)."""
    task, status = record.identity.task, record.status
    if spec is None:
        return f"unknown task {task.name!r}"
    if task.version != spec.version:
        return f"version mismatch: file has {task.name} v{task.version}, current is v{spec.version}"
    if record.kind == "measured" and task.spec_hash != spec.spec_hash():
        return (f"task spec changed since this run: {task.name} spec_hash {str(task.spec_hash)[:12]}, "
                f"current {spec.spec_hash()[:12]}")
    protocol = record.identity.protocol.name
    expected = _expected_protocol(suite, task.name, spec)
    if protocol != expected:
        return f"protocol mismatch: {protocol!r}, suite uses {expected!r}"
    if status.error is not None:
        return f"failed run: {status.error.type}: {status.error.message}"
    if not status.complete:
        return (f"partial run: {status.num_samples} of {status.expected_samples or '?'} samples "
                f"(limit {record.identity.limit})")
    return None


def collect(files: list[Path], suite: dict[str, Any]) -> tuple[list[Row], list[dict[str, str]]]:
    """Sort result files into leaderboard rows and a list of excluded files with reasons.

    A row is keyed by the whole identity of its results except the task (backbone + weights, method +
    config, protocol, the family's row variant, settings that differ from the preset, precision, seed):
    results that differ in any of these are separate rows, the difference named in ``Row.variant``. Only a
    result of the same identity and task is superseded (the newest is kept). Error records (failed runs) are
    never scored: they are listed as excluded with their error.
    """
    from phreg_bench.protocol_settings import ProtocolError
    from phreg_bench.registries import TASK_FAMILIES, TASKS

    tasks = list(suite["tasks"])
    excluded: list[dict[str, str]] = []
    accepted: list[tuple[Path, ResultRecord, dict[str, Any]]] = []
    for path in files:
        try:
            record = read_result(path)
        except ResultError as error:
            excluded.append({"file": str(path), "reason": f"invalid: {error}"})
            continue
        task = record.identity.task.name
        if task not in tasks:
            continue
        spec = TASKS.get(task) if task in TASKS else None
        reason = _exclusion(record, spec, suite)
        if reason is not None:
            excluded.append({"file": str(path), "reason": reason})
            continue
        try:
            deviation = _settings_deviation(record, TASK_FAMILIES.get(spec.family)(), spec)
        except ProtocolError as error:
            excluded.append({"file": str(path), "reason": f"protocol settings cannot be compared: {error}"})
            continue
        accepted.append((path, record, _identity(record, deviation)))
    configs: dict[tuple[str, str], set[str]] = {}
    weights: dict[tuple[str, str], set[str]] = {}
    for _, record, identity in accepted:
        backbone, method = record.identity.backbone.name, record.identity.method
        configs.setdefault((backbone, method.name), set()).add(canonical_json(method.config))
        weights.setdefault((record.kind, backbone), set()).add(canonical_json(identity["backbone"]))
    rows: dict[tuple[str, str], Row] = {}
    for path, record, identity in sorted(accepted, key=lambda item: item[1].finished_at):
        backbone = record.identity.backbone.name
        weights_differ = len(weights[(record.kind, backbone)]) > 1
        row = Row(record.kind, backbone, _method_label(record, configs), identity["budget"],
                  identity=identity, baseline=_baseline(record, identity),
                  variant=_variant_label(identity, weights_differ))
        row = rows.setdefault(row.key, row)
        task = record.identity.task.name
        config_hash = record.identity.config_hash
        if task in row.cells:
            same = "same config hash" if row.cells[task].config_hash == config_hash else "same identity"
            excluded.append({"file": row.cells[task].file, "reason": f"superseded by newer run {path} ({same})"})
        assert record.metrics is not None  # error records were excluded above
        trained = record.kind == "measured" and record.identity.protocol.variant is not None
        row.cells[task] = Cell(record.metrics.score, str(path), config_hash,
                               record.citation.to_json() if record.citation is not None else None, trained)
    return list(rows.values()), excluded


def _mean(row: Row, tasks: list[str]) -> float | None:
    if any(task not in row.cells for task in tasks):
        return None
    kinds = {(row.cells[t].score.metric, row.cells[t].score.higher_is_better) for t in tasks}
    if len(kinds) != 1:
        return None  # averaging mIoU with RMSE would mean nothing
    return sum(row.cells[t].score.value for t in tasks) / len(tasks)


def build_table(files: list[Path], suite_name: str, suite: dict[str, Any]) -> dict[str, Any]:
    """The leaderboard of one suite as a JSON-ready dict.

    Each row's delta is taken against the raw row of the same identity minus the method (same base
    backbone and weights, protocol, budget, settings, precision and seed); ``baseline`` names that row,
    ``None`` when there is none (then there is no delta).
    """
    tasks = list(suite["tasks"])
    rows, excluded = collect(files, suite)
    means = {row.key: _mean(row, tasks) for row in rows}
    raws = {row.key: row for row in rows if row.identity["method"]["name"] == BASELINE_METHOD}
    table_rows = []
    for row in rows:
        base = raws.get((row.kind, canonical_json(row.baseline)))
        deltas = {}
        if base is not None and base is not row:
            deltas = {t: row.cells[t].score.value - base.cells[t].score.value for t in tasks
                      if t in row.cells and t in base.cells}
        mean, base_mean = means[row.key], means.get(base.key) if base is not None else None
        table_rows.append({
            "kind": row.kind, "backbone": row.backbone, "method": row.method, "budget": row.budget,
            "variant": row.variant, "precision": row.identity["precision"],
            "weights": _weights_label(row.identity["backbone"]), "identity": row.identity,
            "baseline": None if base is None or base is row else
            {"backbone": base.backbone, "method": base.method, "variant": base.variant},
            "values": {t: row.cells[t].score.value for t in tasks if t in row.cells},
            "metrics": {t: row.cells[t].score.metric for t in tasks if t in row.cells},
            "complete": all(t in row.cells for t in tasks), "mean": mean,
            "delta_vs_raw": deltas,
            "mean_delta_vs_raw": None if mean is None or base_mean is None or base is row else mean - base_mean,
            "files": {t: row.cells[t].file for t in tasks if t in row.cells},
            "citations": sorted({json.dumps(c.citation, sort_keys=True) for c in row.cells.values() if c.citation}),
            # for the page (phreg_bench.leaderboard_page): each value's direction, whether the budget applies
            "higher_is_better": {t: row.cells[t].score.higher_is_better for t in tasks if t in row.cells},
            "budget_applies": any(cell.budget_applies for cell in row.cells.values()),
        })
    table_rows.sort(key=lambda r: (r["kind"] != "measured", r["mean"] is None, -(r["mean"] or 0),
                                   r["backbone"], r["method"], r["variant"]))
    return {"suite": suite_name, "description": suite.get("description", ""), "tasks": tasks,
            "rows": table_rows, "excluded": excluded}


def result_files_in(folders: list[Path]) -> list[Path]:
    return [path for folder in folders for path in result_files(folder)]


def build(folders: list[Path], suite_name: str, out_dir: Path) -> list[Path]:
    """Write the leaderboard of one suite (``<suite>.json``, ``<suite>.md``, ``index.html``) into ``out_dir``.

    Like :func:`build_all`, the folder then holds exactly this build: leaderboard files of other suites an
    earlier build left there are removed (see :func:`write_boards`).
    """
    from phreg_bench.registries import SUITES

    return write_boards([build_table(result_files_in(folders), suite_name, SUITES.get(suite_name))], out_dir)


def build_all(results_dir: Path, out_dir: Path, extra_folders: list[Path] | None = None) -> list[Path]:
    """Build every suite that has at least one accepted row in the results (see :func:`write_boards`)."""
    from phreg_bench.registries import SUITES

    files = result_files_in([results_dir, *(extra_folders or [])])
    boards = [build_table(files, entry.name, entry.resolve()) for entry in SUITES]
    return write_boards([board for board in boards if board["rows"]], out_dir)


def write_boards(boards: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write ``<suite>.json`` and ``<suite>.md`` per board and ``index.html`` (each atomically), then remove
    the leaderboard files an earlier build wrote that this one did not, so that the folder reflects exactly
    this build. Only leaderboard files are removed: a ``*.json`` holding a board and the ``.md`` of the same
    name that starts with that board's title; anything else in ``out_dir`` is left alone."""
    written: list[Path] = []
    for board in boards:
        json_path, md_path = out_dir / f"{board['suite']}.json", out_dir / f"{board['suite']}.md"
        write_json_atomic(json_path, board)
        write_text_atomic(md_path, to_markdown(board))
        written += [json_path, md_path]
    written.append(write_index(out_dir, boards))
    for path in stale_leaderboard_files(out_dir, keep=written):
        path.unlink(missing_ok=True)
    return written


def _read_board(path: Path) -> dict[str, Any] | None:
    """The board in ``path``, or ``None`` when the file is not a leaderboard (unreadable, other JSON)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and {"suite", "tasks", "rows"} <= set(data) else None


def stale_leaderboard_files(out_dir: Path, keep: list[Path]) -> list[Path]:
    """Leaderboard files in ``out_dir`` (top level only) that are not in ``keep``."""
    from phreg_bench.leaderboard_page import md_escape

    stale: list[Path] = []
    kept = {path.resolve() for path in keep}
    for path in sorted(out_dir.glob("*.json")) if out_dir.is_dir() else []:
        board = None if path.resolve() in kept else _read_board(path)
        if board is None:
            continue
        stale.append(path)
        markdown = path.with_suffix(".md")
        if markdown.resolve() not in kept and markdown.is_file():
            with markdown.open(encoding="utf-8", errors="replace") as stream:
                if stream.readline().rstrip("\n") == f"# {md_escape(board['suite'])}":
                    stale.append(markdown)
    return stale


def write_index(out_dir: Path, boards: list[dict[str, Any]] | None = None) -> Path:
    """Write ``out_dir/index.html`` showing ``boards`` (default: every board JSON in ``out_dir``)."""
    if boards is None:
        found = (_read_board(path) for path in sorted(out_dir.glob("*.json")))
        boards = [board for board in found if board is not None]
    index = out_dir / "index.html"
    write_text_atomic(index, to_html(boards, out_dir))
    return index
