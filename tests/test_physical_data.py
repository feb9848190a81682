"""GTSRB loader: the strict PPM reader, the CSV join, resizing, class names."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from advex import data as D
from advex.data import DatasetError, class_index, gtsrb, read_ppm


def _ppm(w: int, h: int, maxval: int = 255, comment: bool = True, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    head = b"P6\n" + (b"# made by a test\n" if comment else b"") + f"{w} {h}\n{maxval}\n".encode()
    if maxval < 256:
        body = rng.integers(0, maxval + 1, (h, w, 3), dtype=np.uint8).tobytes()
    else:
        body = rng.integers(0, maxval + 1, (h, w, 3)).astype(">u2").tobytes()
    return head + body


def _layout(tmp_path, sizes=((40, 30), (32, 32)), drop_one=True):
    """A tiny GTSRB tree: 2 training classes (14, 1), a test set of 3 images of other sizes."""
    root = tmp_path / "GTSRB"
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
    for cls in (1, 14):
        d = root / "Final_Training" / "Images" / f"{cls:05d}"
        d.mkdir(parents=True)
        rows = []
        for i, (w, h) in enumerate(sizes):
            name = f"00000_{i:05d}.ppm"
            rows.append(f"{name};{w};{h};2;2;{w - 3};{h - 3};{cls}\n")
            (d / name).write_bytes(_ppm(w, h, seed=cls * 10 + i))
        rows.append(f"00002_00000.ppm;50;50;1;1;45;45;{cls}\n")  # listed, file absent
        (d / f"GT-{cls:05d}.csv").write_text(header + "".join(rows))
    t = root / "Final_Test" / "Images"
    t.mkdir(parents=True)
    rows = []
    for i, (w, h, c) in enumerate([(15, 15, 14), (64, 48, 1), (32, 32, 0)]):
        (t / f"{i:05d}.ppm").write_bytes(_ppm(w, h, maxval=65535 if i == 1 else 255, seed=i))
        rows.append(f"{i:05d}.ppm;{w};{h};0;0;{w - 1};{h - 1};{c}\n")
    (root / "Final_Test" / "GT-final_test.csv").write_text(header + "".join(rows))
    return tmp_path


def test_read_ppm_roundtrip_and_16_bit(tmp_path):
    p = tmp_path / "a.ppm"
    raw = _ppm(5, 4)
    p.write_bytes(raw)
    a = read_ppm(p)
    assert a.shape == (4, 5, 3) and a.dtype == np.uint8
    assert a.tobytes() == raw[-60:]
    p.write_bytes(_ppm(3, 2, maxval=65535))
    assert read_ppm(p).shape == (2, 3, 3)


@pytest.mark.parametrize(
    "blob, match",
    [
        (b"P3\n2 2\n255\n" + bytes(12), "not a binary PPM"),
        (b"P6\n2 2\n255\n" + bytes(11), "truncated PPM data"),
        (b"P6\n2 2\n255\n" + bytes(13), "unexpected bytes"),
        (b"P6\n2 2", "truncated PPM header"),
        (b"P6\n2 x 2\n255\n" + bytes(12), "malformed PPM header"),
        (b"P6\n0 2\n255\n", "out of range"),
        (b"P6\n99999 99999\n255\n", "out of range"),
        (b"P6\n2 2\n0\n", "maxval"),
        (b"P6\n1 1\n100\n" + bytes([200, 0, 0]), "exceeds maxval"),
        (b"P6\n# unterminated", "unterminated comment"),
    ],
)
def test_read_ppm_rejects_malformed_files(tmp_path, blob, match):
    p = tmp_path / "bad.ppm"
    p.write_bytes(blob)
    with pytest.raises(DatasetError, match=match):
        read_ppm(p)


def test_gtsrb_layout_join_resize_and_missing_rows(tmp_path):
    root = _layout(tmp_path)
    with pytest.warns(D.GTSRBWarning, match="2 of 6 CSV rows have no image file"):
        tr = gtsrb(root, "train", size=16)
    assert tr.x.shape == (4, 3, 16, 16) and tr.info["missing"] == 2 and tr.info["images"] == 4
    assert sorted(tr.y.tolist()) == [1, 1, 14, 14]
    assert tr.class_names[14] == "stop" and tr.num_classes == 43
    assert float(tr.x.min()) >= 0 and float(tr.x.max()) <= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        te = D.load(f"gtsrb:{root}", "test")  # nothing absent: no warning
    assert te.x.shape == (3, 3, 32, 32) and te.y.tolist() == [14, 1, 0]
    # a 32x32 file at size=32 is read exactly
    assert torch.equal(
        te.x[2],
        torch.from_numpy(read_ppm(root / "GTSRB/Final_Test/Images/00002.ppm"))
        .permute(2, 0, 1)
        .float()
        / 255,
    )
    with pytest.warns(D.GTSRBWarning):
        stops = gtsrb(root / "GTSRB", "train", classes=["Stop"], roi=True)
    assert stops.y.tolist() == [14, 14] and stops.info["roi_cropped"] == 2


def test_gtsrb_bad_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GTSRB layout"):
        gtsrb(tmp_path, "test")
    with pytest.raises(ValueError, match="split must be"):
        gtsrb(tmp_path, "val")
    with pytest.raises(ValueError, match="empty PATH"):
        D.load("gtsrb:")
    root = _layout(tmp_path)
    csv = root / "GTSRB/Final_Test/GT-final_test.csv"
    csv.write_text("Filename;Width\n00000.ppm;3\n")
    with pytest.raises(DatasetError, match="missing column"):
        gtsrb(root, "test")
    csv.write_text(
        "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n../x.ppm;1;1;0;0;0;0;1\n"
    )
    with pytest.raises(DatasetError, match="bad file name"):
        gtsrb(root, "test")


def test_class_names_forgiving_and_strict():
    names = D.GTSRB_CLASSES
    assert len(names) == 43 and names[14] == "stop" and names[1] == "speed limit (30km/h)"
    assert class_index(names, "STOP") == 14
    assert class_index(names, " Speed Limit (30 km/h) ") == 1
    assert class_index(names, "14") == 14 and class_index(names, 3) == 3
    with pytest.raises(ValueError, match="unknown class name 'stp'; closest: 'stop'"):
        class_index(names, "stp")
    with pytest.raises(ValueError, match="out of range"):
        class_index(names, 43)
    with pytest.raises(TypeError):
        class_index(names, True)


def test_cli_target_accepts_class_names():
    import click

    from advex.cli.common import targets_for

    ds = D.ArrayDataset(torch.zeros(2, 3, 4, 4), [0, 1], class_names=D.GTSRB_CLASSES)
    assert targets_for(ds, False, "Speed limit (30km/h)", 0) == 1
    assert targets_for(ds, False, "7", 0) == 7
    with pytest.raises(click.BadParameter, match="closest: 'stop'"):
        targets_for(ds, False, "stopp", 0)


def test_real_gtsrb_test_split(datasets_root):
    root = datasets_root / "gtsrb-32x32"
    if not root.is_dir():
        pytest.skip("gtsrb-32x32 not in the shared datasets")
    stops = gtsrb(root, "test", classes="stop")
    assert len(stops) == 270 and bool((stops.y == 14).all())
    assert stops.info["csv_rows"] == 12630 and stops.info["missing"] == 0
