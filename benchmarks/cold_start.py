"""Cold start of the command line: wall time of `phreg-bench ls backbones` and `phreg-bench --help`.

    python benchmarks/cold_start.py --before-rev 2cfcaf3 [--runs 9] [--commands "ls backbones" "--help"]
    python benchmarks/cold_start.py --before /path/to/old/checkout

Runs each command as a fresh ``python -m phreg_bench …`` subprocess (output discarded) from two source trees,
``--before`` (a folder, or ``--before-rev``: a git revision exported with ``git archive`` into a temporary
folder) and ``--after`` (default: this checkout), alternating the trees run by run so that machine load
falls on both alike, after one untimed warm-up run of each (file cache). Prints the median and the fastest
wall time of each and the ratio of the medians (before / after: how many times faster). The commands only
list names, so the time is the interpreter start plus the imports. The last column says whether each
tree's command imported torch (``"torch" in sys.modules`` at exit of one more run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = ("import runpy, sys, atexit; "
         "atexit.register(lambda: sys.__stderr__.write('TORCH=%d\\n' % ('torch' in sys.modules))); "
         "sys.argv = ['phreg-bench', *sys.argv[1:]]; runpy.run_module('phreg_bench', run_name='__main__')")


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "120"}


def time_once(tree: Path, command: list[str]) -> float:
    """Seconds of one ``python -m phreg_bench <command>`` run from ``tree`` (raises if it fails)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "phreg_bench", *command], cwd=tree, env=_env(tree), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def imports_torch(tree: Path, command: list[str]) -> bool:
    done = subprocess.run([sys.executable, "-c", PROBE, *command], cwd=tree, env=_env(tree), check=False,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return "TORCH=1" in done.stderr


def export_revision(revision: str, into: Path) -> Path:
    """``git archive <revision>`` of this repository, unpacked into ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--before", type=Path, help="source tree of the old version")
    source.add_argument("--before-rev", help="git revision of the old version (exported with git archive)")
    parser.add_argument("--after", type=Path, default=ROOT, help="source tree of the new version (default: here)")
    parser.add_argument("--runs", type=int, default=9, help="timed runs per command and tree (default 9)")
    parser.add_argument("--commands", nargs="+", default=["ls backbones", "--help"],
                        help="commands to time (default: 'ls backbones' '--help')")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="phreg-cold-start-") as scratch:
        before = args.before or export_revision(args.before_rev, Path(scratch))
        trees = {"before": before.resolve(), "after": args.after.resolve()}
        print(f"python {sys.version.split()[0]}; {args.runs} runs per command; before={trees['before']} "
              f"after={trees['after']}")
        print(f"{'command':<16} {'before s':>9} {'after s':>9} {'ratio':>6}  (median; fastest)  torch b/a")
        for text in args.commands:
            command = text.split()
            times: dict[str, list[float]] = {"before": [], "after": []}
            for tree in trees.values():
                time_once(tree, command)  # warm-up: file cache
            for _ in range(args.runs):
                for label, tree in trees.items():
                    times[label].append(time_once(tree, command))
            med = {label: statistics.median(values) for label, values in times.items()}
            fast = {label: min(values) for label, values in times.items()}
            torch_flags = "/".join("yes" if imports_torch(tree, command) else "no" for tree in trees.values())
            print(f"{text:<16} {med['before']:>9.3f} {med['after']:>9.3f} {med['before'] / med['after']:>5.1f}x"
                  f"  ({fast['before']:.3f}; {fast['after']:.3f})  {torch_flags}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
