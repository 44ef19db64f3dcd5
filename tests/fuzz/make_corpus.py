#!/usr/bin/env python3
"""Writes the small seed corpora for the fuzz targets (run from anywhere; rewrites in place).

Seeds are tiny valid files and near-misses, so the fuzzers start next to the interesting
boundaries (magic, type code, dims, lengths; header length, JSON, offsets, checksum)."""
import gzip
import json
import os
import struct
import zlib

here = os.path.dirname(os.path.abspath(__file__))


def put(kind, name, data):
    d = os.path.join(here, "corpus", kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def idx(dims, data=None, type_code=0x08):
    n = 1
    for d in dims:
        n *= d
    if data is None:
        data = bytes((i * 7 + 3) % 256 for i in range(n))
    return bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + data


def gz(data):
    return gzip.compress(data, compresslevel=9, mtime=0)


put("idx", "labels_raw", idx([5]))
put("idx", "images_raw", idx([2, 3, 4]))
put("idx", "images_gz", gz(idx([2, 3, 4])))
put("idx", "two_members_gz", gz(idx([2, 3, 4])[:10]) + gz(idx([2, 3, 4])[10:]))
put("idx", "float_type", idx([2], bytes(8), type_code=0x0D))
put("idx", "truncated", idx([2, 3, 4])[:-1])
put("idx", "trailing", idx([2, 3, 4]) + b"x")
put("idx", "overflow", bytes([0, 0, 8, 4]) + b"\xff" * 16)
put("idx", "gz_truncated", gz(idx([2, 3, 4]))[:-6])


def checkpoint(tensors, metadata=None, crc=True, pad=True):
    """tensors: list of (name, dtype, shape, bytes); laid out in order, like tapegrad writes."""
    header, data, at = {}, b"", 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + len(raw)]}
        data += raw
        at += len(raw)
    meta = dict(metadata or {})
    if crc:
        meta["tapegrad.crc32"] = "%08x" % (zlib.crc32(data) & 0xFFFFFFFF)
    if meta:
        header["__metadata__"] = meta
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


f32 = lambda *v: struct.pack("<%df" % len(v), *v)
f64 = lambda *v: struct.pack("<%dd" % len(v), *v)
model = [("w", "F32", [2, 2], f32(1, 2, 3, 4)), ("b", "F64", [2], f64(0.5, -0.5)),
         ("s", "F64", [], f64(3.0))]
put("checkpoint", "model", checkpoint(model, {"model": "mlp", "note": "\u00e9\n\"q\""}))
put("checkpoint", "no_crc", checkpoint(model, crc=False, pad=False))
put("checkpoint", "meta_only", checkpoint([], {"k": "v"}))
put("checkpoint", "empty_tensor", checkpoint([("e", "F32", [0, 3], b"")]))
bad = bytearray(checkpoint(model))
bad[-1] ^= 1
put("checkpoint", "bad_crc", bytes(bad))
overlap = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' \
          b'"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}'
put("checkpoint", "overlap", struct.pack("<Q", len(overlap)) + overlap + bytes(12))
put("checkpoint", "json", b'{"a":[1,-2,{"b":"\\u00e9\\ud83d\\ude00"}],"t":true,"n":null}')
put("checkpoint", "json_split", b'{"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}\x00'
    + f64(2.5))
