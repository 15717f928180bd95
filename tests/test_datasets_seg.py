"""Dataset readers on generated fixtures in each dataset's exact layout; converters; `data check`."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_seg import make_ade, make_all, make_cityscapes, make_coco, make_voc, write_label
from PIL import Image

from phreg_bench.cli import main
from phreg_bench.datasets.base import DatasetError, read_label
from phreg_bench.datasets.cityscapes import LABEL_ID_TO_TRAIN_ID
from phreg_bench.datasets.coco import object_lut, stuff_lut
from phreg_bench.registries import DATASETS


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("data"))


EXPECTED = {  # name: (val ids in order, number of classes)
    "voc21": (["2007_000033", "2007_000042", "2007_000061"], 21),
    "voc20": (["2007_000033", "2007_000042", "2007_000061"], 20),
    "context60": (["2008_000002", "2008_000003", "2008_000007"], 60),
    "context59": (["2008_000002", "2008_000003", "2008_000007"], 59),
    "coco_stuff164k": (["000000000139", "000000000140", "000000000141"], 171),
    "coco_object": (["000000000139", "000000000140", "000000000141"], 81),
    "cityscapes": (["frankfurt/frankfurt_000000_000019", "frankfurt/frankfurt_000001_000019",
                    "lindau/lindau_000000_000019"], 19),
    "ade20k": (["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"], 150),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reader_order_types_and_label_range(data_root, name):
    reader = DATASETS.get(name)
    dataset = reader(data_root, split="val")
    ids, num_classes = EXPECTED[name]
    assert [dataset[i].id for i in range(len(dataset))] == ids
    assert reader.num_classes == num_classes
    for sample in dataset:
        assert sample.image.dtype == np.uint8 and sample.image.ndim == 3 and sample.image.shape[2] == 3
        assert sample.label.dtype == np.int64 and sample.label.shape == sample.image.shape[:2]
        values = set(np.unique(sample.label).tolist()) - {255}
        assert values and max(values) < num_classes
    assert len(reader(data_root, split="val", limit=2)) == 2


def test_reduce_zero_label_readers_match_raw_files(data_root):
    for full, reduced in (("voc21", "voc20"), ("context60", "context59")):
        raw = DATASETS.get(full)(data_root)[1].label
        out = DATASETS.get(reduced)(data_root)[1].label
        expected = np.where(raw == 0, 255, np.where(raw == 255, 255, raw - 1))
        np.testing.assert_array_equal(out, expected)
    ade = DATASETS.get("ade20k")(data_root)[0]
    raw = read_label(ade.label_path)
    np.testing.assert_array_equal(ade.label, np.where(raw == 0, 255, raw - 1))


def test_training_splits_for_probes(data_root):
    voc = DATASETS.get("voc21")
    assert [s.id for s in voc(data_root, split="train")] == ["2007_000032", "2007_000039"]
    aug = voc(data_root, split="train_aug")
    assert aug.pairs[0][2].parent.name == "SegmentationClassAug" and len(aug) == 2
    # palette PNG (SegmentationClass) and grayscale PNG (SegmentationClassAug) hold the same indices
    np.testing.assert_array_equal(voc(data_root, split="train")[0].label, aug[0].label)
    assert len(DATASETS.get("ade20k")(data_root, split="training")) == 2
    assert len(DATASETS.get("ade20k")(data_root, split="train")) == 2
    with pytest.raises(DatasetError, match="no split 'test'"):
        voc(data_root, split="test")


def test_root_from_env_and_dataset_folder(data_root, monkeypatch):
    monkeypatch.setenv("PHREG_DATA", str(data_root))
    assert len(DATASETS.get("ade20k")()) == 3
    assert len(DATASETS.get("ade20k")(data_root / "ade" / "ADEChallengeData2016")) == 3  # the folder itself
    monkeypatch.delenv("PHREG_DATA")
    with pytest.raises(DatasetError, match="PHREG_DATA"):
        DATASETS.get("ade20k")()


def test_corrupt_image_and_bad_labels_name_the_file(tmp_path):
    folder = make_ade(tmp_path)
    image = folder / "images" / "validation" / "ADE_val_00000002.jpg"
    image.write_bytes(b"not a jpeg")
    dataset = DATASETS.get("ade20k")(tmp_path)
    with pytest.raises(DatasetError, match="ADE_val_00000002.jpg"):
        dataset[1]
    label = folder / "annotations" / "validation" / "ADE_val_00000003.png"
    write_label(label, np.full((33, 45), 200))  # 200 > 150: not an ADE class
    with pytest.raises(DatasetError, match=r"ADE_val_00000003.png has values \[200\]"):
        dataset[2]
    write_label(label, np.zeros((10, 10)))
    with pytest.raises(DatasetError, match="does not belong together"):
        dataset[2]
    Image.fromarray(np.zeros((33, 45, 3), np.uint8)).save(label)
    with pytest.raises(DatasetError, match="mode 'RGB'"):
        dataset[2]


def test_missing_listed_file_fails_at_construction(tmp_path):
    folder = make_voc(tmp_path)
    (folder / "SegmentationClass" / "2007_000042.png").unlink()
    with pytest.raises(DatasetError, match="2007_000042.png"):
        DATASETS.get("voc21")(tmp_path)


def test_check_reports_missing_extra_and_counts(tmp_path):
    folder = make_ade(tmp_path)
    (folder / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    write_label(folder / "annotations" / "validation" / "ADE_val_00000099.png", np.zeros((4, 4)))
    report = DATASETS.get("ade20k").check(tmp_path, "val")
    assert report.found == 2 and report.expected == 2000 and not report.ok
    assert report.missing == [str(folder / "annotations" / "validation" / "ADE_val_00000001.png")]
    assert report.extra == [str(folder / "annotations" / "validation" / "ADE_val_00000099.png")]
    assert "ADEChallengeData2016.zip" in report.fix
    absent = DATASETS.get("cityscapes").check(tmp_path, "val")
    assert absent.found == 0 and "cityscapes" in absent.missing[0]


def test_data_check_cli(tmp_path, capsys):
    make_voc(tmp_path)
    assert main(["data", "check", "ovseg/voc21", "--data-root", str(tmp_path)]) == 1  # 3 of 1449
    err = capsys.readouterr().err
    assert "3 of 1449" in err and "VOCtrainval_11-May-2012" in err
    assert main(["data", "check", "voc20", "--data-root", str(tmp_path), "--split", "train", "--deep"]) == 1


def test_coco_converters_follow_the_reference_tables(tmp_path, capsys):
    stuff, obj = stuff_lut(), object_lut()
    # mmseg coco_stuff164k.py: 0->0, 10->10, 12->11, 91->80, 92->81, 181->170; 255 stays.
    assert [stuff[i] for i in (0, 10, 12, 91, 92, 181, 255)] == [0, 10, 11, 80, 81, 170, 255]
    # NACLIP cvt_coco_object.py: things +1 (0->1, 12->12, 89->80), stuff and 255 -> background 0.
    assert [obj[i] for i in (0, 12, 89, 91, 92, 181, 255)] == [1, 12, 80, 0, 0, 0, 0]
    assert (stuff[[11, 25, 90]] == -1).all()  # unused COCO ids
    folder = make_coco(tmp_path, convert=False)
    raw_path = folder / "annotations" / "val2017" / "000000000139.png"
    write_label(raw_path, np.array([[0, 12, 91], [181, 255, 89]]))
    assert main(["data", "convert-coco-object", "--data-root", str(tmp_path), "--splits", "val"]) == 0
    assert main(["data", "convert-coco-stuff", "--data-root", str(tmp_path), "--splits", "val"]) == 0
    converted = read_label(raw_path.with_name("000000000139_instanceTrainIds.png"))
    assert converted.tolist() == [[1, 12, 0], [0, 0, 80]]
    assert read_label(raw_path.with_name("000000000139_labelTrainIds.png")).tolist() == [[0, 11, 80], [170, 255, 79]]
    write_label(raw_path, np.array([[11]]))  # an unused id is not a COCO-Stuff label
    raw_path.with_name("000000000139_instanceTrainIds.png").unlink()
    assert main(["data", "convert-coco-object", "--data-root", str(tmp_path), "--splits", "val"]) == 2
    assert "000000000139.png has values [11] that are not COCO-Stuff ids" in capsys.readouterr().err


def test_cityscapes_converter(tmp_path):
    folder = make_cityscapes(tmp_path, convert=False)
    source = folder / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png"
    write_label(source, np.array([[7, 8, 33], [0, 1, 255]]))
    assert main(["data", "convert-cityscapes", "--data-root", str(tmp_path)]) == 0
    out = read_label(source.with_name("lindau_000000_000019_gtFine_labelTrainIds.png"))
    assert out.tolist() == [[0, 1, 18], [255, 255, 255]]
    assert len(LABEL_ID_TO_TRAIN_ID) == 19 and sorted(LABEL_ID_TO_TRAIN_ID.values()) == list(range(19))
