"""NYU Depth v2 for monocular depth: the standard 654-image test split, and two training sources.

Two on-disk layouts are read, both under ``<data root>/nyu_depth_v2/`` (or that folder given directly):

``labeled`` — the official labelled subset, 1449 frames:
    nyu_depth_v2_labeled.mat   MATLAB v7.3 (HDF5, read with h5py). Datasets: ``images`` uint8
                               ``[N, 3, 640, 480]`` and ``rawDepths`` / ``depths`` float ``[N, 640, 480]``
                               in metres — MATLAB's ``[480, 640, 3, N]`` / ``[480, 640, N]`` seen transposed.
    splits.mat                 MATLAB v5 (scipy): ``trainNdxs`` (795) and ``testNdxs`` (654), 1-based.
    Frames are converted as BTS's ``utils/extract_official_train_test_set_from_mat.py`` (``cleinc/bts``) does
    when it writes the ``official_splits`` folders that DINOv2/DVT evaluate on: ground truth from
    ``rawDepths`` (holes are 0 and are masked), stored as ``uint16`` millimetres (``astype`` truncation, here
    ``floor(d * 1000) / 1000``), and the RGB frame blacked out outside ``[7:474, 7:632]``. (BTS also writes
    the RGB as JPEG; that lossy step is not repeated here.)

``sync`` — the BTS / Monocular-Depth-Estimation-Toolbox layout used by DINOv2 and DVT: split files with one
    ``<rgb path> <depth png path> <focal>`` line per pair (``None`` as depth = skipped), paths relative to the
    dataset folder, depth PNGs in millimetres (``depth_scale=1000``). Train lists: ``nyu_train.txt`` or
    ``nyudepthv2_train_files_with_gt.txt`` (the 24,231-pair ``sync`` subset); test lists: ``nyu_test.txt`` or
    ``nyudepthv2_test_files_with_gt.txt`` (the same 654 official test frames). BTS-named lists give paths
    relative to ``sync/`` (train) and ``official_splits/test/`` (test); both bases are tried. Every listed
    path must stay inside the dataset folder.

Depth PNGs are checked on read (:func:`read_depth_png`): they must be 16-bit (or 32-bit integer) greyscale
millimetres. An 8-bit PNG — the widely shared repackaging that stores ``0..255 = 0..10 m`` — is refused with
the conversion to apply, as is a 16-bit file whose depths are implausible for NYU's Kinect frames (all below
``PLAUSIBLE_MAX_DEPTH_M[0]`` or some above ``PLAUSIBLE_MAX_DEPTH_M[1]``): read as millimetres, such files
would silently give depths of 0.03-0.26 m.

``source="auto"`` reads ``labeled`` when the ``.mat`` files are present, otherwise ``sync``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phreg_bench.datasets.base import (
    CheckReport,
    DatasetError,
    read_image,
    read_list_lines,
    resolve_data_root,
    resolve_listed,
)
from phreg_core.images import ImageReadError, open_image

FOLDER = "nyu_depth_v2"
MAT_FILE = "nyu_depth_v2_labeled.mat"
SPLITS_FILE = "splits.mat"
SPLIT_FILES = {
    "train": ("nyu_train.txt", "nyudepthv2_train_files_with_gt.txt"),
    "test": ("nyu_test.txt", "nyudepthv2_test_files_with_gt.txt"),
}
SPLIT_BASES = {"train": ("", "sync"), "test": ("", "official_splits/test")}
EXPECTED = {"labeled": {"train": 795, "test": 654}, "sync": {"train": 24231, "test": 654}}
DEPTH_SCALE = 1000.0  # depth PNGs hold millimetres [Monocular-Depth-Estimation-Toolbox NYUDataset depth_scale]
DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit (or 32-bit integer) greyscale PNG
EIGHT_BIT_MODES = ("L", "P", "1", "LA", "PA")
# The largest valid depth of a real NYU frame lies inside this range (metres): the Kinect v1 measures from
# about 0.5 m to about 10 m [Silberman et al., ECCV 2012, NYU Depth v2], and a room frame always reaches past
# 0.3 m; 16-bit millimetres cannot exceed 65.5 m. Outside it the file is not in millimetres.
PLAUSIBLE_MAX_DEPTH_M = (0.3, 20.0)
EIGHT_BIT_FULL_SCALE_M = 10.0  # the 8-bit repackaging maps 0..255 to 0..10 m
BTS_VALID_RGB = (7, 474, 7, 632)  # BTS extraction keeps image[7:474, 7:632] and blacks out the border
DOWNLOAD_HINT = (
    "Put nyu_depth_v2_labeled.mat and splits.mat (https://cs.nyu.edu/~fergus/datasets/nyu_depth_v2.html, "
    "http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat) in <data root>/nyu_depth_v2/, or the "
    "BTS 'sync' + 'official_splits' folders with nyu_train.txt / nyu_test.txt split files."
)


@dataclass
class DepthSample:
    image: np.ndarray  # uint8 [H, W, 3], RGB
    depth: np.ndarray  # float32 [H, W], metres; 0 = no measurement
    id: str


def locate(root: str | os.PathLike | None) -> Path:
    base = resolve_data_root(root)
    for candidate in (base / FOLDER, base):
        if (candidate / MAT_FILE).exists() or any((candidate / n).exists() for names in SPLIT_FILES.values()
                                                  for n in names):
            return candidate
    raise DatasetError(f"NYUv2: neither {base / FOLDER / MAT_FILE} nor a split file found. {DOWNLOAD_HINT}")


class NYUv2Depth:
    """NYUv2 depth reader (see the module docstring). ``split`` is ``train`` or ``test``."""

    name = "nyuv2"
    folder = FOLDER  # relative to the data root

    def __init__(self, root: str | os.PathLike | None = None, split: str = "test", limit: int | None = None,
                 source: str = "auto"):
        if split not in ("train", "test"):
            raise DatasetError(f"NYUv2 has splits 'train' and 'test', not {split!r}")
        self.root = locate(root)
        self.split = split
        if source == "auto":
            source = "labeled" if (self.root / MAT_FILE).exists() else "sync"
        if source not in ("labeled", "sync"):
            raise DatasetError(f"NYUv2 source must be 'labeled', 'sync' or 'auto', got {source!r}")
        self.source = source
        self._h5 = None
        self.items: list = self._list_labeled() if source == "labeled" else self._list_sync()
        self.full_count = len(self.items)
        if limit is not None:
            self.items = self.items[:limit]

    # -- listing --------------------------------------------------------------------------------------
    def _list_labeled(self) -> list[int]:
        from scipy.io import loadmat

        mat, splits = self.root / MAT_FILE, self.root / SPLITS_FILE
        for path in (mat, splits):
            if not path.exists():
                raise DatasetError(f"NYUv2 labeled source: {path} is missing. {DOWNLOAD_HINT}")
        try:
            indices = loadmat(str(splits))["trainNdxs" if self.split == "train" else "testNdxs"]
        except (ValueError, KeyError, OSError) as error:
            raise DatasetError(f"{splits} cannot be read as the official NYUv2 splits.mat ({error})") from error
        return [int(i) - 1 for i in np.asarray(indices).ravel()]  # MATLAB indices are 1-based

    def split_file(self) -> Path:
        for name in SPLIT_FILES[self.split]:
            if (self.root / name).exists():
                return self.root / name
        raise DatasetError(f"NYUv2 sync source: no {' or '.join(SPLIT_FILES[self.split])} in {self.root}. "
                           f"{DOWNLOAD_HINT}")

    def _resolve(self, relative: str, list_file: Path, number: int) -> Path:
        candidates = [resolve_listed(self.root, base, relative, list_file, number) for base in SPLIT_BASES[self.split]]
        for path in candidates:
            if path.exists():
                return path
        raise DatasetError(f"NYUv2: {relative} (listed in {list_file.name}) not found under {self.root} "
                           f"or its {SPLIT_BASES[self.split][1]}/ folder")

    def _list_sync(self) -> list[tuple[str, Path, Path]]:
        items = []
        list_file = self.split_file()
        for number, line in read_list_lines(list_file):
            parts = line.strip().split()
            if not parts:
                continue
            if len(parts) < 2:
                raise DatasetError(f"{list_file} line {number}: {line.strip()!r} has one column; expected "
                                   "'<rgb path> <depth png path> [focal]' per line (BTS / Monocular-Depth-"
                                   "Estimation-Toolbox format, 'None' as depth to skip a frame)")
            if parts[1] == "None":
                continue
            items.append((parts[0].lstrip("/"), self._resolve(parts[0], list_file, number),
                          self._resolve(parts[1], list_file, number)))
        return sorted(items, key=lambda item: item[0])  # the reference sorts by file name

    # -- reading --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def ids(self) -> list[str]:
        return [self._id(item) for item in self.items]

    def _id(self, item) -> str:
        return f"{item:05d}" if self.source == "labeled" else item[0]

    def _file(self):
        if self._h5 is None:
            import h5py

            try:
                self._h5 = h5py.File(self.root / MAT_FILE, "r")
            except OSError as error:
                raise DatasetError(f"{self.root / MAT_FILE} is not a MATLAB v7.3 (HDF5) file ({error}); "
                                   f"re-download it. {DOWNLOAD_HINT}") from error
        return self._h5

    def __getitem__(self, index: int) -> DepthSample:
        item = self.items[index]
        if self.source == "labeled":
            data = self._file()
            image = np.ascontiguousarray(np.asarray(data["images"][item]).transpose(2, 1, 0))  # [3,W,H] -> [H,W,3]
            raw = np.asarray(data["rawDepths"][item], dtype=np.float64).T
            depth = (np.floor(raw * DEPTH_SCALE) / DEPTH_SCALE).astype(np.float32)  # uint16-mm round trip
            top, bottom, left, right = _scaled_rgb_box(image.shape[:2])
            framed = np.zeros_like(image)
            framed[top:bottom, left:right] = image[top:bottom, left:right]
            return DepthSample(framed, depth, self._id(item))
        sample_id, image_path, depth_path = item
        image = read_image(image_path)
        depth = read_depth_png(depth_path)
        if depth.shape != image.shape[:2]:
            raise DatasetError(f"depth map {depth_path} is {depth.shape} but image {image_path} is {image.shape[:2]}")
        return DepthSample(image, depth, sample_id)

    def manifest(self) -> str:
        """sha256 over what identifies the split's content (source, ids, file sizes); used in cache keys."""
        digest = hashlib.sha256(f"{self.source}:{self.split}".encode())
        if self.source == "labeled":
            for path in (self.root / MAT_FILE, self.root / SPLITS_FILE):
                digest.update(f"{path.name}:{path.stat().st_size}".encode())
            digest.update(np.asarray(self.items, dtype=np.int64).tobytes())
        else:
            for sample_id, image_path, depth_path in self.items:
                digest.update(f"{sample_id}:{image_path.stat().st_size}:{depth_path.stat().st_size}\n".encode())
        return digest.hexdigest()

    @classmethod
    def check(cls, root: str | os.PathLike | None, split: str = "test", deep: bool = False,
              source: str = "auto") -> CheckReport:
        """What ``phreg-bench data check nyu`` prints: count found vs expected, missing files, unreadable ones."""
        try:
            reader = cls(root, split, source=source)
        except DatasetError as error:
            return CheckReport(cls.name, split, Path(str(root)) / FOLDER, None, 0, missing=[str(error)],
                               fix=DOWNLOAD_HINT)
        report = CheckReport(cls.name, f"{split} ({reader.source})", reader.root,
                             EXPECTED[reader.source][split], len(reader))
        if not deep and reader.source == "sync" and len(reader):
            try:  # one depth map tells its format (8-bit repackaging, wrong scale) without the slow --deep
                read_depth_png(reader.items[0][2])
            except DatasetError as error:
                report.problems.append(str(error))
        if deep:
            for index in range(len(reader)):
                try:
                    reader[index]
                except (DatasetError, OSError, KeyError) as error:
                    report.problems.append(str(error))
        reader.close()
        if not report.ok:
            report.fix = DOWNLOAD_HINT
        return report

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def read_depth_png(path: Path) -> np.ndarray:
    """Depth ``float32 [H, W]`` in metres (0 = no measurement) from a 16-bit millimetre PNG.

    Raises :class:`DatasetError` naming the file for an unreadable file, an 8-bit PNG (the ``0..255 =
    0..10 m`` repackaging, with the conversion to apply), another mode, or implausible depths (see
    :data:`PLAUSIBLE_MAX_DEPTH_M`).
    """
    try:
        with open_image(path) as png:
            mode = png.mode
            if mode in EIGHT_BIT_MODES:
                raise DatasetError(
                    f"depth map {path} is an 8-bit PNG (Pillow mode {mode!r}), not 16-bit millimetres: it is "
                    f"probably the repackaging that stores 0..255 = 0..{EIGHT_BIT_FULL_SCALE_M:g} m (4 cm steps), "
                    "which would read as 0-0.26 m. Use the BTS 'sync' / 'official_splits' depth PNGs (uint16 mm), "
                    f"or convert every such file to a uint16 PNG of millimetres = round(v * "
                    f"{EIGHT_BIT_FULL_SCALE_M * DEPTH_SCALE:g} / 255) (this keeps its 4 cm precision)")
            if mode not in DEPTH_MODES:
                raise DatasetError(f"depth map {path} has Pillow mode {mode!r}; expected a 16-bit greyscale PNG "
                                   "of millimetres (BTS 'sync' / 'official_splits' layout)")
            raw = np.asarray(png).astype(np.float32)
    except ImageReadError as error:
        raise DatasetError(f"depth map: {error}") from error
    depth = raw / DEPTH_SCALE
    valid = depth[depth > 0]
    if valid.size:
        top = float(valid.max())
        low, high = PLAUSIBLE_MAX_DEPTH_M
        if not low <= top <= high:
            hint = ("an 8-bit 0..255 depth saved as 16 bits? convert v to millimetres = round(v * 10000 / 255)"
                    if top < low else "the file is not in millimetres (e.g. scaled to the full 16-bit range)")
            raise DatasetError(f"depth map {path} reads as depths up to {top:.3f} m, read as millimetres; NYU "
                               f"frames reach between {low:g} and {high:g} m: {hint}. Use the BTS uint16 "
                               "millimetre PNGs")
    return depth


def _scaled_rgb_box(shape: tuple[int, int]) -> tuple[int, int, int, int]:
    from phreg_bench.metrics.depth import scaled_box

    return scaled_box(BTS_VALID_RGB, shape)
