"""The proof in numbers at small scale (≈40 s on one CPU thread): PH-Reg removes the planted artifacts.

(a) the TTA-denoised teacher has far fewer high-norm outliers than the raw teacher;
(b) the PH-Reg student cuts the outlier rate by ≥ 90 %, its registers take the planted neurons' firing, and
    its probes move from the raw teacher towards the artifact-free twin;
(c) ablations as in the paper's Table 3: without registers the student cannot restore the artifact
    tokens' content; without denoised targets it keeps the artifacts.
(d) test-time registers (training-free): the finder recovers the planted register neurons and moving them
    onto the appended token removes the outliers and restores the twin's features.
"""

from __future__ import annotations

import pytest

from phreg_bench.synthetic.proof import TTR, ProofConfig, format_table, run_proof

pytestmark = pytest.mark.slow  # three distillations of 100 steps

CONFIG = ProofConfig(num_distill=64, num_probe=64, num_eval=32, steps=100,
                     variants=("PH-Reg (full)", "distill, no reg, denoise", "distill, reg, no denoise"))


@pytest.fixture(scope="module")
def result():
    result = run_proof(CONFIG, log=lambda line: None)
    print(format_table(result.rows))
    return result


@pytest.fixture(scope="module")
def rows(result):
    return {row.name: row for row in result.rows}


def test_a_tta_target_is_nearly_free_of_outliers(rows):
    raw, tta = rows["teacher (raw)"], rows["teacher + TTA (10 views)"]
    assert raw.outlier_rate > 1.0  # percent: the planted artifacts are there
    assert tta.outlier_rate < 0.2 * raw.outlier_rate


def test_b_phreg_removes_the_artifacts_and_moves_towards_the_twin(rows):
    raw, full, twin = rows["teacher (raw)"], rows["PH-Reg (full)"], rows["twin (no artifacts)"]
    assert full.outlier_reduction >= 90.0
    assert full.register_share >= 80.0  # the registers absorbed the planted neurons' firing
    assert twin.outlier_rate == 0.0
    # local content restored: even the worst patches agree with the twin again
    assert raw.cos_to_twin_p01 < 0.0 and full.cos_to_twin_p01 > 0.5
    # depth: the twin beats the raw teacher, and PH-Reg closes (at least) that gap
    assert twin.depth_rmse < raw.depth_rmse - 0.03
    assert full.depth_rmse <= twin.depth_rmse
    # segmentation barely notices these background artifacts (as in the paper's Table 2); still, PH-Reg
    # moves from the raw teacher to the twin
    assert twin.miou > raw.miou
    assert full.miou - raw.miou >= 0.5 * (twin.miou - raw.miou)


def test_c_ablations_registers_and_denoising_both_matter(rows):
    raw, full = rows["teacher (raw)"], rows["PH-Reg (full)"]
    no_reg, no_denoise = rows["distill, no reg, denoise"], rows["distill, reg, no denoise"]
    # without registers the last block cannot give the artifact tokens their content back
    assert full.cos_to_twin_p01 > no_reg.cos_to_twin_p01 + 0.3
    # mIoU only in direction: the margin is seed noise in size (measured +0.16 / +1.91 / +0.87 mIoU for seeds
    # 0 / 1 / 2 with the released lr timing, +1.16 for seed 0 with per-epoch updates)
    assert full.miou > no_reg.miou
    assert no_reg.outlier_rate > 10 * max(full.outlier_rate, 0.01)
    # without denoised targets the student learns the artifacts back
    assert no_denoise.outlier_rate > 0.5 * raw.outlier_rate
    assert no_denoise.cos_to_twin_p01 < 0.0
    assert no_denoise.depth_rmse > full.depth_rmse + 0.03


def test_d_test_time_registers_find_the_planted_neurons_and_remove_the_artifacts(result, rows):
    raw, ttr, twin = rows["teacher (raw)"], rows[TTR], rows["twin (no artifacts)"]
    finder = result.ttr_finder
    assert finder["recall_at_k"] >= 0.8 and finder["r_precision"] >= 0.8
    assert ttr.outlier_reduction >= 80.0
    assert ttr.register_share >= 80.0  # the planted firing moved onto the appended register
    assert ttr.cos_to_twin_p01 > raw.cos_to_twin_p01 + 0.5  # the artifact patches got their content back
    assert abs(ttr.depth_rmse - twin.depth_rmse) < abs(raw.depth_rmse - twin.depth_rmse)
