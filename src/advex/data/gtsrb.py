"""The German Traffic Sign Recognition Benchmark (GTSRB) in its original on-disk layout.

Stallkamp, Schlipsing, Salmen and Igel, "The German Traffic Sign Recognition Benchmark: a
multi-class classification competition", IJCNN 2011. 43 classes; the official test set has
12,630 images.

Layout read (``root`` is the folder holding ``GTSRB/``, or ``GTSRB/`` itself, or the folder
holding ``Final_Training`` and ``Final_Test``)::

    Final_Training/Images/000CC/GT-000CC.csv   (one per class; Filename;...;ClassId)
    Final_Training/Images/000CC/TTTTT_IIIII.ppm
    Final_Test/GT-final_test.csv               (the test ground truth, with ClassId)
    Final_Test/Images/NNNNN.ppm

CSV rows are joined against the image files that exist (a partial copy of the training set is
fine); how many rows had no file is reported in ``dataset.info`` and by a
:class:`GTSRBWarning`. Images of any size are resized to ``size × size`` (bilinear, with
anti-aliasing when shrinking); the ROI columns of the CSVs can crop the sign first
(``roi=True``) where they describe the file (its size equals the CSV's Width/Height).
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .core import ArrayDataset, DatasetError

__all__ = ["GTSRB_CLASSES", "GTSRBWarning", "gtsrb", "read_ppm", "gtsrb_root"]

#: the 43 GTSRB classes, by ClassId (names as usually given, lower case)
GTSRB_CLASSES = [
    "speed limit (20km/h)",
    "speed limit (30km/h)",
    "speed limit (50km/h)",
    "speed limit (60km/h)",
    "speed limit (70km/h)",
    "speed limit (80km/h)",
    "end of speed limit (80km/h)",
    "speed limit (100km/h)",
    "speed limit (120km/h)",
    "no passing",
    "no passing for vehicles over 3.5 tons",
    "right-of-way at the next intersection",
    "priority road",
    "yield",
    "stop",
    "no vehicles",
    "vehicles over 3.5 tons prohibited",
    "no entry",
    "general caution",
    "dangerous curve to the left",
    "dangerous curve to the right",
    "double curve",
    "bumpy road",
    "slippery road",
    "road narrows on the right",
    "road work",
    "traffic signals",
    "pedestrians",
    "children crossing",
    "bicycles crossing",
    "beware of ice/snow",
    "wild animals crossing",
    "end of all speed and passing limits",
    "turn right ahead",
    "turn left ahead",
    "ahead only",
    "go straight or right",
    "go straight or left",
    "keep right",
    "keep left",
    "roundabout mandatory",
    "end of no passing",
    "end of no passing by vehicles over 3.5 tons",
]

_MAX_SIDE = 10_000  # a PPM header claiming more is refused (no multi-GB allocation)
_COLUMNS = ("Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")


class GTSRBWarning(UserWarning):
    """CSV rows of the GTSRB annotations without an image file (a partial copy)."""


# ---------------------------------------------------------------------------------------------
# PPM (P6)
# ---------------------------------------------------------------------------------------------


def _header_tokens(data: bytes, path) -> tuple[list[int], int]:
    """The three numbers after ``P6`` (width, height, maxval) and the offset of the pixels."""
    if data[:2] != b"P6":
        raise DatasetError(f"{path}: not a binary PPM file (magic {data[:2]!r}, expected b'P6')")
    pos, tokens = 2, []
    n = len(data)
    while len(tokens) < 3:
        if pos >= n:
            raise DatasetError(f"{path}: truncated PPM header")
        c = data[pos : pos + 1]
        if c.isspace():
            pos += 1
        elif c == b"#":  # comment to end of line
            end = data.find(b"\n", pos)
            if end < 0:
                raise DatasetError(f"{path}: truncated PPM header (unterminated comment)")
            pos = end + 1
        elif c.isdigit():
            start = pos
            while pos < n and data[pos : pos + 1].isdigit():
                pos += 1
            if pos - start > 6:
                raise DatasetError(f"{path}: PPM header number too long")
            tokens.append(int(data[start:pos]))
        else:
            raise DatasetError(f"{path}: malformed PPM header (unexpected byte {c!r})")
    if pos >= n or not data[pos : pos + 1].isspace():
        raise DatasetError(f"{path}: malformed PPM header (no whitespace before the pixels)")
    return tokens, pos + 1


def read_ppm(path: str | os.PathLike) -> np.ndarray:
    """Read a binary PPM (``P6``) image as a ``uint8`` array ``(H, W, 3)``.

    Strict: the header must be ``P6``, width, height (1..10,000) and maxval (1..65535; above
    255 samples are 2-byte big-endian and scaled to 0..255) separated by whitespace or
    ``#`` comments, then exactly ``width·height·3`` samples. A malformed header, a truncated
    file or trailing bytes raise :class:`~advex.data.DatasetError`.
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    (w, h, maxval), off = _header_tokens(data, path)
    if not (1 <= w <= _MAX_SIDE and 1 <= h <= _MAX_SIDE):
        raise DatasetError(f"{path}: PPM size {w}x{h} out of range (1..{_MAX_SIDE})")
    if not 1 <= maxval <= 65535:
        raise DatasetError(f"{path}: PPM maxval {maxval} out of range (1..65535)")
    bps = 1 if maxval < 256 else 2
    need = w * h * 3 * bps
    have = len(data) - off
    if have < need:
        raise DatasetError(
            f"{path}: truncated PPM data ({have} bytes for a {w}x{h} image, need {need})"
        )
    if have > need:
        raise DatasetError(f"{path}: {have - need} unexpected bytes after the PPM pixels")
    if bps == 1:
        a = np.frombuffer(data, dtype=np.uint8, count=need, offset=off).copy()
    else:
        a = np.frombuffer(data, dtype=">u2", count=w * h * 3, offset=off)
    if int(a.max(initial=0)) > maxval:
        raise DatasetError(f"{path}: a PPM sample exceeds maxval {maxval}")
    if maxval != 255:
        a = np.round(a.astype(np.float64) * (255.0 / maxval)).astype(np.uint8)
    return a.reshape(h, w, 3)


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------


def gtsrb_root(root: str | os.PathLike) -> Path:
    """The folder holding ``Final_Training`` / ``Final_Test`` under ``root`` (``root`` itself,
    ``root/GTSRB``); raises ``FileNotFoundError`` naming what was looked for."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"GTSRB root not found: {root}")
    for cand in (root, root / "GTSRB"):
        if (cand / "Final_Training").is_dir() or (cand / "Final_Test").is_dir():
            return cand
    raise FileNotFoundError(
        f"{root} has no GTSRB layout: expected Final_Training/Images/000CC/GT-000CC.csv and "
        "Final_Test/GT-final_test.csv (directly or under GTSRB/)"
    )


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=";")
            missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(
                    f"{path}: missing column(s) {missing}; a GTSRB annotation CSV has "
                    f"{';'.join(_COLUMNS)}"
                )
            rows = []
            for lineno, row in enumerate(reader, start=2):
                try:
                    rec = {"Filename": row["Filename"]}
                    for c in _COLUMNS[1:]:
                        rec[c] = int(row[c])
                except (TypeError, ValueError) as e:
                    raise DatasetError(f"{path}, line {lineno}: bad value ({e})") from e
                name = rec["Filename"]
                if not name or "/" in name or "\\" in name or name.startswith("."):
                    raise DatasetError(f"{path}, line {lineno}: bad file name {name!r}")
                rows.append(rec)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a text CSV file ({e})") from e
    return rows


def _to_size(img: np.ndarray, rec: dict, size: int, roi: bool) -> tuple[torch.Tensor, bool]:
    """One image ``(3, size, size)`` float in [0, 1]; whether the ROI crop was applied."""
    h, w = img.shape[:2]
    cropped = False
    if roi and (w, h) == (rec["Width"], rec["Height"]):
        x1, y1, x2, y2 = rec["Roi.X1"], rec["Roi.Y1"], rec["Roi.X2"], rec["Roi.Y2"]
        if 0 <= x1 < x2 < w + 1 and 0 <= y1 < y2 < h + 1:
            img = img[y1 : y2 + 1, x1 : x2 + 1]
            cropped = True
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
    if t.shape[1:] != (size, size):
        shrink = t.shape[1] > size or t.shape[2] > size
        t = F.interpolate(
            t[None], size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
        )[0].clamp_(0.0, 1.0)
    return t, cropped


def gtsrb(
    root: str | os.PathLike,
    split: str = "test",
    size: int = 32,
    *,
    roi: bool = False,
    classes=None,
) -> ArrayDataset:
    """Load a GTSRB split from the original layout as an :class:`ArrayDataset`.

    Args:
        root: folder holding ``GTSRB/`` (or ``Final_Training`` / ``Final_Test``).
        split: ``"train"`` (the per-class ``Final_Training`` folders) or ``"test"`` (the
            official test set with ``GT-final_test.csv``).
        size: side of the square images returned (32 by default); any file size is resized.
        roi: crop to the CSV's region of interest first, where the CSV's Width/Height equal
            the file's size (a resized copy's files do not match, and are resized whole).
        classes: keep only these classes (indices or names), e.g. ``["stop"]``.

    Returns images ``(N, 3, size, size)`` float32 in [0, 1], labels ``(N,)``, the 43
    :data:`GTSRB_CLASSES` as ``class_names`` and ``dataset.info``: rows in the CSVs, images
    found, rows without a file (``missing``), ROI crops applied.

    >>> ds = gtsrb("../shared/datasets/gtsrb-32x32", "test")
    >>> len(ds), ds.class_names[14]
    (12630, 'stop')
    """
    from .classes import class_index

    if split not in ("train", "test"):
        raise ValueError(f"GTSRB split must be 'train' or 'test', got {split!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 4 <= size <= 1024:
        raise ValueError(f"size must be an integer in [4, 1024], got {size!r}")
    base = gtsrb_root(root)
    keep = None
    if classes is not None:
        if isinstance(classes, str | int):
            classes = [classes]
        keep = {class_index(GTSRB_CLASSES, c, what="classes") for c in classes}
    entries: list[tuple[Path, dict]] = []  # (image path, CSV row)
    if split == "train":
        img_root = base / "Final_Training" / "Images"
        if not img_root.is_dir():
            raise FileNotFoundError(f"GTSRB training images not found: {img_root}")
        csvs = sorted(img_root.glob("[0-9][0-9][0-9][0-9][0-9]/GT-*.csv"))
        if not csvs:
            raise FileNotFoundError(f"{img_root}: no per-class GT-000CC.csv annotation files")
        for c in csvs:
            for rec in _read_csv(c):
                entries.append((c.parent / rec["Filename"], rec))
    else:
        gt = base / "Final_Test" / "GT-final_test.csv"
        if not gt.is_file():
            raise FileNotFoundError(
                f"GTSRB test ground truth not found: {gt} (GT-final_test.csv, with ClassId, "
                "is distributed separately from the test images)"
            )
        for rec in _read_csv(gt):
            entries.append((base / "Final_Test" / "Images" / rec["Filename"], rec))
    n_rows = len(entries)
    bad = [r["ClassId"] for _, r in entries if not 0 <= r["ClassId"] < len(GTSRB_CLASSES)]
    if bad:
        raise DatasetError(f"GTSRB {split}: ClassId {bad[0]} out of range 0..42")
    if keep is not None:
        entries = [(p, r) for p, r in entries if r["ClassId"] in keep]
    listing: dict[Path, set[str]] = {}  # one directory listing per folder, not a stat per row
    for p, _ in entries:
        if p.parent not in listing:
            try:
                listing[p.parent] = set(os.listdir(p.parent))
            except OSError:
                listing[p.parent] = set()
    present = [(p, r) for p, r in entries if p.name in listing[p.parent]]
    missing = len(entries) - len(present)
    if not present:
        which = "" if keep is None else f" of class(es) {sorted(keep)}"
        raise DatasetError(
            f"GTSRB {split} under {base}: no image{which} exists ({len(entries)} CSV rows)"
        )
    x = torch.empty(len(present), 3, size, size)
    ys, n_crop = [], 0
    fast: list[int] = []  # images already size x size: converted in one batch
    raw: list[np.ndarray] = []
    for i, (p, rec) in enumerate(present):
        img = read_ppm(p)
        ys.append(rec["ClassId"])
        if img.shape[:2] == (size, size) and not roi:
            fast.append(i)
            raw.append(img)
            continue
        x[i], cropped = _to_size(img, rec, size, roi)
        n_crop += cropped
    if fast:
        batch = torch.from_numpy(np.stack(raw)).permute(0, 3, 1, 2).float().div_(255.0)
        x[torch.tensor(fast)] = batch
    ds = ArrayDataset(
        x,
        torch.tensor(ys, dtype=torch.int64),
        name=f"gtsrb-{split}",
        class_names=GTSRB_CLASSES,
    )
    ds.info = {
        "root": str(base),
        "split": split,
        "size": size,
        "csv_rows": n_rows,
        "rows_selected": len(entries),
        "images": len(present),
        "missing": missing,
        "roi_cropped": n_crop,
    }
    if missing:
        warnings.warn(
            f"GTSRB {split}: {missing} of {len(entries)} CSV rows have no image file under "
            f"{base} (a partial copy); loaded the {len(present)} that exist",
            GTSRBWarning,
            stacklevel=2,
        )
    return ds
