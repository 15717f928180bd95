"""The two file layouts behind every reader: a split list file, or a folder of images paired by suffix."""

from __future__ import annotations

from pathlib import Path

from phreg_bench.datasets.base import DatasetError, SegDataset, read_list_lines, resolve_listed


class ListedDataset(SegDataset):
    """Samples from a split list file, in the list's order (as mmseg's ``ann_file``).

    ``split_files`` maps a split to candidate list files (the first that exists is used) and its label
    folder, e.g. VOC's ``train_aug`` → ``ImageSets/Segmentation/{train_aug,aug}.txt`` + ``SegmentationClassAug``.
    Two line formats are read (one per file; blank lines ignored):

    * one column, an id (mmseg): ``<image_dir>/<id><image_suffix>`` + ``<label_dir>/<id><label_suffix>``;
      an id is a file stem, so it may not contain ``/``, ``\\`` or be ``..``;
    * two columns, ``<image path> <label path>`` (DeepLab / SBD ``train_aug.txt``:
      ``/JPEGImages/x.jpg /SegmentationClassAug/x.png``): paths relative to the dataset folder (a leading
      ``/`` means the dataset folder), which must stay inside it; the id is the image's file stem.

    Anything else raises :class:`DatasetError` naming the file, the line and the expected formats.
    """

    image_dir: str = "JPEGImages"
    image_suffix: str = ".jpg"
    label_suffix: str = ".png"
    split_files: dict[str, tuple[tuple[str, ...], str]] = {}

    @classmethod
    def looks_like_folder(cls, path: Path) -> bool:
        return (path / cls.image_dir).is_dir()

    def list_file(self, split: str) -> tuple[Path, str]:
        candidates, label_dir = self.split_files[split]
        for candidate in candidates:
            if (self.root / candidate).is_file():
                return self.root / candidate, label_dir
        raise DatasetError(f"{self.name} {split}: split list {self.root / candidates[0]} not found. "
                           f"{self.download_hint}")

    def list_pairs(self, split: str) -> list[tuple[str, Path, Path]]:
        path, label_dir = self.list_file(split)
        expected = (f"expected one id per line (e.g. 2007_000032) or '<image path> <label path>' pairs "
                    f"(e.g. /{self.image_dir}/2007_000032{self.image_suffix} /{label_dir}/2007_000032"
                    f"{self.label_suffix})")
        pairs, columns = [], None
        for number, line in read_list_lines(path):
            parts = line.split()
            if len(parts) > 2 or (columns is not None and len(parts) != columns):
                raise DatasetError(f"{path} line {number}: {line!r} does not match the file's format; {expected}")
            columns = len(parts)
            if columns == 1:
                sample_id = parts[0]
                if "/" in sample_id or "\\" in sample_id or sample_id in (".", ".."):
                    raise DatasetError(f"{path} line {number}: {sample_id!r} is not an id (a file stem); {expected}")
                pairs.append((sample_id, self.root / self.image_dir / f"{sample_id}{self.image_suffix}",
                              self.root / label_dir / f"{sample_id}{self.label_suffix}"))
            else:
                image = resolve_listed(self.root, "", parts[0], path, number)
                label = resolve_listed(self.root, "", parts[1], path, number)
                pairs.append((image.stem, image, label))
        return pairs


class FolderDataset(SegDataset):
    """Every ``*<image_suffix>`` under ``image_dir`` (recursively, sorted by path, as mmseg lists them),
    paired with the label at the same relative path with ``label_suffix`` instead.

    ``image_dir``/``label_dir`` may contain ``{split_dir}``, filled from ``split_dirs``.
    """

    image_dir: str = ""
    label_dir: str = ""
    image_suffix: str = ".jpg"
    label_suffix: str = ".png"
    split_dirs: dict[str, str] = {}

    @classmethod
    def looks_like_folder(cls, path: Path) -> bool:
        first = cls.image_dir.split("/")[0]
        return (path / first).is_dir()

    def folders(self, split: str) -> tuple[Path, Path]:
        split_dir = self.split_dirs.get(split, split)
        return (self.root / self.image_dir.format(split_dir=split_dir),
                self.root / self.label_dir.format(split_dir=split_dir))

    def list_pairs(self, split: str) -> list[tuple[str, Path, Path]]:
        image_dir, label_dir = self.folders(split)
        if not image_dir.is_dir():
            raise DatasetError(f"{self.name} {split}: image folder {image_dir} not found. {self.download_hint}")
        pairs = []
        for image in sorted(image_dir.rglob(f"*{self.image_suffix}"), key=lambda p: p.as_posix()):  # as mmseg
            relative = image.relative_to(image_dir).as_posix()
            stem = relative[: -len(self.image_suffix)]
            pairs.append((stem, image, label_dir / f"{stem}{self.label_suffix}"))
        return pairs

    def extra_files(self, split: str) -> list[str]:
        image_dir, label_dir = self.folders(split)
        if not label_dir.is_dir():
            return []
        extra = []
        for label in sorted(label_dir.rglob(f"*{self.label_suffix}")):
            stem = label.relative_to(label_dir).as_posix()[: -len(self.label_suffix)]
            if not (image_dir / f"{stem}{self.image_suffix}").exists():
                extra.append(str(label))
        return extra
