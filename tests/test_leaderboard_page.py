"""The leaderboard page in a real browser (headless Chromium through selenium and Debian's chromium-driver),
its Markdown twin, the output folder holding exactly one build, and the shipped reported files.

The browser test skips where chromium, chromedriver or selenium is missing, unless PHREG_REQUIRE_BROWSER=1
(set by .ci/run), which turns the skip into a failure.
"""

from __future__ import annotations

import functools
import html
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from phreg_bench.leaderboard import build_table, write_boards
from phreg_bench.leaderboard_page import natural_compare, to_html, to_markdown
from phreg_bench.registries import SUITES, TASK_FAMILIES, TASKS
from phreg_bench.results.records import (
    BackboneRef,
    MethodRef,
    Protocol,
    Provenance,
    ResultRecord,
    RunIdentity,
    TaskRef,
    Timings,
)
from phreg_bench.results.shipped import reported_dir
from phreg_bench.results.store import ResultStore, result_files
from phreg_bench.tasks.base import RunContext, TaskOutcome

HOSTILE = "<img src=x onerror=alert(1)>"
SEG = {"description": "two segmentation tasks", "tasks": ["synthetic/segmentation", "synthetic/other"]}
DEPTH = {"description": "a probe task (RMSE) and a segmentation task", "tasks": ["synthetic/depth", "synthetic/other"]}


class SyntheticProbe(TASK_FAMILIES.get("synthetic")):
    """A family that trains a probe: the run's budget is a fixed setting and the row variant (as in linseg)."""

    name = "synthetic-probe"
    settings_class = None
    variant_keys = ("budget",)

    def fixed_settings(self, ctx: RunContext) -> dict[str, Any]:
        return {"budget": ctx.budget}

    def row_variant(self, settings: dict[str, Any]) -> str | None:
        return settings["budget"]

    def recorded_preset(self, spec, settings: dict[str, Any]) -> dict[str, Any]:
        return self.resolve_settings(spec, settings["name"], RunContext(budget=settings["budget"]))


@pytest.fixture(autouse=True)
def extra_synthetic_tasks(monkeypatch):
    """Two more registered tasks so that boards can have several columns (``synthetic/depth`` trains a probe)."""
    base = TASKS.entry("synthetic/segmentation")
    family = TASK_FAMILIES.entry("synthetic")
    monkeypatch.setitem(TASK_FAMILIES._entries, SyntheticProbe.name,
                        type(family)(name=SyntheticProbe.name, target=SyntheticProbe))
    for name, family_name in (("synthetic/other", "synthetic"), ("synthetic/depth", SyntheticProbe.name)):
        spec = replace(base.target, name=name, family=family_name)
        monkeypatch.setitem(TASKS._entries, name, type(base)(name=name, target=spec))
    yield


def measured(store: ResultStore, backbone: str, method: str, task: str, value: float, *, metric: str = "mIoU",
             higher: bool = True, budget: str | None = None, protocol: str = "default", version: str = "1",
             family: str | None = None) -> Path:
    """A complete measured result; ``budget``: the run's budget, for a task whose family trains a probe."""
    # the settings the task's preset resolves to, as a run records them
    spec = TASKS.get(task)
    runner = TASK_FAMILIES.get(family or spec.family)()
    settings = runner.resolve_settings(spec, protocol, RunContext(budget=budget or "full"))
    identity = RunIdentity(
        task=TaskRef(task, family or spec.family, version, spec.spec_hash()),
        backbone=BackboneRef({"name": backbone, "weights_id": "w", "weights_sha256": "s"}),
        method=MethodRef(method, {}), protocol=Protocol(protocol, settings, runner.row_variant(settings)), seed=0,
        limit=None, precision="fp32")
    finished = "2026-01-01T00:00:00+00:00"
    record = ResultRecord.measured(
        identity, outcome=TaskOutcome(metric, {metric: value}, num_samples=4), higher_is_better=higher,
        expected_samples=4, timings=Timings(None),
        provenance=Provenance({}, {}, {}, [], started_at=finished, finished_at=finished))
    return store.write(record)


def fixture_boards(tmp_path: Path) -> list[dict[str, Any]]:
    """Three boards: the real ovseg suite (8 tasks; shipped paper rows plus measured rows), a two-task
    segmentation board with a hostile backbone name and ties, and a board mixing ↓ RMSE with ↑ mIoU where
    no row is complete (so no mean columns) and the budget applies."""
    store = ResultStore(tmp_path / "results")
    ovseg = SUITES.get("ovseg")
    ovseg_files = []
    for i, task in enumerate(ovseg["tasks"]):
        spec = TASKS.get(task)
        for method, offset in (("raw", 0.0), ("phreg", 2.5 - i), ("naclip", 1.0)):
            ovseg_files.append(measured(store, "openclip-vit-b16-laion2b", method, task, 30.0 + i + offset,
                                        protocol="phreg", version=spec.version, family="ovseg"))
    reported = [p for p in result_files(reported_dir()) if "ovseg__" in p.name]
    seg = [
        measured(store, "vit-b16", "raw", "synthetic/segmentation", 40.0),
        measured(store, "vit-b16", "raw", "synthetic/other", 20.0),
        measured(store, "vit-b16", "phreg", "synthetic/segmentation", 50.0),
        measured(store, "vit-b16", "phreg", "synthetic/other", 26.0),
        measured(store, "vit-b16", "naclip", "synthetic/segmentation", 38.0),  # incomplete row, worse than raw
        measured(store, "vit-b8", "raw", "synthetic/segmentation", 50.0),  # ties with vit-b16/phreg
        measured(store, "vit-b8", "raw", "synthetic/other", 30.0),
        measured(store, "vit-b8", "zeta", "synthetic/segmentation", 45.0),
        measured(store, "vit-b8", "zeta", "synthetic/other", 30.0),
        measured(store, HOSTILE, "raw", "synthetic/segmentation", 10.0),
        measured(store, HOSTILE, "raw", "synthetic/other", 5.0),
    ]
    depth = [
        measured(store, "vit-b16", "raw", "synthetic/depth", 0.50, metric="RMSE", higher=False, budget="full"),
        measured(store, "vit-b16", "phreg", "synthetic/depth", 0.40, metric="RMSE", higher=False, budget="full"),
        measured(store, "vit-b16", "bad", "synthetic/depth", 0.60, metric="RMSE", higher=False, budget="full"),
        measured(store, "vit-b16", "raw", "synthetic/depth", 0.55, metric="RMSE", higher=False, budget="quick"),
        measured(store, "vit-b8", "raw", "synthetic/other", 12.0),
    ]
    return [build_table(ovseg_files + reported, "ovseg", ovseg), build_table(seg, "seg", SEG),
            build_table(depth, "depth", DEPTH)]


# -- expected sort orders, computed here from the board data ------------------------------------------------


def identity(row: dict[str, Any]) -> tuple[str, str, str, str | None]:
    """What the page shows of a row's identity: kind (the row's class), backbone, method, budget (if shown)."""
    return (row["kind"], str(row["backbone"]), str(row["method"]), expected_value(row, "budget"))


def expected_value(row: dict[str, Any], key: str):
    if key == "backbone":
        return str(row["backbone"])
    if key == "method":
        return str(row["method"])
    if key == "budget":
        return row["budget"] if row["kind"] == "measured" and row.get("budget_applies") else None
    if key == "mean":
        return row["mean"]
    if key == "mean_delta":
        return row["mean_delta_vs_raw"]
    return row["values"].get(key.removeprefix("task:"))


def expected_first_direction(board: dict[str, Any], key: str) -> str:
    """Text ascending; a metric best first (descending for ↑, ascending for ↓)."""
    if key in ("backbone", "method", "budget"):
        return "ascending"
    tasks = board["tasks"] if key in ("mean", "mean_delta") else [key.removeprefix("task:")]
    directions = {row["higher_is_better"][t] for row in board["rows"] for t in tasks if t in row["values"]}
    return "ascending" if directions == {False} else "descending"


def stable_sorted(rows: list[dict[str, Any]], key: str, direction: str) -> list[dict[str, Any]]:
    """Empty values last in both directions; ties keep their current order."""
    present = [r for r in rows if expected_value(r, key) is not None]
    empty = [r for r in rows if expected_value(r, key) is None]
    if key in ("backbone", "method", "budget"):
        def compare(a, b):
            return natural_compare(expected_value(a, key), expected_value(b, key))
    else:
        def compare(a, b):
            x, y = expected_value(a, key), expected_value(b, key)
            return (x > y) - (x < y)
    sign = 1 if direction == "ascending" else -1
    ordered = sorted(present, key=functools.cmp_to_key(lambda a, b: sign * compare(a, b)))
    return ordered + empty


# -- the browser -----------------------------------------------------------------------------------------------


def _browser():
    """A headless Chromium driver, or a skip (a failure with PHREG_REQUIRE_BROWSER=1)."""
    required = os.environ.get("PHREG_REQUIRE_BROWSER") == "1"
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                    None)
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if chromium is None or driver_path is None or webdriver is None:
        missing = [name for name, found in (("chromium", chromium), ("chromedriver", driver_path),
                                            ("selenium", webdriver)) if found is None]
        message = (f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver; "
                   "pip install selenium)")
        if required:
            pytest.fail(message + " and PHREG_REQUIRE_BROWSER=1")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


# Installed before the page's own script runs: records dialogs, errors and CSP violations instead of trusting
# that none happened.
WATCH = """
window.__dialogs = []; window.__errors = [];
['alert', 'confirm', 'prompt'].forEach(function (name) {
  window[name] = function (message) { window.__dialogs.push(name + ':' + message); };
});
window.addEventListener('error', function (e) { window.__errors.push('error: ' + e.message); }, true);
window.addEventListener('unhandledrejection', function (e) { window.__errors.push('rejection: ' + e.reason); });
document.addEventListener('securitypolicyviolation', function (e) {
  window.__errors.push('csp: ' + e.violatedDirective + ' ' + e.blockedURI);
});
"""

ARIA_SORT = """
var table = document.querySelectorAll('table.board')[arguments[0]];
return Array.prototype.map.call(table.tHead.rows[0].cells, function (th) { return th.getAttribute('aria-sort'); });
"""

DOM_ORDER = """
var table = document.querySelectorAll('table.board')[arguments[0]];
var keys = Array.prototype.map.call(table.tHead.rows[0].cells, function (th) { return th.dataset.key; });
var budget = keys.indexOf('budget');
return Array.prototype.map.call(table.tBodies[0].rows, function (row) {
  var b = budget < 0 ? null : (row.cells[budget].getAttribute('data-v') || null);
  return [row.className, row.cells[0].getAttribute('data-v'), row.cells[1].getAttribute('data-v'), b];
});
"""


@pytest.mark.slow
def test_page_in_headless_chromium(tmp_path):
    boards = fixture_boards(tmp_path)
    out = tmp_path / "board"
    write_boards(boards, out)
    index = out / "index.html"
    driver = _browser()
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH})
        driver.get(index.as_uri())
        tables = driver.find_elements("css selector", "table.board")
        assert len(tables) == len(boards)
        driver.set_window_size(1400, 2000)
        screenshot = tmp_path / "leaderboard.png"  # the default order, for a look
        assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
        print(f"screenshot: {screenshot}")
        driver.set_window_size(1400, 1000)

        for t, board in enumerate(boards):
            assert len({identity(r) for r in board["rows"]}) == len(board["rows"])
            heads = tables[t].find_elements("css selector", "thead th")
            keys = [th.get_attribute("data-key") for th in heads]
            current = [r for r in _default(board)]
            for column, key in enumerate(keys):
                first = expected_first_direction(board, key)
                for click in range(2):
                    direction = first if click == 0 else ("descending" if first == "ascending" else "ascending")
                    heads[column].click()
                    states = driver.execute_script(ARIA_SORT, t)
                    assert states == [direction if i == column else "none" for i in range(len(heads))], \
                        (board["suite"], key)
                    current = stable_sorted(current, key, direction)
                    shown = [tuple(item) for item in driver.execute_script(DOM_ORDER, t)]
                    expected = [identity(r) for r in current]
                    assert shown == expected, f"{board['suite']}: column {key} {direction}"

        # the hostile name: shown literally, no element made of it, no dialog, no error
        assert driver.execute_script("return document.querySelectorAll('img').length") == 0
        names = [c.text for c in tables[1].find_elements("css selector", "tbody th")]
        assert HOSTILE in names
        assert driver.execute_script("return window.__dialogs") == []
        assert driver.execute_script("return window.__errors") == []
        severe = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
        assert severe == [], severe
        _check_layout(driver, boards, tables, tmp_path)
    finally:
        driver.quit()


def _default(board: dict[str, Any]) -> list[dict[str, Any]]:
    """The page's default order, checked against its rules: measured first, each backbone's rows together,
    raw first within them."""
    from phreg_bench.leaderboard_page import display_order

    rows = display_order(board)
    kinds = [r["kind"] for r in rows]
    assert kinds == sorted(kinds, key=lambda k: k != "measured")
    groups = [(r["kind"], r["backbone"]) for r in rows]
    assert all(groups.index(g) == i or groups[i - 1] == g for i, g in enumerate(groups)), "a backbone split apart"
    for group in set(groups):
        methods = [r["method"] for r in rows if (r["kind"], r["backbone"]) == group]
        if "raw" in methods:
            assert methods[0] == "raw", group
    return rows


def _check_layout(driver, boards, tables, tmp_path) -> None:
    """Fits 1400 px, sticky first column, aligned headers, metric arrows, Δ colours, links, footnotes."""
    script = "var s = arguments[0].closest('.scroll'); return [s.scrollWidth, s.clientWidth];"
    for t, board in enumerate(boards):
        scroll_width, client_width = driver.execute_script(script, tables[t])
        assert scroll_width <= client_width, f"{board['suite']} does not fit 1400 px ({scroll_width} > {client_width})"
        heads = tables[t].find_elements("css selector", "thead th")
        first_row = tables[t].find_elements("css selector", "tbody tr")[0].find_elements("css selector", "th, td")
        for th, cell in zip(heads, first_row, strict=True):
            assert th.value_of_css_property("text-align") == cell.value_of_css_property("text-align")
        for task in board["tasks"]:  # each task header names its metric and direction
            (higher,) = {r["higher_is_better"][task] for r in board["rows"] if task in r["values"]}
            (metric,) = {r["metrics"][task] for r in board["rows"] if task in r["values"]}
            label = tables[t].find_element("css selector", f"thead th[data-key='task:{task}']").text
            assert f"{'↑' if higher else '↓'} {metric}" in label
        keys = [th.get_attribute("data-key") for th in heads]
        assert ("mean" in keys) == any(r["mean"] is not None for r in board["rows"])  # no dead columns
        assert ("budget" in keys) == (t == 2)  # only where a probe was trained
        section = tables[t].find_element("xpath", "ancestor::section").text
        assert ("reported in a paper" in section) == any(r["kind"] == "reported" for r in board["rows"])
    # ovseg: backbone names on one line; a reported row carries its citation
    names = tables[0].find_elements("css selector", "tbody th")
    heights = {round(n.size["height"]) for n in names}
    assert max(heights) < 2 * min(heights), "a backbone name wraps"
    assert "arXiv:2505.21501" in tables[0].find_element("xpath", "ancestor::section").text
    # Δ colours follow the metric's direction: in RMSE a smaller value is better
    colour = "return getComputedStyle(arguments[0]).color"
    depth_rows = tables[2].find_elements("css selector", "tbody tr")
    cells = {(r.find_elements("css selector", "td")[0].text, r.find_elements("css selector", "td")[1].text):
             r.find_elements("css selector", "td")[2] for r in depth_rows}
    better = cells[("phreg", "full")].find_element("css selector", ".d")
    worse = cells[("bad", "full")].find_element("css selector", ".d")
    assert better.text.startswith("-") and "better" in better.get_attribute("class")
    assert worse.text.startswith("+") and "worse" in worse.get_attribute("class")
    green, red = driver.execute_script(colour, better), driver.execute_script(colour, worse)
    assert green != red and green == "rgb(17, 99, 41)" and red == "rgb(179, 38, 30)"
    # measured values link to their result file, relative to the page
    link = cells[("phreg", "full")].find_element("css selector", "a")
    row = next(r for r in boards[2]["rows"] if r["method"] == "phreg")
    assert link.get_attribute("href") == Path(row["files"]["synthetic/depth"]).resolve().as_uri()
    assert not link.get_dom_attribute("href").startswith(("/", "file:"))
    # a sticky first column: in a narrow window the table scrolls and the backbone stays in view
    driver.set_window_size(700, 1000)
    scroll = tables[0].find_element("xpath", "ancestor::div[@class='scroll']")
    driver.execute_script("arguments[0].scrollLeft = 300", scroll)
    first = tables[0].find_element("css selector", "tbody th")
    left = driver.execute_script("return [arguments[0].getBoundingClientRect().left, "
                                 "arguments[1].getBoundingClientRect().left]", first, scroll)
    assert driver.execute_script("return arguments[0].scrollLeft", scroll) > 0
    assert abs(left[0] - left[1]) <= 2, left
    driver.save_screenshot(str(tmp_path / "narrow.png"))
    driver.execute_script("arguments[0].scrollLeft = 0", scroll)


# -- without a browser ---------------------------------------------------------------------------------------------


def test_page_has_no_external_resources_and_escapes_everything(tmp_path):
    page = to_html(fixture_boards(tmp_path), tmp_path / "board")
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<link" not in page and "<script src" not in page and "<img" not in page and "@import" not in page
    assert page.count("<script>") == 1 and page.count("<style>") == 1
    assert "Content-Security-Policy" in page and "default-src 'none'" in html.unescape(page)


def test_markdown_names_metrics_and_keeps_footnotes_where_they_belong(tmp_path):
    ovseg, seg, depth = fixture_boards(tmp_path)
    text = to_markdown(depth)
    header = text.splitlines()[4]
    assert "synthetic/depth (↓ RMSE)" in header and "synthetic/other (↑ mIoU)" in header
    assert "| budget |" in header and "mean" not in header  # no row is complete: no mean columns
    assert "†" not in text
    assert "budget" not in to_markdown(seg).splitlines()[4]  # nothing was trained
    reported = to_markdown(ovseg)
    assert "†" in reported and "arXiv:2505.21501" in reported
    lines = [line for line in to_markdown(seg).splitlines() if line.startswith("| vit-b8")]
    assert lines[0].startswith("| vit-b8 | raw |")  # raw first within its backbone
    assert HOSTILE not in to_markdown(seg)


def test_output_folder_holds_exactly_one_build(tmp_path):
    boards = fixture_boards(tmp_path)
    out = tmp_path / "board"
    keep = out / "notes.json"
    out.mkdir()
    keep.write_text(json.dumps({"mine": True}))
    (out / "readme.md").write_text("# seg\n")  # not a leaderboard file (no board JSON of that name)
    write_boards(boards, out)
    assert {p.name for p in out.iterdir()} == {"ovseg.json", "ovseg.md", "seg.json", "seg.md", "depth.json",
                                               "depth.md", "index.html", "notes.json", "readme.md"}
    (out / "depth.md").write_text("edited by hand\n")  # a .md that is no longer the board's: left alone
    written = write_boards(boards[1:2], out)  # e.g. a rebuild with --no-reported
    assert {p.name for p in out.iterdir()} == {"seg.json", "seg.md", "index.html", "notes.json", "readme.md",
                                               "depth.md"}
    assert {p.name for p in written} == {"seg.json", "seg.md", "index.html"}
    page = (out / "index.html").read_text()
    assert "ovseg" not in page and "openclip" not in page
    assert not list(out.glob(".*"))  # no temp files


def test_cli_no_reported_into_an_old_folder(tmp_path, monkeypatch):
    from phreg_bench.cli import main

    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    measured(ResultStore(results), "vit", "raw", "synthetic/segmentation", 1.0)
    assert main(["leaderboard", "--results-dir", str(results), "--out", "lb"]) == 0
    assert (tmp_path / "lb" / "probes.json").exists() and (tmp_path / "lb" / "ovseg.json").exists()
    assert main(["leaderboard", "--results-dir", str(results), "--out", "lb", "--no-reported"]) == 0
    assert sorted(p.name for p in (tmp_path / "lb").iterdir()) == ["index.html", "synthetic.json", "synthetic.md"]


@pytest.mark.slow
def test_wheel_ships_the_reported_files(tmp_path):
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(root)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("phreg_bench-*.whl")
    names = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("phreg_bench/reported_results/")}
    shipped = {f"phreg_bench/reported_results/{p.relative_to(reported_dir()).as_posix()}"
               for p in result_files(reported_dir())}
    assert len(shipped) > 100 and names == shipped
