"""The NYUv2 reader on generated files in the real layouts (MATLAB v7.3 .mat + splits.mat, BTS sync lists)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from fixtures_probe import depth_scene, write_nyu

from phreg_bench.datasets.base import DatasetError
from phreg_bench.datasets.nyu import NYUv2Depth
from phreg_bench.registries import DATASETS


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyu")
    write_nyu(root, n_train=6, n_test=4, sync=True)
    return root


def test_labeled_layout_orientation_split_and_bts_conversion(nyu_root):
    mat = nyu_root / "nyu_depth_v2" / "nyu_depth_v2_labeled.mat"
    assert mat.read_bytes()[:10] == b"MATLAB 7.3"
    with h5py.File(mat, "r") as file:
        assert file["images"].shape == (10, 3, 64, 48)  # [N, 3, W, H] as MATLAB stores [H, W, 3, N]
        raw = np.asarray(file["rawDepths"][0]).T
    train = NYUv2Depth(nyu_root, "train", source="labeled")
    test = NYUv2Depth(nyu_root, "test")  # auto -> labeled when the .mat is there
    assert (len(train), len(test), test.source) == (6, 4, "labeled")
    assert not set(train.ids()) & set(test.ids())
    # regenerate frame 0 exactly as the fixture drew it to check orientation (rows = y, columns = x)
    image0, depth0 = depth_scene(np.random.default_rng(2), 48, 64)
    reader = train if "00000" in train.ids() else test
    sample = reader[reader.ids().index("00000")]
    assert sample.image.shape == (48, 64, 3) and sample.depth.shape == (48, 64)
    assert np.array_equal(sample.image[1:47, 1:63], image0[1:47, 1:63])  # inside BTS's (scaled) frame
    assert sample.image[0].max() == 0 and sample.image[:, -1].max() == 0  # blacked-out border
    holes = raw == 0
    assert np.all(sample.depth[holes] == 0)  # holes stay 0 (masked later)
    np.testing.assert_allclose(sample.depth[~holes], depth0[~holes], atol=1e-3)  # millimetre truncation
    assert np.all(sample.depth[~holes] <= depth0[~holes] + 1e-6)
    assert NYUv2Depth(nyu_root, "test", limit=2).full_count == 4


def test_sync_layout_reads_the_same_test_frames(nyu_root):
    labeled = NYUv2Depth(nyu_root, "test", source="labeled")
    sync = NYUv2Depth(nyu_root, "test", source="sync")
    assert len(sync) == len(labeled) == 4
    by_id = {sample_id: i for i, sample_id in enumerate(labeled.ids())}
    for i, sample_id in enumerate(sync.ids()):
        a, b = sync[i], labeled[by_id[sample_id.split("_")[-1].split(".")[0]]]
        np.testing.assert_allclose(a.depth, b.depth, atol=1.5e-3)
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 8  # JPEG (chroma subsampling)
    assert labeled.manifest() != sync.manifest()


def test_registry_and_clear_errors(nyu_root, tmp_path):
    assert DATASETS.get("nyuv2") is NYUv2Depth
    with pytest.raises(DatasetError, match="nyu_depth_v2"):
        NYUv2Depth(tmp_path, "test")
    with pytest.raises(DatasetError, match="splits"):
        NYUv2Depth(nyu_root, "val")
    bad = tmp_path / "nyu_depth_v2"
    bad.mkdir()
    (bad / "nyu_test.txt").write_text("/scene/rgb_00001.jpg /scene/sync_depth_00001.png 518.8579\n")
    with pytest.raises(DatasetError, match="rgb_00001.jpg"):
        NYUv2Depth(tmp_path, "test")


def test_data_check_report(nyu_root, tmp_path):
    report = NYUv2Depth.check(nyu_root, "test", deep=True)
    assert (report.found, report.expected, report.problems) == (4, 654, [])  # a fixture, not the real 654
    assert not report.ok and "nyu_depth_v2" in report.fix
    assert NYUv2Depth.check(tmp_path, "test").missing
