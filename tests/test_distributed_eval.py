"""Data-parallel evaluation and probes under ``torch.distributed`` (gloo, CPU, 2 and 3 processes): the numbers
equal one process's, every image is evaluated once, rank 0 alone writes, a killed group writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_dist import run_ranks
from fixtures_probe import DEPTH_OVERRIDES, SEG_OVERRIDES, write_nyu, write_voc

from phreg_bench.cli import main
from phreg_bench.results.records import ResultRecord
from phreg_bench.results.store import read_result, result_files
from phreg_core.distributed import DistEnv, shard

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist_data")
    write_voc(root, n_train=6, n_val=10)  # 10 images: 3 ranks get 4 + 3 + 3
    write_nyu(root, n_train=8, n_test=5)
    return root


@pytest.fixture(scope="module")
def one_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("templates") / "one.txt"
    path.write_text("a photo of a {c}.\n")
    return path


def ovseg_args(data_root: Path, template: Path, results: Path, cache: Path,
               backbone: str = "fixtures_seg:tiny_clip_factory") -> list[str]:
    return ["run", "--backbone", backbone, "--random-init", "--tasks", "ovseg/voc21", "--method", "raw",
            "--data-root", str(data_root), "--results-dir", str(results), "--cache-dir", str(cache),
            "--batch-size", "2", "--device", "cpu", "--protocol-override", "resize=40",
            "--protocol-override", f"templates={template}"]


def _record(results: Path) -> ResultRecord:
    files = result_files(results)
    assert len(files) == 1, files
    return read_result(files[0])


def _cli_rank(rank: int, argv: list[str], seen_dir: str) -> None:
    """One rank: record which images this rank loads, then run the real command line."""
    from phreg_bench.tasks.ovseg import family as ovseg

    original = ovseg._Guarded.__getitem__

    def getitem(self, index):
        with open(Path(seen_dir, f"rank{rank}.txt"), "a") as stream:
            stream.write(f"{index}\n")
        return original(self, index)

    ovseg._Guarded.__getitem__ = getitem
    assert main(argv) == 0


def test_shard_covers_every_index_exactly_once():
    for count in range(0, 13):
        for world in (1, 2, 3, 4, 5):
            parts = [list(shard(count, DistEnv(rank=r, world_size=world))) for r in range(world)]
            flat = sorted(i for part in parts for i in part)
            assert flat == list(range(count)), (count, world)
            assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced, no padding duplicates


@pytest.mark.parametrize("world", [2, 3])
def test_ovseg_under_torch_distributed_equals_one_process(data_root, one_template, tmp_path, world):
    single = tmp_path / "single"
    assert main(ovseg_args(data_root, one_template, single, tmp_path / "cache1")) == 0
    expected = _record(single)

    seen = tmp_path / "seen"
    seen.mkdir()
    ranked = tmp_path / "ranked"
    run_ranks(world, _cli_rank, ovseg_args(data_root, one_template, ranked, tmp_path / "cache2"), str(seen),
              errors_dir=tmp_path / "errors")
    got = _record(ranked)
    assert got.identity.config_hash == expected.identity.config_hash  # the same result identity
    assert got.metrics == expected.metrics  # values (incl. Pearson) and per-class IoU, bit for bit
    assert got.extra["per_class_acc"] == expected.extra["per_class_acc"]
    assert got.status.num_samples == expected.status.num_samples == 10
    assert got.timings.processes == world
    loads = [int(line) for r in range(world) for line in (seen / f"rank{r}.txt").read_text().split()]
    assert sorted(loads) == list(range(10))  # every image once, on one rank
    assert all((seen / f"rank{r}.txt").read_text().split() for r in range(world))  # every rank worked


def synthetic_args(results: Path) -> list[str]:
    return ["run", "--backbone", "planted-vit", "--tasks", "synthetic/segmentation", "--results-dir", str(results),
            "--batch-size", "4", "--device", "cpu", "--protocol-override", "num_train=10",
            "--protocol-override", "num_val=10"]


def test_synthetic_task_under_torch_distributed_equals_one_process(tmp_path):
    assert main(synthetic_args(tmp_path / "single")) == 0
    run_ranks(3, _probe_rank, synthetic_args(tmp_path / "ranked"), str(tmp_path), False,
              errors_dir=tmp_path / "errors")
    got, expected = _record(tmp_path / "ranked"), _record(tmp_path / "single")
    assert got.identity.config_hash == expected.identity.config_hash and got.metrics == expected.metrics


PROBE_OVERRIDES = {**SEG_OVERRIDES, **DEPTH_OVERRIDES, "iters": 12, "warmup_iters": 3, "train_source": "labeled"}


def probe_args(data_root: Path, results: Path, cache: Path) -> list[str]:
    overrides = [item for key, value in PROBE_OVERRIDES.items()
                 for item in ("--protocol-override", f"{key}={json.dumps(value)}")]
    return ["run", "--backbone", "tiny-vit", "--random-init", "--tasks", "linseg/voc21,depth/nyu",
            "--data-root", str(data_root), "--results-dir", str(results), "--cache-dir", str(cache),
            "--batch-size", "4", "--device", "cpu", *overrides]


def _keep_heads(folder: str) -> None:
    """Save each probe's trained head (rank 0's) before it is evaluated."""
    from phreg_bench.tasks.depth import LinearProbeDepth
    from phreg_bench.tasks.linseg import LinearProbeSegmentation

    for family, name in ((LinearProbeSegmentation, "linseg"), (LinearProbeDepth, "depth")):
        def evaluate(self, head, *args, _original=family._evaluate, _name=name, **kwargs):
            if os.environ.get("RANK", "0") == "0":
                torch.save(head.state_dict(), Path(folder, f"{_name}.pt"))
            return _original(self, head, *args, **kwargs)

        family._evaluate = evaluate


def _train_alone() -> None:
    """Every rank trains each head as one process does (plain BatchNorm, all rows of each batch, the plain
    mean loss): isolates the sharded feature extraction and evaluation, which must then be bit-identical."""
    from phreg_bench.tasks import depth, linseg

    for module in (linseg, depth):
        module.data_parallel = lambda head, env: head
        module.local_part = lambda rows, env, group=1: rows
    linseg.scale_to_global = lambda loss, local, total, env: loss
    original = depth.depth_loss
    depth.depth_loss = lambda *args, env=None, **kwargs: original(*args, **kwargs)


def _probe_rank(rank: int, argv: list[str], heads: str, alone: bool) -> None:
    _keep_heads(heads)
    if alone:
        _train_alone()
    assert main(argv) == 0


def _records(results: Path) -> dict[str, ResultRecord]:
    return {(record := read_result(path)).identity.task.name: record for path in result_files(results)}


def _single_probe_run(data_root: Path, tmp_path: Path, monkeypatch) -> dict[str, dict]:
    (tmp_path / "heads1").mkdir()
    with monkeypatch.context() as patch:
        from phreg_bench.tasks.depth import LinearProbeDepth
        from phreg_bench.tasks.linseg import LinearProbeSegmentation

        patch.setattr(LinearProbeSegmentation, "_evaluate", LinearProbeSegmentation._evaluate)
        patch.setattr(LinearProbeDepth, "_evaluate", LinearProbeDepth._evaluate)
        _keep_heads(str(tmp_path / "heads1"))  # undone when the context ends
        assert main(probe_args(data_root, tmp_path / "single", tmp_path / "cache1")) == 0
    return _records(tmp_path / "single")


def _ranked_probe_run(world: int, data_root: Path, tmp_path: Path, *, alone: bool) -> dict[str, dict]:
    (tmp_path / "heads2").mkdir()
    run_ranks(world, _probe_rank, probe_args(data_root, tmp_path / "ranked", tmp_path / "cache2"),
              str(tmp_path / "heads2"), alone, errors_dir=tmp_path / "errors")
    return _records(tmp_path / "ranked")


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_probe_features_and_evaluation_are_exact(data_root, tmp_path, monkeypatch, world):
    """With the head trained identically on every rank, the sharded feature extraction (into one shared
    cache entry) and the sharded evaluation give one process's numbers bit for bit."""
    expected = _single_probe_run(data_root, tmp_path, monkeypatch)
    got = _ranked_probe_run(world, data_root, tmp_path, alone=True)
    assert sorted(got) == sorted(expected) == ["depth/nyu", "linseg/voc21"]
    for task in got:
        assert got[task].identity.config_hash == expected[task].identity.config_hash
        assert got[task].metrics == expected[task].metrics, task  # values and per-class, exactly
        assert got[task].status.num_samples == expected[task].status.num_samples
        computed = got[task].extra["feature_cache"]
        assert all(part["computed_rows"] == part["rows"] for part in computed.values() if isinstance(part, dict)), task
    for name in ("linseg", "depth"):
        single, ranked = torch.load(tmp_path / "heads1" / f"{name}.pt"), torch.load(tmp_path / "heads2" / f"{name}.pt")
        assert all(torch.equal(single[k], ranked[k]) for k in single), name


# DDP's gradient all-reduce and the global BatchNorm add per-rank partial sums, so the trained head equals one
# process's to float32 rounding (amplified a little by Adam's normalised steps): every tensor within
# HEAD_TOLERANCE x its largest magnitude. Measured on these fixtures: <= 3e-5 (conv_seg.weight), <= 5e-7 else.
HEAD_TOLERANCE = 1e-4
METRIC_RTOL = 1e-5  # continuous metrics (depth) from such heads; measured <= 2e-8


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_probe_training_equals_one_process_to_float_tolerance(data_root, tmp_path, monkeypatch, world):
    expected = _single_probe_run(data_root, tmp_path, monkeypatch)
    got = _ranked_probe_run(world, data_root, tmp_path, alone=False)
    for name in ("linseg", "depth"):
        single, ranked = torch.load(tmp_path / "heads1" / f"{name}.pt"), torch.load(tmp_path / "heads2" / f"{name}.pt")
        assert single.keys() == ranked.keys()
        for key in single:
            scale = float(single[key].abs().max()) if single[key].is_floating_point() else 0.0
            torch.testing.assert_close(ranked[key], single[key], rtol=0, atol=HEAD_TOLERANCE * scale,
                                       msg=f"{name} {key}")
    depth, depth_single = got["depth/nyu"].metrics.values, expected["depth/nyu"].metrics.values
    assert depth == pytest.approx(depth_single, rel=METRIC_RTOL)
    # an argmax is insensitive to such differences here (a pixel flips only if its top two logits tie)
    assert got["linseg/voc21"].metrics == expected["linseg/voc21"].metrics


def _failing_rank(rank: int, argv: list[str], logs: str) -> None:
    from phreg_bench import cli

    os.environ.update(PHREG_TEST_DIE_RANK="1", PHREG_TEST_DIE_HOW="raise")
    with open(Path(logs, f"rank{rank}.log"), "w") as stream:
        cli.console.file = stream
        assert main(argv) == 2  # a one-line error, exit status 2, on both ranks: rank 0 does not hang


def test_a_failing_rank_fails_the_group_with_its_rank_and_error(data_root, one_template, tmp_path):
    argv = ovseg_args(data_root, one_template, tmp_path / "results", tmp_path / "cache",
                      backbone="fixtures_dist:dying_clip_factory")
    (tmp_path / "logs").mkdir()
    run_ranks(2, _failing_rank, argv, str(tmp_path / "logs"), errors_dir=tmp_path / "errors")
    failed = " ".join((tmp_path / "logs" / "rank1.log").read_text().split())
    assert "rank 1 of 2: ovseg/voc21 failed: RuntimeError: injected failure" in failed
    assert "rank 0 of 2: ovseg/voc21 failed" in " ".join((tmp_path / "logs" / "rank0.log").read_text().split())
    assert not list((tmp_path / "results").rglob("*.json"))


@pytest.mark.slow  # starts torchrun and two fresh interpreters: ~15 s on 2 shared cores
def test_killed_rank_leaves_no_result_and_a_rerun_completes(data_root, one_template, tmp_path):
    """``torchrun`` with the real command line: rank 1 is killed (SIGKILL) mid-evaluation; the group fails
    naming that rank, no result file (nor a temp file) is left, and the same command then completes."""
    results, cache = tmp_path / "results", tmp_path / "cache"
    argv = ovseg_args(data_root, one_template, results, cache, backbone="fixtures_dist:dying_clip_factory")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "PHREG_TEST_DIE_RANK": "1", "PHREG_DIST_TIMEOUT_S": "60"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "phreg_bench", *argv]
    killed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode != 0
    assert "local_rank: 1" in killed.stderr and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert not list(results.rglob("*.json")) and not list(results.rglob("*.tmp"))

    (tmp_path / "seen").mkdir()  # the same command again (in forked ranks: seconds, not a fresh torchrun)
    run_ranks(2, _cli_rank, argv, str(tmp_path / "seen"), errors_dir=tmp_path / "errors")
    record = _record(results)
    assert record.status.num_samples == 10 and record.timings.processes == 2


def test_plain_progress_prints_one_line_per_interval_and_one_at_the_end():
    from io import StringIO

    from phreg_bench.progress import track
    from phreg_core.progress import PlainProgress

    now = [0.0]
    stream = StringIO()
    progress = PlainProgress(stream=stream, interval_s=10.0, prefix="[rank 0/2] ", clock=lambda: now[0])

    def items():
        for i in range(30):
            now[0] += 1.0  # one item per second
            yield i

    assert list(track(items(), "ovseg/voc21", total=30, progress=progress)) == list(range(30))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # after 10 and 20 s, and once when done
    assert lines[0] == "[rank 0/2] ovseg/voc21: 10/30 (33.3%), elapsed 10s, ETA 20s"
    assert lines[-1] == "[rank 0/2] ovseg/voc21: 30/30 (100.0%), elapsed 30s"
