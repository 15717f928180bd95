"""Dataset inputs that used to give wrong numbers silently: 8-bit NYU depth PNGs, two-column split lists,
probe tasks whose train split `data check` skipped, converters that kept flagged files, `--skip-corrupt`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_probe import write_nyu
from fixtures_seg import make_coco, make_voc
from PIL import Image

from phreg_bench.cli import main
from phreg_bench.datasets.base import DatasetError
from phreg_bench.datasets.nyu import NYUv2Depth
from phreg_bench.registries import DATASETS

VOC_IDS = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033", "2007_000042", "2007_000061"]}


# -- B: NYUv2 depth PNG formats -----------------------------------------------------------------------------
@pytest.fixture
def nyu_root(tmp_path) -> Path:
    write_nyu(tmp_path, n_train=4, n_test=3, sync=True)
    return tmp_path


def depth_pngs(root: Path, split: str) -> list[Path]:
    folder = "sync" if split == "train" else "official_splits/test"
    return sorted((root / "nyu_depth_v2" / folder).rglob("sync_depth_*.png"))


def to_eight_bit(path: Path) -> None:
    """The widely shared repackaging: 0..255 = 0..10 m, 8-bit greyscale."""
    metres = np.asarray(Image.open(path), dtype=np.float64) / 1000
    Image.fromarray(np.clip(np.rint(metres / 10 * 255), 0, 255).astype(np.uint8), mode="L").save(path)


def test_eight_bit_depth_png_is_refused_naming_the_file_and_the_conversion(nyu_root):
    first = depth_pngs(nyu_root, "train")[0]
    to_eight_bit(first)
    reader = NYUv2Depth(nyu_root, "train", source="sync")
    index = [item[2] for item in reader.items].index(first)
    # Before: read as millimetres, this frame's depths were 0.03-0.23 m and nothing complained.
    with pytest.raises(DatasetError, match=rf"{first.name} is an 8-bit PNG.*0\.\.255 = 0\.\.10 m.*"
                                           r"round\(v \* 10000 / 255\)"):
        reader[index]


def test_sixteen_bit_png_with_implausible_depths_is_refused(nyu_root):
    path = depth_pngs(nyu_root, "train")[1]
    metres = np.asarray(Image.open(path), dtype=np.float64) / 1000
    Image.fromarray(np.rint(metres / 10 * 255).astype(np.uint16)).save(path)  # 8-bit values in a 16-bit file
    reader = NYUv2Depth(nyu_root, "train", source="sync")
    index = [item[2] for item in reader.items].index(path)
    with pytest.raises(DatasetError, match=rf"{path.name} reads as depths up to 0\.\d+ m"):
        reader[index]
    Image.fromarray((metres * 6553.5).astype(np.uint16)).save(path)  # 0..65535 = 0..10 m: up to 65 m
    with pytest.raises(DatasetError, match=rf"{path.name} reads as depths up to \d+\.\d+ m.*not in millimetres"):
        reader[index]


def test_data_check_flags_eight_bit_depth_with_and_without_deep(nyu_root, capsys):
    for path in depth_pngs(nyu_root, "train"):
        to_eight_bit(path)
    args = ["data", "check", "depth/nyu", "--data-root", str(nyu_root)]
    assert main(args) == 1  # one depth map tells the format, without --deep
    assert "8-bit PNG" in capsys.readouterr().err
    assert main([*args, "--deep"]) == 1
    err = capsys.readouterr().err
    assert "problems (4)" in err and "8-bit PNG" in err


# -- D: split lists ------------------------------------------------------------------------------------------
def test_two_column_deeplab_train_aug_list_is_read_as_pairs_inside_the_root(tmp_path):
    folder = make_voc(tmp_path)
    lists = folder / "ImageSets" / "Segmentation"
    (lists / "aug.txt").unlink()
    (lists / "train_aug.txt").write_text("".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n"
                                                 for i in VOC_IDS["train"]))
    # Before: each line was one id, "/JPEGImages/x.jpg /SegmentationClassAug/x.png" joined to JPEGImages/,
    # an absolute path outside the data root.
    reader = DATASETS.get("voc21")(tmp_path, split="train_aug")
    assert [sample_id for sample_id, _, _ in reader.pairs] == VOC_IDS["train"]
    for _, image, label in reader.pairs:
        assert image.parent == folder / "JPEGImages" and label.parent == folder / "SegmentationClassAug"
    sample = reader[0]
    expected = np.asarray(Image.open(folder / "SegmentationClassAug" / f"{VOC_IDS['train'][0]}.png"))
    assert np.array_equal(sample.label, expected)


@pytest.mark.parametrize(("content", "message"), [
    ("/JPEGImages/2007_000032.jpg /../../../etc/passwd\n", "points outside the dataset folder"),
    ("../../secret/2007_000032\n", "is not an id"),
    ("2007_000032\n/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\n", "line 2"),
    ("a b c\n", "line 1"),
    ("2007_000032\n\n\na b c\n", "line 4"),  # blank lines count: the number is the file's own line
])
def test_bad_split_lists_are_refused_naming_file_and_line(tmp_path, content, message):
    folder = make_voc(tmp_path)
    (folder / "ImageSets" / "Segmentation" / "train.txt").write_text(content)
    with pytest.raises(DatasetError, match=rf"train\.txt.*{message}"):
        DATASETS.get("voc21")(tmp_path, split="train")


def test_nyu_split_lists_stay_inside_the_root_and_need_two_columns(nyu_root):
    listing = nyu_root / "nyu_depth_v2" / "nyu_train.txt"
    lines = listing.read_text().splitlines()
    listing.write_text("\n".join([*lines, "/../../outside/rgb.jpg /kitchen/sync_depth_00000.png 518.8579"]) + "\n")
    with pytest.raises(DatasetError, match=r"nyu_train\.txt line 5.*outside the dataset folder"):
        NYUv2Depth(nyu_root, "train", source="sync")
    listing.write_text("\n".join([*lines, "/kitchen/rgb_00001.jpg"]) + "\n")
    with pytest.raises(DatasetError, match=r"nyu_train\.txt line 5.*one column"):
        NYUv2Depth(nyu_root, "train", source="sync")


# -- F: data check of probe tasks, converter hints, --skip-corrupt -----------------------------------------
def test_data_check_of_a_probe_task_checks_its_train_split(tmp_path, capsys):
    folder = make_voc(tmp_path)
    missing = folder / "SegmentationClassAug" / f"{VOC_IDS['train'][1]}.png"
    missing.unlink()
    assert main(["data", "check", "linseg/voc21", "--data-root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "voc21 (val)" in err and "voc21 (train_aug)" in err  # before: only the val split was checked
    assert missing.name in err


def test_data_check_of_depth_checks_test_and_train_with_the_protocol_sources(nyu_root, capsys):
    (nyu_root / "nyu_depth_v2" / "nyu_train.txt").unlink()  # the paper protocol trains on the sync list
    assert main(["data", "check", "depth/nyu", "--data-root", str(nyu_root)]) == 1
    err = capsys.readouterr().err
    assert "nyuv2 (test (labeled))" in err and "nyuv2 (train)" in err and "nyu_train.txt" in err
    # the labeled795 protocol trains on the .mat frames, which are there
    main(["data", "check", "depth/nyu", "--data-root", str(nyu_root), "--protocol", "labeled795"])
    err = capsys.readouterr().err
    assert "nyuv2 (train (labeled))" in err and "missing" not in err


def test_converter_keeping_files_says_how_to_rewrite_them(tmp_path, capsys):
    make_coco(tmp_path)  # converts once
    assert main(["data", "convert-coco-stuff", "--data-root", str(tmp_path), "--splits", "val"]) == 0
    out = capsys.readouterr().err
    assert "0 label files written, 3 already present" in out and "--overwrite" in out
    assert "--overwrite" in DATASETS.get("coco_stuff164k").download_hint
    assert "--overwrite" in DATASETS.get("cityscapes").download_hint


def test_skip_corrupt_is_a_run_option(tmp_path, capsys):
    folder = make_voc(tmp_path / "data")
    (folder / "JPEGImages" / f"{VOC_IDS['val'][1]}.jpg").write_bytes(b"not a jpeg")
    template = tmp_path / "one.txt"
    template.write_text("a photo of a {c}.\n")
    common = ["run", "--backbone", "fixtures_seg:tiny_clip_factory", "--tasks", "ovseg/voc21", "--data-root",
              str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"), "--protocol-override", "resize=40",
              "--protocol-override", f"templates={template}", "--batch-size", "2"]
    assert main([*common, "--results-dir", str(tmp_path / "a")]) == 1
    assert "--skip-corrupt" in capsys.readouterr().err  # the advice names an option that exists
    assert main([*common, "--results-dir", str(tmp_path / "b"), "--skip-corrupt"]) == 0
    [result] = list((tmp_path / "b").rglob("*.json"))
    record = json.loads(result.read_text())
    assert record["extra"]["skipped"] == 1 and record["status"]["num_samples"] == 2
    assert record["status"]["complete"] is False


# -- the missing-data-root message names every reader's folder -----------------------------------------------
def test_the_missing_data_root_message_names_every_dataset_folder(monkeypatch):
    from phreg_bench.datasets.base import resolve_data_root

    monkeypatch.delenv("PHREG_DATA", raising=False)
    with pytest.raises(DatasetError, match="no data folder") as caught:
        resolve_data_root(None)
    for entry in DATASETS:
        folder = Path(entry.resolve().folder).parts[0]
        assert f"{folder}/" in str(caught.value), entry.name
    assert "nyu_depth_v2/" in str(caught.value) and "VOCdevkit/" in str(caught.value)
