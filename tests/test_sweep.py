"""`phreg-bench sweep`: the matrix, resume through the result store, failures with their logs, submitit's
local executor, and the SLURM batch script a cluster user expects (written by submitit, no sbatch needed)."""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

import pytest
import yaml

from phreg_bench.cli import main
from phreg_bench.results.store import read_result, result_files
from phreg_bench.sweep import NodeInfo, Sweep, SweepError, expand, job_command, sbatch_preview

# the built-in world: planted backbones, the synthetic task made small (the jobs are mostly interpreter start-up)
SMALL = {"num_train": 4, "num_val": 4}


def write_sweep(path: Path, **values) -> Path:
    data = {"backbones": ["planted-vit", "planted-vit-twin"], "methods": ["raw", "tta"],
            "tasks": ["synthetic/segmentation"], "seeds": [0, 1], "protocol_overrides": SMALL,
            "results_dir": str(path.parent / "results"), "jobs": 2, **values}
    path.write_text(yaml.safe_dump(data))
    return path


def test_matrix_expands_to_one_run_per_combination(tmp_path):
    sweep = Sweep.load(write_sweep(tmp_path / "s.yaml"))
    jobs = expand(sweep)
    assert len(jobs) == 8 and len({job.name for job in jobs}) == 8
    assert {(j.backbone, j.method.name, j.seed) for j in jobs} == {
        (b, m, s) for b in ("planted-vit", "planted-vit-twin") for m in ("raw", "tta") for s in (0, 1)}
    command = job_command(jobs[0], python="python")
    assert command[:4] == ["python", "-m", "phreg_bench", "run"]
    assert command[command.index("--results-dir") + 1] == str((tmp_path / "results").absolute())
    assert "--protocol-override" in command and "num_train=4" in command


def test_jobs_leave_the_batch_size_to_run_unless_the_sweep_sets_one(tmp_path):
    for gpus, device in ((0, "cpu"), (1, "cuda")):
        (job, *_) = expand(Sweep.load(write_sweep(tmp_path / "s.yaml", gpus_per_job=gpus)))
        assert "--batch-size" not in job.argv and job.argv[job.argv.index("--device") + 1] == device
    (job, *_) = expand(Sweep.load(write_sweep(tmp_path / "s.yaml", batch_size=4)))
    assert job.argv[job.argv.index("--batch-size") + 1] == "4"


def test_sweep_file_errors_name_the_key(tmp_path):
    cases = {"unknown key 'backbone'": {"backbone": ["x"]}, "'tasks' is missing": {"tasks": []},
             "batch_size: must be an integer": {"batch_size": "eight"},
             "executor: must be one of": {"executor": "pbs"},
             "nodes: > 1 needs executor: slurm": {"nodes": 2},
             "slurm: unknown key 'partitions'": {"slurm": {"partitions": "gpu"}},
             "processes_per_job: must equal gpus_per_job": {"gpus_per_job": 2, "processes_per_job": 4},
             "methods: each entry must be a name or": {"methods": [{"nom": "raw"}]}}
    for message, values in cases.items():
        with pytest.raises(SweepError, match=re.escape(message)):
            Sweep.load(write_sweep(tmp_path / "s.yaml", **values))
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert main(["sweep", str(write_sweep(tmp_path / "s.yaml")), "--seeds", "a"]) == 2


def test_torchrun_lines_single_and_multi_node(tmp_path):
    one = expand(Sweep.load(write_sweep(tmp_path / "s.yaml", gpus_per_job=4)))[0]
    assert job_command(one, python="py")[:6] == ["py", "-m", "torch.distributed.run", "--nproc_per_node", "4",
                                                 "--standalone"]
    assert "--device" in one.argv and one.argv[one.argv.index("--device") + 1] == "cuda"
    two = expand(Sweep.load(write_sweep(tmp_path / "s.yaml", gpus_per_job=8, nodes=2, executor="slurm")))[0]
    with pytest.raises(SweepError, match="inside its SLURM allocation"):
        job_command(two)
    line = job_command(two, NodeInfo(node_rank=1, num_nodes=2, master_addr="gpu01", master_port=29742), python="py")
    assert line[:13] == ["py", "-m", "torch.distributed.run", "--nproc_per_node", "8", "--nnodes", "2",
                         "--node_rank", "1", "--master_addr", "gpu01", "--master_port", "29742"]
    assert line[13:16] == ["-m", "phreg_bench", "run"]


def test_node_info_from_the_slurm_environment(monkeypatch):
    """What run_job reads on a node of a 2-node array task (the variables sbatch/srun set)."""
    from phreg_bench.sweep import _node_info

    for key, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4243", "SLURM_ARRAY_JOB_ID": "4242",
                       "SLURM_ARRAY_TASK_ID": "1", "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2",
                       "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_PROCID": "1", "SLURM_NTASKS": "2",
                       "SLURM_LOCALID": "0", "SLURM_NTASKS_PER_NODE": "1"}.items():
        monkeypatch.setenv(key, value)
    info = _node_info()
    assert (info.node_rank, info.num_nodes, info.master_addr) == (1, 2, "gpu01")
    assert 29500 <= info.master_port < 30500


def _fake_slurm(folder: Path) -> dict[str, str]:
    """``srun`` and ``sbatch`` stand-ins: sbatch keeps the script it is given and answers like SLURM."""
    folder.mkdir()
    (folder / "srun").write_text("#!/bin/sh\nexit 0\n")
    (folder / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {folder}/submitted.sh\necho "Submitted batch job 4242"\n')
    for name in ("srun", "sbatch"):
        (folder / name).chmod((folder / name).stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def test_slurm_job_array_script(tmp_path, monkeypatch):
    """The sbatch script submitit writes for the sweep's job array, through the real submission path."""
    sweep_file = write_sweep(tmp_path / "s.yaml", executor="slurm", gpus_per_job=4,
                             slurm={"partition": "gpu", "time_min": 90, "cpus_per_task": 32, "mem_gb": 64,
                                    "setup": ["source /opt/venv/bin/activate"]})
    for key, value in _fake_slurm(tmp_path / "bin").items():
        monkeypatch.setenv(key, value)
    assert main(["sweep", str(sweep_file), "--no-wait", "--time", "120"]) == 0
    script = (tmp_path / "bin" / "submitted.sh").read_text()
    logs = tmp_path / "results" / ".sweep" / "submitit"
    expected = ["#SBATCH --array=0-7%8", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=1",
                "#SBATCH --nodes=1", "#SBATCH --partition=gpu", "#SBATCH --time=120", "#SBATCH --cpus-per-task=32",
                "#SBATCH --mem=64GB", f"#SBATCH --output={logs}/%A_%a/%A_%a_0_log.out",
                f"#SBATCH --error={logs}/%A_%a/%A_%a_0_log.err", "source /opt/venv/bin/activate"]
    for line in expected:
        assert line in script.splitlines(), (line, script)
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert f"--output {logs}/%A_%a/%A_%a_%t_log.out" in srun
    assert srun.endswith(f"{sys.executable} -u -m submitit.core._submit {logs}/%j")
    # --dry-run shows the same script without submitting
    preview = sbatch_preview(Sweep.load(sweep_file, {"slurm": {"time_min": 120}}), 8)
    assert preview == script


def _statuses(capsys) -> str:
    """The summary and failures (stdout) with the progress lines (stderr), whitespace-normalised."""
    captured = capsys.readouterr()
    return " ".join((captured.out + captured.err).split())


@pytest.mark.slow  # 8 + 1 fresh interpreters (the jobs): ~40-70 s on 2 shared cores
def test_local_sweep_runs_the_matrix_resumes_and_reports_failures(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path / "s.yaml")
    assert main(["sweep", str(sweep_file)]) == 0
    assert "sweep: 8 done, 0 skipped (already done), 0 failed" in _statuses(capsys)
    records = [read_result(path) for path in result_files(tmp_path / "results")]
    assert len(records) == 8 and len({r.identity.config_hash for r in records}) == 8
    assert (tmp_path / "results" / "leaderboard" / "synthetic.md").exists()

    assert main(["sweep", str(sweep_file)]) == 0  # a rerun: every combination is already there
    assert "sweep: 0 done, 8 skipped (already done), 0 failed" in _statuses(capsys)

    # a job that fails (no dataset under --data-root): reported with its log; the others are skipped
    (tmp_path / "empty").mkdir()
    assert main(["sweep", str(sweep_file), "--backbones", "planted-vit", "--methods", "raw",
                 "--tasks", "synthetic/segmentation,linseg/voc21", "--seeds", "0", "--budget", "quick",
                 "--data-root", str(tmp_path / "empty")]) == 1
    text = _statuses(capsys)
    assert "0 done, 1 skipped (already done), 1 failed" in text
    log = Path(re.search(r"FAILED planted-vit__raw__linseg_voc21__\S+: exit status 1; log: (\S+\.log)", text)[1])
    assert "DatasetError" in log.read_text() and "VOCdevkit" in log.read_text()


@pytest.mark.slow  # two submitit workers (fresh interpreters): ~20 s on 2 shared cores
def test_submitit_local_executor_runs_and_reports(tmp_path, capsys):
    """The submitit path (the one SLURM takes) on this machine: one job done, one failed with its logs."""
    (tmp_path / "empty").mkdir()
    sweep_file = write_sweep(tmp_path / "s.yaml", backbones=["planted-vit"], methods=["raw"], seeds=[0],
                             tasks=["synthetic/segmentation", "linseg/voc21"], executor="submitit-local",
                             budget="quick", data_root=str(tmp_path / "empty"))
    assert main(["sweep", str(sweep_file)]) == 1
    text = _statuses(capsys)
    assert "sweep: 1 done, 0 skipped (already done), 1 failed" in text
    match = re.search(r"FAILED planted-vit__raw__linseg_voc21__\S+: exit status 1; log: (\S+) / (\S+)", text)
    assert match and "DatasetError" in Path(match[2]).read_text()
    records = [read_result(path) for path in result_files(tmp_path / "results")]
    finished = [r for r in records if not r.failed]  # the failed task left an error record beside it
    assert len(finished) == 1 and [r.status.error.type for r in records if r.failed] == ["DatasetError"]
