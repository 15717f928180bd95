"""The two file layouts behind every reader: a split list file, or a folder of images paired by suffix."""

from __future__ import annotations

from pathlib import Path

from phreg_bench.datasets.base import DatasetError, SegDataset, read_list_lines


class ListedDataset(SegDataset):
    """Ids from a split list file; ``<image_dir>/<id><image_suffix>`` + ``<label_dir>/<id><label_suffix>``.

    ``split_files`` maps a split to candidate list files (the first that exists is used) and its label
    folder, e.g. VOC's ``train_aug`` → ``ImageSets/Segmentation/{train_aug,aug}.txt`` + ``SegmentationClassAug``.
    Order = the list file's order (as mmseg's ``ann_file``).
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
        ids = read_list_lines(path)
        return [(i, self.root / self.image_dir / f"{i}{self.image_suffix}",
                 self.root / label_dir / f"{i}{self.label_suffix}") for i in ids]


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
