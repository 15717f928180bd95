"""Leaderboards built from result files only: JSON, Markdown and one self-contained HTML page.

Rules: a row is one result identity minus the task (backbone and weights, method and config, protocol,
budget and feature mode, settings overridden from the preset, precision, seed), columns the suite's tasks;
runs that differ in any of these are separate rows whose ``variant`` names the difference, and only a rerun of
the same identity supersedes (the newest is kept). A mean only for complete rows whose main metrics agree in
name and direction; a delta against the raw row of the same identity minus the method (a ``phreg:<base>``
backbone's base is ``<base>``); every file left out is listed with the reason (invalid, version, spec or
protocol mismatch, partial run, superseded). Reported (paper) rows carry a marker and are never averaged
with measured runs.
"""

from __future__ import annotations

import hashlib
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phreg_bench.results.hashing import backbone_identity, base_backbone_identity, canonical_json
from phreg_bench.results.schema import ResultError
from phreg_bench.results.store import read_result, result_files, write_json_atomic, write_text_atomic

REPORTED_MARK = "†"
BASELINE_METHOD = "raw"


@dataclass
class Row:
    kind: str
    backbone: str
    method: str
    budget: str
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> {value, metric, file, ...}
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


def _method_label(record: dict[str, Any], configs_by_method: dict[tuple[str, str], set[str]]) -> str:
    name = record["method"]["name"]
    config = canonical_json(record["method"].get("config", {}))
    if len(configs_by_method[(record["backbone"]["name"], name)]) > 1:
        return f"{name}[{hashlib.sha256(config.encode()).hexdigest()[:6]}]"
    return name


_UNRECORDED = "(unrecorded)"


def _precision(record: dict[str, Any]) -> str | None:
    """What ran: the record's ``precision``; older files: autocast only ever ran on CUDA (None: reported)."""
    if record["kind"] != "measured":
        return None
    if "precision" in record:
        return record["precision"]
    timings = record.get("timings") or {}
    return timings.get("precision", "fp32") if str(timings.get("device", "")).startswith("cuda") else "fp32"


def _settings_deviation(record: dict[str, Any], spec) -> dict[str, Any]:
    """Recorded protocol settings that differ from the task's preset (overrides), key -> recorded value.

    Raises :class:`~phreg_bench.tasks.settings.ProtocolError` when the preset cannot be resolved.
    """
    if record["kind"] != "measured":
        return {}  # a paper's number: only its protocol name and budget are known
    from phreg_bench.registries import TASK_FAMILIES
    from phreg_bench.tasks.base import RunContext

    settings = record["protocol"]["settings"]
    family = TASK_FAMILIES.get(spec.family)()
    budget = RunContext(budget=settings.get("budget", "full"))
    preset = family.resolve_settings(spec, record["protocol"]["name"], budget)
    missing = object()
    deviation = {}
    for key in sorted((set(settings) | set(preset)) - {"name", "budget"}):
        value = settings.get(key, missing)
        if value != preset.get(key, missing):
            deviation[key] = _UNRECORDED if value is missing else value
    return deviation


def _identity(record: dict[str, Any], deviation: dict[str, Any]) -> dict[str, Any]:
    """Everything in a result's identity except the task: what a leaderboard row is keyed on."""
    return {
        "backbone": backbone_identity(record["backbone"]),
        "method": {"name": record["method"]["name"], "config": record["method"].get("config", {})},
        "protocol": record["protocol"]["name"],
        "budget": _variant(record["protocol"]["settings"]),
        "settings": deviation,
        "precision": _precision(record),
        "seed": (record.get("provenance") or {}).get("seed", 0),
    }


def _baseline(record: dict[str, Any], identity: dict[str, Any]) -> dict[str, Any]:
    """The identity of the row this one's delta is taken against: the same, on the base backbone, method raw."""
    return {**identity, "backbone": base_backbone_identity(record["backbone"]),
            "method": {"name": BASELINE_METHOD, "config": {}}}


def _variant_label(identity: dict[str, Any], weights_differ: bool) -> str:
    parts = [f"{key} {value}" if value == _UNRECORDED else f"{key}={canonical_json(value)}"
             for key, value in identity["settings"].items() if key != "train_features"]  # shown in budget
    if identity["precision"] not in (None, "fp32"):
        parts.append(identity["precision"])
    if identity["seed"] not in (None, 0):
        parts.append(f"seed {identity['seed']}")
    if weights_differ:
        parts.append(f"weights {_weights_label(identity['backbone'])}")
    return ", ".join(parts)


def _weights_label(backbone: dict[str, Any]) -> str:
    sha = backbone.get("weights_sha256")
    return sha[:12] if sha else str(backbone.get("weights_id"))


def collect(files: list[Path], suite: dict[str, Any]) -> tuple[list[Row], list[dict[str, str]]]:
    """Sort result files into leaderboard rows and a list of excluded files with reasons.

    A row is keyed by the whole identity of its results except the task (backbone + weights, method +
    config, protocol, budget and feature mode, settings that differ from the preset, precision, seed):
    results that differ in any of these are separate rows, the difference named in ``Row.variant``. Only a
    result of the same identity and task is superseded (the newest is kept).
    """
    from phreg_bench.registries import TASKS
    from phreg_bench.tasks.settings import ProtocolError

    tasks = list(suite["tasks"])
    excluded: list[dict[str, str]] = []
    accepted: list[tuple[Path, dict[str, Any], dict[str, Any]]] = []
    for path in files:
        try:
            record = read_result(path)
        except ResultError as error:
            excluded.append({"file": str(path), "reason": f"invalid: {error}"})
            continue
        task = record["task"]["name"]
        if task not in tasks:
            continue
        spec = TASKS.get(task) if task in TASKS else None
        if spec is None:
            excluded.append({"file": str(path), "reason": f"unknown task {task!r}"})
        elif record["task"]["version"] != spec.version:
            excluded.append({"file": str(path), "reason": f"version mismatch: file has {task} "
                             f"v{record['task']['version']}, current is v{spec.version}"})
        elif record["kind"] == "measured" and record["task"].get("spec_hash") != spec.spec_hash():
            excluded.append({"file": str(path), "reason": f"task spec changed since this run: {task} spec_hash "
                             f"{str(record['task'].get('spec_hash'))[:12]}, current {spec.spec_hash()[:12]}"})
        elif record["protocol"]["name"] != _expected_protocol(suite, task, spec):
            excluded.append({"file": str(path), "reason": f"protocol mismatch: {record['protocol']['name']!r}, "
                             f"suite uses {_expected_protocol(suite, task, spec)!r}"})
        elif not record["status"]["complete"]:
            status = record["status"]
            excluded.append({"file": str(path), "reason": f"partial run: {status['num_samples']} of "
                             f"{status.get('expected_samples') or '?'} samples (limit {status.get('limit')})"})
        else:
            try:
                deviation = _settings_deviation(record, spec)
            except ProtocolError as error:
                excluded.append({"file": str(path), "reason": f"protocol settings cannot be compared: {error}"})
                continue
            accepted.append((path, record, _identity(record, deviation)))
    configs: dict[tuple[str, str], set[str]] = {}
    weights: dict[tuple[str, str], set[str]] = {}
    for _, record, identity in accepted:
        key = (record["backbone"]["name"], record["method"]["name"])
        configs.setdefault(key, set()).add(canonical_json(record["method"].get("config", {})))
        weights.setdefault((record["kind"], record["backbone"]["name"]), set()).add(
            canonical_json(identity["backbone"]))
    rows: dict[tuple[str, str], Row] = {}
    for path, record, identity in sorted(accepted, key=lambda item: _finished(item[1])):
        weights_differ = len(weights[(record["kind"], record["backbone"]["name"])]) > 1
        row = Row(record["kind"], record["backbone"]["name"], _method_label(record, configs), identity["budget"],
                  identity=identity, baseline=_baseline(record, identity),
                  variant=_variant_label(identity, weights_differ))
        row = rows.setdefault(row.key, row)
        task = record["task"]["name"]
        if task in row.cells:
            same = "same config hash" if row.cells[task]["config_hash"] == record["config_hash"] else "same identity"
            excluded.append({"file": row.cells[task]["file"], "reason": f"superseded by newer run {path} ({same})"})
        metrics = record["metrics"]
        row.cells[task] = {"value": metrics["values"][metrics["main"]], "metric": metrics["main"],
                           "higher_is_better": metrics["higher_is_better"], "file": str(path),
                           "citation": record.get("citation"), "config_hash": record["config_hash"]}
    return list(rows.values()), excluded


def _variant(settings: dict[str, Any]) -> str:
    """Runs that differ in training schedule or feature mode are kept in separate rows."""
    variant = str(settings.get("budget", "full"))
    if settings.get("train_features"):
        variant += f"/{settings['train_features']}"
    return variant


def _finished(record: dict[str, Any]) -> str:
    return (record.get("provenance") or {}).get("finished_at") or ""


def _mean(row: Row, tasks: list[str]) -> float | None:
    if any(task not in row.cells for task in tasks):
        return None
    kinds = {(row.cells[t]["metric"], row.cells[t]["higher_is_better"]) for t in tasks}
    if len(kinds) != 1:
        return None  # averaging mIoU with RMSE would mean nothing
    return sum(row.cells[t]["value"] for t in tasks) / len(tasks)


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
            deltas = {t: row.cells[t]["value"] - base.cells[t]["value"] for t in tasks
                      if t in row.cells and t in base.cells}
        mean, base_mean = means[row.key], means.get(base.key) if base is not None else None
        table_rows.append({
            "kind": row.kind, "backbone": row.backbone, "method": row.method, "budget": row.budget,
            "variant": row.variant, "precision": row.identity["precision"],
            "weights": _weights_label(row.identity["backbone"]), "identity": row.identity,
            "baseline": None if base is None or base is row else
            {"backbone": base.backbone, "method": base.method, "variant": base.variant},
            "values": {t: row.cells[t]["value"] for t in tasks if t in row.cells},
            "metrics": {t: row.cells[t]["metric"] for t in tasks if t in row.cells},
            "complete": all(t in row.cells for t in tasks), "mean": mean,
            "delta_vs_raw": deltas,
            "mean_delta_vs_raw": None if mean is None or base_mean is None or base is row else mean - base_mean,
            "files": {t: row.cells[t]["file"] for t in tasks if t in row.cells},
            "citations": sorted({json.dumps(c["citation"], sort_keys=True) for c in row.cells.values()
                                 if c["citation"]}),
        })
    table_rows.sort(key=lambda r: (r["kind"] != "measured", r["mean"] is None, -(r["mean"] or 0),
                                   r["backbone"], r["method"], r["variant"]))
    return {"suite": suite_name, "description": suite.get("description", ""), "tasks": tasks,
            "rows": table_rows, "excluded": excluded}


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:+.{digits}f}"


def _digits(value: float | None) -> int:
    """Four decimals for sub-unit metrics (RMSE in metres, Pearson), two for percentages."""
    return 4 if value is not None and abs(value) < 1 else 2


def to_markdown(board: dict[str, Any]) -> str:
    tasks = board["tasks"]
    lines = [f"# {board['suite']}", "", board["description"], "",
             "| backbone | method | budget | " + " | ".join(tasks) + " | mean | Δ mean vs raw |",
             "|---|---|---|" + "---|" * len(tasks) + "---|---|"]
    for row in board["rows"]:
        mark = f" {REPORTED_MARK}" if row["kind"] == "reported" else ""
        cells = []
        for task in tasks:
            value = row["values"].get(task)
            delta = row["delta_vs_raw"].get(task)
            shown = _fmt(value, _digits(value))
            cells.append(shown + (f" ({_signed(delta, _digits(value))})" if delta is not None else ""))
        method = row["method"] + (f" ({row['variant']})" if row.get("variant") else "")
        lines.append(f"| {_md_escape(row['backbone'])}{mark} | {_md_escape(method)} | {row['budget']} | "
                     + " | ".join(cells) + f" | {_fmt(row['mean'])} | {_signed(row['mean_delta_vs_raw'])} |")
    lines += ["", f"{REPORTED_MARK} reported in a paper (see the result file's citation), never averaged "
              "with measured runs. Mean only for complete rows with one metric kind."]
    if board["excluded"]:
        lines += ["", "## Excluded files", ""]
        lines += [f"- `{item['file']}`: {_md_escape(item['reason'])}" for item in board["excluded"]]
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return html.escape(str(text)).replace("|", "\\|")


_SORT_SCRIPT = """
document.querySelectorAll('table.board th').forEach(function (th, column) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.from(body.rows);
    var up = th.dataset.dir !== 'asc';
    th.dataset.dir = up ? 'asc' : 'desc';
    function key(row) { var t = row.cells[column].dataset.v || row.cells[column].textContent;
                        var n = parseFloat(t); return isNaN(n) ? t : n; }
    rows.sort(function (a, b) { var x = key(a), y = key(b);
      if (typeof x !== typeof y) { return typeof x === 'number' ? -1 : 1; }
      return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1); });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def to_html(boards: list[dict[str, Any]]) -> str:
    """One self-contained page; every string from a result file is escaped."""
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>phreg-bench leaderboards</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;"
             "margin-bottom:2em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "th{cursor:pointer;background:#f3f3f3}td.t{text-align:left}tr.reported{color:#666;"
             "font-style:italic}.d{color:#888;font-size:85%}</style></head><body>",
             "<h1>phreg-bench leaderboards</h1>"]
    for board in boards:
        tasks = board["tasks"]
        parts.append(f"<h2>{esc(board['suite'])}</h2><p>{esc(board['description'])}</p>")
        header = "".join(f"<th>{esc(t)}</th>" for t in ["backbone", "method", "budget", *tasks, "mean", "Δ mean"])
        parts.append(f"<table class='board'><thead><tr>{header}</tr></thead><tbody>")
        for row in board["rows"]:
            mark = f" {REPORTED_MARK}" if row["kind"] == "reported" else ""
            cells = [f"<td class='t'>{esc(row['backbone'])}{mark}</td>", f"<td class='t'>{esc(row['method'])}</td>",
                     f"<td class='t'>{esc(row['budget'])}</td>"]
            for task in tasks:
                value, delta = row["values"].get(task), row["delta_vs_raw"].get(task)
                extra = f" <span class='d'>{_signed(delta, _digits(value))}</span>" if delta is not None else ""
                shown = _fmt(value, _digits(value))
                cells.append(f"<td data-v='{'' if value is None else value}'>{shown}{extra}</td>")
            cells.append(f"<td>{_fmt(row['mean'])}</td><td>{_signed(row['mean_delta_vs_raw'])}</td>")
            parts.append(f"<tr class='{esc(row['kind'])}'>{''.join(cells)}</tr>")
        parts.append("</tbody></table>")
        if board["excluded"]:
            parts.append("<details><summary>excluded files</summary><ul>")
            parts += [f"<li><code>{esc(item['file'])}</code>: {esc(item['reason'])}</li>" for item in board["excluded"]]
            parts.append("</ul></details>")
    parts.append(f"<p>{REPORTED_MARK} reported in a paper, never averaged with measured runs.</p>")
    parts.append(f"<script>{_SORT_SCRIPT}</script></body></html>\n")
    return "".join(parts)


def result_files_in(folders: list[Path]) -> list[Path]:
    return [path for folder in folders for path in result_files(folder)]


def build(folders: list[Path], suite_name: str, out_dir: Path) -> list[Path]:
    """Write ``<suite>.json`` and ``<suite>.md`` for one suite, then refresh ``index.html``."""
    from phreg_bench.registries import SUITES

    board = build_table(result_files_in(folders), suite_name, SUITES.get(suite_name))
    json_path, md_path = out_dir / f"{suite_name}.json", out_dir / f"{suite_name}.md"
    write_json_atomic(json_path, board)
    write_text_atomic(md_path, to_markdown(board))
    return [json_path, md_path, write_index(out_dir)]


def write_index(out_dir: Path) -> Path:
    boards = []
    for path in sorted(out_dir.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and {"suite", "tasks", "rows"} <= set(data):
            boards.append(data)
    index = out_dir / "index.html"
    write_text_atomic(index, to_html(boards))
    return index


def build_all(results_dir: Path, out_dir: Path, extra_folders: list[Path] | None = None) -> list[Path]:
    """Build every suite that has at least one accepted row in the results."""
    from phreg_bench.registries import SUITES

    folders = [results_dir, *(extra_folders or [])]
    files = result_files_in(folders)
    written: list[Path] = []
    for entry in SUITES:
        board = build_table(files, entry.name, entry.resolve())
        if board["rows"]:
            write_json_atomic(out_dir / f"{entry.name}.json", board)
            write_text_atomic(out_dir / f"{entry.name}.md", to_markdown(board))
            written += [out_dir / f"{entry.name}.json", out_dir / f"{entry.name}.md"]
    written.append(write_index(out_dir))
    return written
