"""Rendering of leaderboards (the dicts :func:`phreg_bench.leaderboard.build_table` returns) as Markdown and
as one self-contained HTML page.

The page: one table per suite in a horizontal scroll container with a sticky first column; every header
sorts its own table (numbers numerically, text in natural order, empty cells last, stable); each task
header names its main metric and direction (``↑ mIoU``, ``↓ RMSE``); a delta against ``raw`` is green when
it is an improvement in that direction and red when it is worse; measured values link to their result file
(relative to the page); reported (paper) rows carry ``†`` and a numbered citation listed under their table.
Columns that would be empty everywhere (budget for training-free tasks, mean and Δ mean when no row is
complete) are left out. Every string from a result file is HTML-escaped in the page (the Markdown keeps it
as plain text, see :func:`md_escape`), and a Content-Security-Policy allows only the page's own inline style
and script (no external resource is loaded).

The default row order keeps each backbone's rows together: measured before reported, backbones by name,
``raw`` first within its group, then the best mean first.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
from functools import cmp_to_key
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPORTED_MARK = "†"  # marks reported (paper) rows
BASELINE_METHOD = "raw"  # the method deltas are taken against; phreg_bench.leaderboard imports it from here
UP, DOWN = "↑", "↓"


# -- column model and row order (shared by Markdown and HTML) ----------------------------------------------------


def arrow(higher_is_better: bool) -> str:
    return UP if higher_is_better else DOWN


def _row_direction(row: dict[str, Any], task: str) -> bool | None:
    """``higher_is_better`` of one cell (rows without the field: ``None``, unknown)."""
    return (row.get("higher_is_better") or {}).get(task)


def task_metric(board: dict[str, Any], task: str) -> tuple[str, bool | None] | None:
    """The ``(metric, higher_is_better)`` every row with a value in ``task`` shares, or ``None`` if they differ.

    A column without any value gets ``("", None)``.
    """
    kinds = {(row["metrics"][task], _row_direction(row, task)) for row in board["rows"] if task in row["values"]}
    if not kinds:
        return "", None
    return next(iter(kinds)) if len(kinds) == 1 else None


def mean_metric(board: dict[str, Any]) -> tuple[str, bool | None] | None:
    """The metric the means average (means exist only for rows with one metric kind over all tasks)."""
    kinds = {task_metric(board, task) for task in board["tasks"]}
    kinds.discard(("", None))
    return next(iter(kinds)) if len(kinds) == 1 and None not in kinds else None


def budget_applies(row: dict[str, Any]) -> bool:
    """The training budget means something only for measured runs that train a probe."""
    return bool(row.get("budget_applies", row["kind"] == "measured"))


def columns(board: dict[str, Any]) -> list[dict[str, Any]]:
    """The columns shown for ``board``: ``key``, ``label``, ``type`` (text/num), ``first`` (asc/desc: the
    order of a header's first click; numbers best first) and, for metric columns, ``metric`` and ``higher``."""
    rows = board["rows"]
    cols: list[dict[str, Any]] = [{"key": "backbone", "label": "backbone", "type": "text", "first": "asc"},
                                  {"key": "method", "label": "method", "type": "text", "first": "asc"}]
    if any(budget_applies(row) for row in rows):
        cols.append({"key": "budget", "label": "budget", "type": "text", "first": "asc"})
    for task in board["tasks"]:
        metric = task_metric(board, task)
        name, higher = metric if metric is not None else ("mixed metrics", None)
        cols.append({"key": f"task:{task}", "task": task, "label": task, "type": "num", "metric": name,
                     "higher": higher, "first": "asc" if higher is False else "desc"})
    averaged = mean_metric(board)
    name, higher = averaged if averaged is not None else ("", None)
    if any(row.get("mean") is not None for row in rows):
        cols.append({"key": "mean", "label": "mean", "type": "num", "metric": name, "higher": higher,
                     "first": "asc" if higher is False else "desc"})
    if any(row.get("mean_delta_vs_raw") is not None for row in rows):
        cols.append({"key": "mean_delta", "label": "Δ mean", "type": "num", "metric": "vs raw", "higher": higher,
                     "first": "asc" if higher is False else "desc"})
    return cols


def method_label(row: dict[str, Any]) -> str:
    """The method, with the row's variant (what sets its identity apart, e.g. ``bf16``) in brackets."""
    variant = row.get("variant")
    return f"{row['method']} ({variant})" if variant else str(row["method"])


def sort_value(row: dict[str, Any], column: dict[str, Any]) -> str | float | None:
    """The value a column sorts ``row`` by (``None``: empty, sorted last in both directions)."""
    key = column["key"]
    if key == "backbone":
        return str(row["backbone"])
    if key == "method":
        return method_label(row)
    if key == "budget":
        return str(row["budget"]) if budget_applies(row) else None
    if key == "mean":
        return row.get("mean")
    if key == "mean_delta":
        return row.get("mean_delta_vs_raw")
    return row["values"].get(column["task"])


def natural_compare(a: str, b: str) -> int:
    """Case-insensitive natural order (``vit-b8`` < ``vit-b16``); the page's script does the same."""
    runs_a, runs_b = re.findall(r"[0-9]+|[^0-9]+", a.lower()), re.findall(r"[0-9]+|[^0-9]+", b.lower())
    for x, y in zip(runs_a, runs_b, strict=False):
        if x == y:
            continue
        if x[0] in "0123456789" and y[0] in "0123456789" and int(x) != int(y):
            return -1 if int(x) < int(y) else 1
        return -1 if x < y else 1
    if len(runs_a) != len(runs_b):
        return -1 if len(runs_a) < len(runs_b) else 1
    return -1 if a < b else (1 if a > b else 0)


def _better_first(higher: bool | None, value: float | None) -> float:
    return float("inf") if value is None else (-value if higher is not False else value)


def display_order(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows in the default order: measured first, then reported; within a kind, backbones by name
    (natural order), ``raw`` first within each backbone, then the best mean, then method and budget."""
    averaged = mean_metric(board)
    higher = averaged[1] if averaged is not None else True

    def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
        reported_a, reported_b = a["kind"] != "measured", b["kind"] != "measured"
        if reported_a != reported_b:
            return -1 if reported_b else 1
        order = natural_compare(str(a["backbone"]), str(b["backbone"]))
        if order:
            return order
        keys_a = (a["method"] != BASELINE_METHOD, _better_first(higher, a.get("mean")))
        keys_b = (b["method"] != BASELINE_METHOD, _better_first(higher, b.get("mean")))
        if keys_a != keys_b:
            return -1 if keys_a < keys_b else 1
        return natural_compare(str(a["method"]), str(b["method"])) or natural_compare(str(a["budget"]),
                                                                                       str(b["budget"]))

    return sorted(board["rows"], key=cmp_to_key(compare))


def citations(board: dict[str, Any]) -> list[dict[str, Any]]:
    """The distinct citations of the board's rows, in order of first appearance in the default order."""
    seen: list[dict[str, Any]] = []
    for row in display_order(board):
        for text in row.get("citations") or []:
            citation = json.loads(text) if isinstance(text, str) else text
            if citation not in seen:
                seen.append(citation)
    return seen


def _row_citation_numbers(row: dict[str, Any], cited: list[dict[str, Any]]) -> list[int]:
    own = [json.loads(text) if isinstance(text, str) else text for text in row.get("citations") or []]
    return [cited.index(c) + 1 for c in own if c in cited]


def citation_text(citation: dict[str, Any]) -> str:
    """``arXiv:2505.21501, Table 2 — Vision Transformers with Self-Distilled Registers``."""
    parts = [str(citation.get(key)) for key in ("source", "table") if citation.get(key)]
    text = ", ".join(parts) or json.dumps(citation, sort_keys=True)
    return f"{text} — {citation['title']}" if citation.get("title") else text


def _arxiv_url(citation: dict[str, Any]) -> str | None:
    match = re.fullmatch(r"arXiv:(\d{4}\.\d{4,5})(v\d+)?", str(citation.get("source", "")))
    return f"https://arxiv.org/abs/{match.group(1)}{match.group(2) or ''}" if match else None


def direction_class(delta: float | None, higher: bool | None) -> str:
    """``better`` / ``worse`` / ``same`` for a delta in a metric of direction ``higher`` (``""`` if unknown)."""
    if delta is None or higher is None:
        return ""
    if delta == 0:
        return "same"
    return "better" if (delta > 0) == higher else "worse"


# -- number formats ----------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def signed(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:+.{digits}f}"


def digits(value: float | None) -> int:
    """Four decimals for sub-unit metrics (RMSE in metres, Pearson), two for percentages."""
    return 4 if value is not None and abs(value) < 1 else 2


# -- Markdown ------------------------------------------------------------------------------------------------


_MD_SPECIAL = str.maketrans({"|": "\\|", "<": "\\<", ">": "\\>", "\n": " ", "\r": " "})


def md_escape(text: Any) -> str:
    """``text`` as one line of Markdown text: ``|`` (a table cell's end), ``<`` and ``>`` (raw HTML) are
    backslash-escaped (CommonMark, "Backslash escapes") and line breaks become spaces; nothing else changes
    (no HTML entities: the raw file reads as plain text)."""
    return str(text).translate(_MD_SPECIAL)


def md_code(text: Any) -> str:
    """``text`` as one Markdown code span, taken literally (``__`` in a file name is not emphasis): fenced by
    one backtick more than its longest run of backticks, padded with spaces when it starts or ends with one."""
    body = " ".join(str(text).splitlines())
    fence = "`" * (max((len(run) for run in re.findall("`+", body)), default=0) + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return f"{fence}{pad}{body}{pad}{fence}"


def _md_header(column: dict[str, Any]) -> str:
    label = md_escape(column["label"])
    if column["type"] == "num" and column.get("higher") is not None:
        return f"{label} ({arrow(column['higher'])} {md_escape(column['metric'])})"
    if column["key"] == "mean_delta":
        return "Δ mean vs raw"
    return label


def to_markdown(board: dict[str, Any]) -> str:
    """The board as a GitHub-flavoured Markdown table, its footnotes and its excluded files."""
    cols = columns(board)
    cited = citations(board)
    rows = display_order(board)
    lines = [f"# {md_escape(board['suite'])}", "", md_escape(board["description"]), "",
             "| " + " | ".join(_md_header(c) for c in cols) + " |",
             "|" + "|".join("---" if c["type"] == "text" else "--:" for c in cols) + "|"]
    for row in rows:
        cells = []
        for column in cols:
            key = column["key"]
            if key == "backbone":
                text = md_escape(row["backbone"])
                if row["kind"] == "reported":
                    numbers = "".join(f"[{n}]" for n in _row_citation_numbers(row, cited))
                    text += f" {REPORTED_MARK}{numbers}"
            elif key == "method":
                text = md_escape(method_label(row))
            elif key == "budget":
                text = md_escape(row["budget"]) if budget_applies(row) else ""
            elif key == "mean":
                text = fmt(row.get("mean"))
            elif key == "mean_delta":
                text = signed(row.get("mean_delta_vs_raw"))
            else:
                value = row["values"].get(column["task"])
                delta = row["delta_vs_raw"].get(column["task"])
                text = fmt(value, digits(value))
                if column.get("higher") is None and value is not None:
                    text += f" {md_escape(row['metrics'][column['task']])}"
                if delta is not None:
                    text += f" ({signed(delta, digits(value))})"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Values: each task's main metric (↑ higher is better, ↓ lower is better); in parentheses the "
              "difference to `raw` on the same backbone. Mean only for complete rows with one metric kind."]
    if any(row["kind"] == "reported" for row in rows):
        lines += ["", f"{REPORTED_MARK} reported in a paper, never averaged with measured runs:"]
        lines += [f"[{n}] {md_escape(citation_text(c))}" + ("  " if n < len(cited) else "")
                  for n, c in enumerate(cited, 1)]
    if board["excluded"]:
        lines += ["", "## Excluded files", ""]
        lines += [f"- {md_code(item['file'])}: {md_escape(item['reason'])}"
                  for item in board["excluded"]]
    return "\n".join(lines) + "\n"


# -- HTML ----------------------------------------------------------------------------------------------------

STYLE = """
:root{--better:#116329;--worse:#b3261e;--line:#d0d7de;--head:#f3f4f6;--stripe:#fafbfc}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.2em;color:#1f2328;font-size:14px}
h1{font-size:1.5em;margin:.2em 0 .3em}p.legend{margin:0 0 .6em;color:#57606a}
h2{font-size:1.2em;margin:1.6em 0 .2em}p.desc{margin:.2em 0 .6em;color:#57606a}
nav a{margin-right:1em}
.scroll{overflow-x:auto;max-width:100%;width:fit-content;border:1px solid var(--line);border-radius:4px}
table.board{border-collapse:separate;border-spacing:0;font-variant-numeric:tabular-nums}
table.board th,table.board td{padding:4px 8px;border-bottom:1px solid var(--line);vertical-align:top;
  text-align:right;white-space:nowrap}
table.board thead th{background:var(--head);vertical-align:bottom;position:relative;padding:0}
table.board thead th button{all:unset;box-sizing:border-box;display:block;width:100%;padding:4px 8px;
  cursor:pointer;text-align:inherit}
table.board thead th button:focus-visible{outline:2px solid #0969da;outline-offset:-2px}
table.board th.t,table.board td.t{text-align:left}
table.board .sticky{position:sticky;left:0;z-index:1;background:#fff;border-right:1px solid var(--line)}
table.board thead .sticky{z-index:2;background:var(--head)}
table.board tbody tr:nth-child(even) td,table.board tbody tr:nth-child(even) th{background:var(--stripe)}
table.board tbody th{font-weight:600}
.fam{display:block;font-size:80%;font-weight:400;color:#57606a}
.metric{display:block;font-size:80%;font-weight:400;color:#57606a}
.ind{display:inline-block;width:1em;color:#8c959f}
th[aria-sort=ascending] .ind::after{content:"\\25B2";color:#1f2328}
th[aria-sort=descending] .ind::after{content:"\\25BC";color:#1f2328}
th[aria-sort=none] .ind::after{content:"\\21C5"}
td a{color:inherit;text-decoration:none;border-bottom:1px dotted #8c959f}
td a:hover{color:#0969da}
.d{display:block;font-size:80%}
.better{color:var(--better)}.worse{color:var(--worse)}.d.same{color:#57606a}
tr.reported th,tr.reported td{color:#57606a;font-style:italic}
tr.reported .d.better{color:var(--better)}tr.reported .d.worse{color:var(--worse)}
sup{font-size:75%;font-style:normal}
.notes{font-size:90%;color:#57606a;margin:.4em 0}.notes ol{margin:.2em 0;padding-left:1.6em}
details{margin:.4em 0;font-size:90%}
""".strip()

# Sorting: each table on its own; numbers numerically, text in natural order, empty cells last in both
# directions, ties keep their current order (stable). The same rules as natural_compare/sort_value above.
SCRIPT = """
(function () {
  'use strict';
  function runs(s) { return s.toLowerCase().match(/[0-9]+|[^0-9]+/g) || []; }
  function natural(a, b) {
    var x = runs(a), y = runs(b), n = Math.min(x.length, y.length);
    for (var i = 0; i < n; i++) {
      if (x[i] === y[i]) { continue; }
      if (/^[0-9]/.test(x[i]) && /^[0-9]/.test(y[i]) && Number(x[i]) !== Number(y[i])) {
        return Number(x[i]) < Number(y[i]) ? -1 : 1;
      }
      return x[i] < y[i] ? -1 : 1;
    }
    if (x.length !== y.length) { return x.length < y.length ? -1 : 1; }
    return a < b ? -1 : (a > b ? 1 : 0);
  }
  function value(cell, numeric) {
    var v = cell.getAttribute('data-v');
    if (v === null || v === '') { return null; }
    return numeric ? Number(v) : v;
  }
  document.querySelectorAll('table.board').forEach(function (table) {
    var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
    heads.forEach(function (th, column) {
      th.addEventListener('click', function () {
        var numeric = th.getAttribute('data-type') === 'num';
        var current = th.getAttribute('aria-sort');
        var first = th.getAttribute('data-first') === 'desc' ? 'descending' : 'ascending';
        var order = current === 'none' ? first : (current === 'ascending' ? 'descending' : 'ascending');
        var sign = order === 'ascending' ? 1 : -1;
        heads.forEach(function (other) { other.setAttribute('aria-sort', 'none'); });
        th.setAttribute('aria-sort', order);
        var body = table.tBodies[0];
        var items = Array.prototype.map.call(body.rows, function (row, index) {
          return {row: row, index: index, v: value(row.cells[column], numeric)};
        });
        items.sort(function (a, b) {
          if (a.v === null || b.v === null) {
            return a.v === b.v ? a.index - b.index : (a.v === null ? 1 : -1);
          }
          var c = numeric ? (a.v < b.v ? -1 : (a.v > b.v ? 1 : 0)) : natural(a.v, b.v);
          return c !== 0 ? sign * c : a.index - b.index;
        });
        items.forEach(function (item) { body.appendChild(item.row); });
      });
    });
  });
})();
""".strip()


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def content_security_policy() -> str:
    """Nothing but the page's own style and script (by hash): no external resource, no inline handler."""
    return f"default-src 'none'; style-src {_csp_hash(STYLE)}; script-src {_csp_hash(SCRIPT)}"


def _attr(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _file_link(file: str, out_dir: Path | None) -> str | None:
    """A relative URL from the page in ``out_dir`` to a result file (``None`` when none can be made)."""
    if out_dir is None:
        return None
    try:
        relative = os.path.relpath(Path(file).resolve(), out_dir.resolve())
    except ValueError:  # another drive (Windows)
        return None
    return quote(Path(relative).as_posix())


def _anchor(suite: str) -> str:
    return "board-" + re.sub(r"[^A-Za-z0-9_-]+", "-", suite)


def _html_header(column: dict[str, Any]) -> str:
    classes = "t sticky" if column["key"] == "backbone" else ("t" if column["type"] == "text" else "")
    if "task" in column:
        family, _, dataset = column["task"].partition("/")
        label = (f"<span class='fam'>{html.escape(family)}/</span>{html.escape(dataset)}" if dataset
                 else html.escape(column["task"]))
    else:
        label = html.escape(column["label"])
    if column["type"] == "num":
        higher = column.get("higher")
        if column["key"] == "mean_delta":
            metric = "vs raw"
        elif higher is None:
            metric = column.get("metric", "")
        else:
            metric = f"{arrow(higher)} {column['metric']}"
        label += f"<span class='metric'>{html.escape(metric) or '&nbsp;'}</span>"
    title = {"backbone": "backbone (click to sort)", "method": "method", "budget": "probe training budget",
             "mean": "mean over the suite's tasks (complete rows with one metric kind only)",
             "mean_delta": "mean minus the mean of raw on the same backbone"}.get(column["key"], column["label"])
    return (f"<th scope='col' class='{classes}' data-key='{_attr(column['key'])}' data-type='{column['type']}' "
            f"data-first='{column['first']}' aria-sort='none' title='{_attr(title)}'>"
            f"<button type='button'>{label}<span class='ind' aria-hidden='true'></span></button></th>")


def _html_cell(row: dict[str, Any], column: dict[str, Any], cited: list[dict[str, Any]],
               out_dir: Path | None, anchor: str) -> str:
    key = column["key"]
    value = sort_value(row, column)
    data = "" if value is None else (repr(float(value)) if column["type"] == "num" else str(value))
    attrs = f" data-v='{_attr(data)}'"
    if key == "backbone":
        text = html.escape(str(row["backbone"]))
        if row["kind"] == "reported":
            refs = ",".join(f"<a href='#{anchor}-cite-{n}'>{n}</a>" for n in _row_citation_numbers(row, cited))
            text += f" {REPORTED_MARK}" + (f"<sup>[{refs}]</sup>" if refs else "")
        return f"<th scope='row' class='t sticky'{attrs}>{text}</th>"
    if column["type"] == "text":
        return f"<td class='t'{attrs}>{html.escape(data)}</td>"
    if key == "mean":
        return f"<td{attrs}>{fmt(row.get('mean'))}</td>"
    if key == "mean_delta":
        delta = row.get("mean_delta_vs_raw")
        cls = direction_class(delta, column.get("higher"))
        return f"<td{attrs}><span class='d {cls}'>{signed(delta)}</span></td>" if delta is not None \
            else f"<td{attrs}></td>"
    task = column["task"]
    number = row["values"].get(task)
    if number is None:
        return f"<td{attrs}>—</td>"
    shown = fmt(number, digits(number))
    if column.get("higher") is None:
        shown += f" <small>{html.escape(str(row['metrics'][task]))}</small>"
    link = _file_link(row["files"][task], out_dir) if row["kind"] == "measured" and task in row.get("files", {}) \
        else None
    if link is not None:
        shown = f"<a href='{_attr(link)}' title='result file'>{shown}</a>"
    delta = row["delta_vs_raw"].get(task)
    if delta is not None:
        cls = direction_class(delta, _row_direction(row, task))
        shown += f"<span class='d {cls}'>{signed(delta, digits(number))}</span>"
    return f"<td{attrs}>{shown}</td>"


def to_html(boards: list[dict[str, Any]], out_dir: Path | None = None) -> str:
    """One self-contained page with a sortable table per board; ``out_dir`` (where the page will be written)
    makes the measured values links to their result files."""
    # One citation list for the page, numbered in order of appearance, so that [n] means the same everywhere.
    cited: list[dict[str, Any]] = []
    for board in boards:
        cited += [c for c in citations(board) if c not in cited]
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             f"<meta http-equiv='Content-Security-Policy' content=\"{_attr(content_security_policy())}\">",
             "<meta name='viewport' content='width=device-width,initial-scale=1'>",
             f"<title>phreg-bench leaderboards</title><style>{STYLE}</style></head><body>",
             "<h1>phreg-bench leaderboards</h1>",
             "<p class='legend'>Each task's main metric (↑ higher is better, ↓ lower is better); below a value, its "
             "difference to <code>raw</code> on the same backbone (<span class='better'>green</span>: better, "
             "<span class='worse'>red</span>: worse). Measured values link to their result files. Click a header "
             "to sort; empty cells sort last.</p>"]
    if len(boards) > 1:
        parts.append("<nav>" + "".join(f"<a href='#{_attr(_anchor(b['suite']))}'>{html.escape(b['suite'])}</a>"
                                       for b in boards) + "</nav>")
    if not boards:
        parts.append("<p>No results yet.</p>")
    for board in boards:
        cols = columns(board)
        rows = display_order(board)
        anchor = _anchor(board["suite"])
        parts.append(f"<section id='{_attr(anchor)}'><h2>{html.escape(board['suite'])}</h2>"
                     f"<p class='desc'>{html.escape(board['description'])}</p>")
        parts.append("<div class='scroll'><table class='board'><thead><tr>"
                     + "".join(_html_header(c) for c in cols) + "</tr></thead><tbody>")
        for row in rows:
            cells = "".join(_html_cell(row, c, cited, out_dir, anchor) for c in cols)
            parts.append(f"<tr class='{_attr(row['kind'])}'>{cells}</tr>")
        parts.append("</tbody></table></div>")
        if any(row["kind"] == "reported" for row in rows):  # the † note only under tables with paper rows
            own = citations(board)
            items = "".join(f"<li value='{n}' id='{anchor}-cite-{n}'>{_citation_html(c)}</li>"
                            for n, c in enumerate(cited, 1) if c in own)
            parts.append(f"<div class='notes'>{REPORTED_MARK} reported in a paper, never averaged with measured "
                         f"runs.<ol>{items}</ol></div>")
        if board["excluded"]:
            parts.append(f"<details><summary>{len(board['excluded'])} excluded file(s)</summary><ul>")
            parts += [f"<li><code>{html.escape(str(item['file']))}</code>: {html.escape(str(item['reason']))}</li>"
                      for item in board["excluded"]]
            parts.append("</ul></details>")
        parts.append("</section>")
    parts.append(f"<script>{SCRIPT}</script></body></html>\n")
    return "".join(parts)


def _citation_html(citation: dict[str, Any]) -> str:
    text = html.escape(citation_text(citation))
    url = _arxiv_url(citation)
    return f"<a href='{_attr(url)}' rel='noreferrer'>{text}</a>" if url else text
