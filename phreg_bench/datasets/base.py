"""Semantic-segmentation dataset readers over the standard on-disk layouts (mmseg's ``data/`` folders).

Every reader returns :class:`SegSample` items — an RGB ``uint8 [H, W, 3]`` image, an ``int64 [H, W]``
label with 255 = ignore, an id and both paths — in a deterministic order (the split list's order, or
sorted file names), for any split the layout has. Labels are checked on read: a value outside the
dataset's raw label set raises :class:`DatasetError` naming the file; so does an unreadable image or a
label whose size differs from its image's. (The ``ovseg`` family can skip such files and count them
instead: ``phreg-bench run --skip-corrupt``, i.e. ``RunContext.options["skip_corrupt"] = True``.)

``reduce_zero_label`` is applied exactly as mmseg's ``LoadAnnotations`` does it: 0 → 255, every other
value − 1, and 255 stays 255.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from phreg_core.errors import PhregError
from phreg_core.images import ImageReadError, open_image, read_rgb

IGNORE_INDEX = 255  # mmseg's ignore index for every dataset used here


class DatasetError(PhregError, ValueError):
    """A missing, corrupt or unexpected file; the message names the file and the fix."""


@dataclass
class SegSample:
    image: np.ndarray  # uint8 [H, W, 3], RGB
    label: np.ndarray  # int64 [H, W]; IGNORE_INDEX = ignore
    id: str
    image_path: Path
    label_path: Path


@dataclass
class CheckReport:
    """What ``phreg-bench data check`` prints for one dataset split."""

    dataset: str
    split: str
    folder: Path
    expected: int | None
    found: int
    missing: list[str] = field(default_factory=list)  # files the layout needs but are not there
    extra: list[str] = field(default_factory=list)  # images without labels or labels without images
    problems: list[str] = field(default_factory=list)  # unreadable / unexpected files
    fix: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.problems and (self.expected is None or self.found == self.expected)


def data_root_folders() -> list[str]:
    """The top-level folders the registered dataset readers look for in a data root (``VOCdevkit``, ``ade``,
    ``nyu_depth_v2``, ...), read from each reader's ``folder`` so that the list follows the readers; a
    reader without a ``folder``, or a plugin that cannot be imported, adds none."""
    from phreg_bench.datasets.catalogue import DATASETS
    from phreg_bench.registry import RegistryError

    folders = []
    for entry in DATASETS:
        try:
            folder = getattr(entry.resolve(), "folder", "")
        except RegistryError:
            continue
        if folder:
            folders.append(Path(folder).parts[0])
    return list(dict.fromkeys(folders))


def resolve_data_root(root: str | os.PathLike | None) -> Path:
    """``root`` if given, else ``$PHREG_DATA``; an error saying how to set one otherwise."""
    chosen = root if root is not None else os.environ.get("PHREG_DATA")
    if not chosen:
        holding = ", ".join(f"{folder}/" for folder in data_root_folders())
        raise DatasetError(f"no data folder: pass --data-root DIR or set PHREG_DATA=DIR (the folder holding {holding})")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DatasetError(f"data folder {path} does not exist; pass --data-root DIR or set PHREG_DATA")
    return path


def resolve_listed(root: Path, base: str, relative: str, list_file: Path, number: int) -> Path:
    """``root/base/relative`` for a path read from line ``number`` of a split list, normalised lexically
    (``a/../b`` → ``b``; symlinks inside the dataset are kept as they are). A leading ``/`` means "the dataset
    folder" (DeepLab / BTS lists write ``/JPEGImages/x.jpg``). Raises :class:`DatasetError` if the path
    leaves ``root``."""
    top = Path(os.path.normpath(root))
    path = Path(os.path.normpath(top / base / relative.lstrip("/\\")))
    if path != top and top not in path.parents:
        raise DatasetError(f"{list_file} line {number}: {relative!r} points outside the dataset folder {top}; "
                           "split lists may only name files inside it")
    return path


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg ``LoadAnnotations(reduce_zero_label=True)``: 0 → 255, others − 1, 255 stays 255."""
    out = label.copy()
    out[label == 0] = IGNORE_INDEX
    out = out - 1
    out[out == IGNORE_INDEX - 1] = IGNORE_INDEX
    return out


def read_image(path: Path) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` by the project's one image rule (:mod:`phreg_core.images`: every Pillow mode
    converted explicitly or refused). Raises :class:`DatasetError` naming the file."""
    try:
        return read_rgb(path)
    except ImageReadError as error:
        raise DatasetError(f"{error} (or remove it from the split)") from error


LABEL_MODES = ("P", "L", "I", "I;16", "I;16L", "I;16B", "I;16N")  # index images: palette or single channel


def read_label(path: Path) -> np.ndarray:
    """Label indices ``int64 [H, W]`` from a palette or grayscale PNG (mmseg reads them 'unchanged').

    A palette PNG gives its palette *indices* (never colours). Any other mode (RGB / RGBA colour-rendered
    masks, ``LA``, ``1``, float ``F`` ...) is refused by name, as are unreadable files.
    """
    try:
        with open_image(path) as image:
            if image.mode not in LABEL_MODES:
                raise DatasetError(f"label {path} has Pillow mode {image.mode!r}; expected a palette (P) or "
                                   "grayscale (L, I;16) index image: a colour-rendered mask cannot be read as "
                                   "class ids. Use the dataset's index PNGs or reconvert the labels")
            return np.asarray(image, dtype=np.int64)
    except ImageReadError as error:
        raise DatasetError(f"label file: {error} (a converted label: rerun its converter)") from error


def read_list_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number in the file, stripped line)`` of the non-empty lines of a split list; an unreadable
    list raises :class:`DatasetError` naming it."""
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"split list {path} cannot be read ({error}); re-download it") from error
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    for number, line in lines:
        if "\x00" in line:
            raise DatasetError(f"split list {path}: line {number} contains a NUL byte; re-download it")
    return lines

class SegDataset:
    """Base reader. Subclasses set the class attributes and implement :meth:`list_pairs`.

    ``root`` is the data folder (holding ``folder``), or the dataset folder itself; ``None`` means
    ``$PHREG_DATA``. ``limit`` keeps the first N samples of the deterministic order.
    """

    name: str = ""
    folder: str = ""  # relative to the data root, e.g. "VOCdevkit/VOC2012"
    num_classes: int = 0  # after reduce_zero_label
    raw_values: int = 0  # valid raw label values are 0..raw_values-1 and IGNORE_INDEX
    reduce_zero_label: bool = False
    has_background: bool = False  # class 0 is "background" (VOC21, PC60, COCO-Object)
    expected_counts: dict[str, int] = {}
    splits: tuple[str, ...] = ()
    download_hint: str = ""

    def __init__(self, root: str | os.PathLike | None = None, split: str = "val", limit: int | None = None):
        self.root = self.locate(resolve_data_root(root))
        self.split = self.canonical_split(split)
        self.pairs = self.list_pairs(self.split)
        missing = [str(path) for _, image, label in self.pairs for path in (image, label) if not path.exists()]
        if missing:
            raise DatasetError(f"{self.name} {self.split}: {len(missing)} listed files are missing, e.g. "
                               f"{missing[0]}; run `phreg-bench data check` for the full list. {self.download_hint}")
        self.full_count = len(self.pairs)
        if limit is not None:
            self.pairs = self.pairs[:limit]

    # -- layout ---------------------------------------------------------------------------------------
    @classmethod
    def locate(cls, root: Path) -> Path:
        """The dataset folder: ``root/folder`` if it exists, else ``root`` if it looks like the folder."""
        candidate = root / cls.folder
        if candidate.is_dir():
            return candidate
        if cls.looks_like_folder(root):
            return root
        raise DatasetError(f"{cls.name}: {candidate} not found. {cls.download_hint}")

    @classmethod
    def looks_like_folder(cls, path: Path) -> bool:
        return False

    @classmethod
    def canonical_split(cls, split: str) -> str:
        if cls.splits and split not in cls.splits:
            raise DatasetError(f"{cls.name} has no split {split!r}; choose from {', '.join(cls.splits)}")
        return split

    def list_pairs(self, split: str) -> list[tuple[str, Path, Path]]:
        """``(id, image_path, label_path)`` for every sample of the split, in a fixed order."""
        raise NotImplementedError

    def extra_files(self, split: str) -> list[str]:
        """Files of the split's folders that belong to no sample (labels without images, ...)."""
        return []

    @classmethod
    def check(cls, root: str | os.PathLike | None, split: str = "val", deep: bool = False) -> CheckReport:
        """Report missing and extra files and the count found vs expected; ``deep`` also reads every pair."""
        split = cls.canonical_split(split)
        expected = cls.expected_counts.get(split)
        try:
            folder = cls.locate(resolve_data_root(root))
        except DatasetError as error:
            return CheckReport(cls.name, split, Path(str(root)) / cls.folder, expected, 0,
                               missing=[str(error)], fix=cls.download_hint)
        reader = cls.__new__(cls)
        reader.root, reader.split = folder, split
        try:
            pairs = reader.list_pairs(split)
        except DatasetError as error:
            return CheckReport(cls.name, split, folder, expected, 0, missing=[str(error)], fix=cls.download_hint)
        missing = [str(path) for _, image, label in pairs for path in (image, label) if not path.exists()]
        complete = [pair for pair in pairs if pair[1].exists() and pair[2].exists()]
        report = CheckReport(cls.name, split, folder, expected, len(complete), missing=missing,
                             extra=reader.extra_files(split))
        if deep:
            reader.pairs = complete
            for index in range(len(complete)):
                try:
                    reader[index]
                except DatasetError as error:
                    report.problems.append(str(error))
        if not report.ok:
            report.fix = cls.download_hint
        return report

    # -- reading --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> SegSample:
        sample_id, image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        raw = read_label(label_path)
        if raw.shape != image.shape[:2]:
            raise DatasetError(f"label {label_path} is {raw.shape[1]}x{raw.shape[0]} but image {image_path} is "
                               f"{image.shape[1]}x{image.shape[0]}; the pair does not belong together")
        self.validate_raw(raw, label_path)
        return SegSample(image=image, label=self.convert_label(raw), id=sample_id, image_path=image_path,
                         label_path=label_path)

    def validate_raw(self, raw: np.ndarray, path: Path) -> None:
        bad = (raw >= self.raw_values) & (raw != IGNORE_INDEX) | (raw < 0)
        if bad.any():
            values = sorted(set(np.unique(raw[bad]).tolist()))[:8]
            raise DatasetError(f"label {path} has values {values} outside 0..{self.raw_values - 1} and "
                               f"{IGNORE_INDEX}; is it the converted {self.name} label file? {self.download_hint}")

    def convert_label(self, raw: np.ndarray) -> np.ndarray:
        return reduce_zero_label(raw) if self.reduce_zero_label else raw

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]
