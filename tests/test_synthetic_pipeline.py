"""The built-in default's PH-Reg part writes its adapter, table, summary and figures, and resumes."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from phreg_bench.synthetic import pipeline
from phreg_bench.synthetic.pipeline import FULL, headline, run_synthetic_proof
from phreg_bench.synthetic.proof import TTR, ProofConfig

pytestmark = pytest.mark.slow  # two pipeline runs (distillation, probes, figures)

TINY = ProofConfig(num_distill=16, num_probe=16, num_eval=8, steps=6, variants=(FULL,))


def test_run_synthetic_proof_writes_everything_and_resumes(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    summary = run_synthetic_proof(tmp_path, config=TINY, log=lambda line: None, threads=1)
    assert torch.get_num_threads() == threads  # restored
    names = [row["name"] for row in summary["rows"]]
    assert names == ["teacher (raw)", "teacher + TTA (10 views)", FULL, TTR, "twin (no artifacts)"]
    assert summary["ttr_finder"]["recall_at_k"] >= 0.8 and (tmp_path / "ttr-neurons.json").is_file()
    assert (tmp_path / "phreg-adapter" / "adapter.safetensors").is_file()
    assert json.loads((tmp_path / "phreg-adapter" / "adapter.json").read_text())["steps"] == TINY.steps
    assert json.loads((tmp_path / "summary.json").read_text())["rows"] == summary["rows"]
    assert (tmp_path / "proof_table.md").read_text().startswith("| model |")
    assert len(summary["figures"]) == 4
    for path in summary["figures"]:
        with Image.open(path) as figure:
            assert figure.format == "PNG" and figure.size[0] > 300
    numbers = headline(summary)
    assert numbers["outliers_raw_pct"] > 1.0 and 0.0 <= numbers["register_share_pct"] <= 100.0
    assert summary["reused"] is False
    # a second call finds the finished run with the same inputs: the table is read back, nothing recomputed
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "build_world", refuse)
        again = run_synthetic_proof(tmp_path, config=TINY, log=lambda line: None, figures=False)
    assert again["reused"] is True and again["rows"] == summary["rows"] and again["table"] == summary["table"]
    # another adapter is another input: the table is recomputed (the finished distillation is not redone)
    (tmp_path / "summary.json").write_text((tmp_path / "summary.json").read_text().replace(
        summary["inputs"]["adapter_sha256"], "0" * 64))
    lines = []
    third = run_synthetic_proof(tmp_path, config=TINY, log=lines.append, figures=False)
    assert third["reused"] is False and any("distillation already complete" in line for line in lines)

    def numbers_of(rows):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert numbers_of(third["rows"]) == numbers_of(summary["rows"])


def refuse(*args, **kwargs):
    raise AssertionError("recomputed although the inputs did not change")
