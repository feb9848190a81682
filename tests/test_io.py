"""advex._io (atomic writes, JSON, seeds) and advex._stats (Clopper-Pearson)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from advex._io import (
    atomic_write,
    default_file_mode,
    derive_seed,
    derive_seed64,
    jsonable,
    write_json,
)
from advex._stats import binom_cdf, clopper_pearson, clopper_pearson_lower


def test_atomic_write_bytes_text_and_writer(tmp_path):
    p = atomic_write(tmp_path / "sub" / "a.bin", b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    atomic_write(tmp_path / "b.txt", "héllo\n")
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    atomic_write(tmp_path / "c.txt", lambda tmp: Path(tmp).write_text("w"))
    assert (tmp_path / "c.txt").read_text() == "w"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["b.txt", "c.txt", "sub"]


def test_atomic_write_permissions_follow_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert default_file_mode() == 0o640
        atomic_write(tmp_path / "f", b"x")
        assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    atomic_write(tmp_path / "g", b"x", mode=0o600)
    assert (tmp_path / "g").stat().st_mode & 0o777 == 0o600


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "keep.json"
    target.write_text("old")

    def half(tmp):
        Path(tmp).write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half)
    assert target.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["keep.json"]
    with pytest.raises(TypeError, match="bytes, str or a writer"):
        atomic_write(target, 3)


def test_write_json_and_jsonable(tmp_path):
    obj = {"acc": torch.tensor(0.5), "eps": (0.1, 0.3), "path": tmp_path, "nan": float("nan")}
    write_json(tmp_path / "o.json", obj)
    text = (tmp_path / "o.json").read_text()
    assert text.endswith("\n")
    back = json.loads(text)
    assert back["acc"] == 0.5 and back["eps"] == [0.1, 0.3] and back["path"] == str(tmp_path)
    assert math.isnan(back["nan"])  # write_json keeps NaN (allow_nan); jsonable drops it
    j = jsonable({"a": np.float32(1.5), "b": torch.arange(3), "c": float("inf"), 1: {2}})
    assert j == {"a": 1.5, "b": [0, 1, 2], "c": None, "1": [2]}
    with pytest.raises(TypeError, match="cannot write"):
        jsonable(object())


def test_seed_derivations_are_stable():
    """Recorded values: evaluation seeds and training seeds must never change (they decide
    recorded results and trained weights)."""
    assert derive_seed(0, 1, 2) == 1855805557
    assert derive_seed(7) == 459866745
    assert derive_seed64(0, 0, 1) == 2973576761047142606
    assert derive_seed64(5, 3, 2) == 4845114876559321075
    assert 0 <= derive_seed(123, 4) < 2**31 and 0 <= derive_seed64(123, 4) < 2**63


def test_clopper_pearson_two_sided_and_one_sided_agree():
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(0.30849710781876))
    lo, hi = clopper_pearson(5, 10)
    assert lo == pytest.approx(0.18708602844739, abs=1e-9) and hi == pytest.approx(1 - lo)
    one = clopper_pearson_lower([0, 5, 10], 10, 0.025)
    assert one[0] == 0.0 and one[1] == pytest.approx(lo, abs=1e-9)
    assert math.isnan(clopper_pearson(0, 0)[0])
    assert binom_cdf(10, 10, 0.3) == 1.0 and binom_cdf(-1, 10, 0.3) == 0.0
    assert binom_cdf(3, 10, 0.5) == pytest.approx(176 / 1024)
