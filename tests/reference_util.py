"""What the reference-trust tests share: a small protobuf codec of the
messages of profile.proto, a valid reference and a valid window profile to
damage."""

from __future__ import annotations

import copy
import struct
from typing import Any

import numpy as np

import modeltap

# -- a small protobuf codec for the messages of profile.proto ------------------
# Encodes canonically (fields in number order, defaults left out), as prost
# does, so that fingerprints computed here match the native ones.

U, D, X, S, M = "varint", "double", "fixed64", "string", "message"
SCHEMA: dict[str, dict[int, tuple[str, str, bool, str | None]]] = {
    "Reference": {
        1: ("format_version", U, False, None),
        2: ("model", S, False, None),
        3: ("version", S, False, None),
        4: ("columns", M, True, "ColumnSpec"),
        5: ("profiles", M, True, "ColumnProfile"),
        6: ("created_unix_nano", X, False, None),
        7: ("rows", U, False, None),
        8: ("fingerprint", S, False, None),
    },
    "ColumnSpec": {
        1: ("name", S, False, None),
        2: ("kind", U, False, None),
        3: ("role", U, False, None),
        4: ("class_index", U, False, None),
        5: ("numeric", M, False, "NumericSpec"),
        6: ("categorical", M, False, "CategoricalSpec"),
    },
    "NumericSpec": {
        1: ("cuts", D, True, None),
        2: ("psi_bin", U, True, None),
        3: ("n_psi_bins", U, False, None),
        4: ("equal_width", U, False, None),
    },
    "CategoricalSpec": {
        1: ("categories", S, True, None),
        2: ("complete", U, False, None),
    },
    "ColumnProfile": {
        1: ("counts", U, True, None),
        2: ("missing", U, False, None),
        3: ("n", U, False, None),
        4: ("sum", D, False, None),
        5: ("sum_sq", D, False, None),
        6: ("shift", D, False, None),
        7: ("min", D, False, None),
        8: ("max", D, False, None),
        9: ("below_min", U, False, None),
        10: ("above_max", U, False, None),
        11: ("below_sum", D, False, None),
        12: ("above_sum", D, False, None),
        13: ("ref_min", D, False, None),
        14: ("ref_max", D, False, None),
        15: ("nonfinite", U, False, None),
    },
    "WindowProfile": {
        1: ("window_start_unix_nano", X, False, None),
        2: ("window_nano", U, False, None),
        3: ("reference_fingerprint", S, False, None),
        4: ("records", U, False, None),
        5: ("errors", U, False, None),
        6: ("flagged", U, False, None),
        7: ("columns", M, True, "ColumnProfile"),
        8: ("latency_counts", U, True, None),
        9: ("latency_sum", D, False, None),
    },
}
MAGIC = b"MTREF\x00\x01\x00"


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def _scalar(kind: str, v: Any) -> bytes:
    if kind == U:
        return _varint(int(v))
    if kind == D:
        return struct.pack("<d", float(v))
    return struct.pack("<Q", int(v))


def encode(msg: str, d: dict[str, Any]) -> bytes:
    out = bytearray()
    for num, (name, kind, rep, sub) in sorted(SCHEMA[msg].items()):
        v = d.get(name)
        if rep:
            if not v:
                continue
            if kind in (U, D, X):  # packed
                body = b"".join(_scalar(kind, x) for x in v)
                out += _varint(num << 3 | 2) + _varint(len(body)) + body
            else:
                for x in v:
                    body = encode(sub, x) if kind == M else x.encode()
                    out += _varint(num << 3 | 2) + _varint(len(body)) + body
        elif kind == M:
            if v is not None:
                body = encode(sub, v)  # type: ignore[arg-type]
                out += _varint(num << 3 | 2) + _varint(len(body)) + body
        elif kind == S:
            if v:
                out += _varint(num << 3 | 2) + _varint(len(v.encode())) + v.encode()
        elif v:  # scalars: 0, 0.0 and False are left out
            wire = {U: 0, D: 1, X: 1}[kind]
            out += _varint(num << 3 | wire) + _scalar(kind, v)
    return bytes(out)


def decode(msg: str, buf: bytes) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for _num, (name, kind, rep, _sub) in SCHEMA[msg].items():
        if rep:
            d[name] = []
        elif kind == M:
            d[name] = None
        elif kind == S:
            d[name] = ""
        else:
            d[name] = 0.0 if kind == D else 0
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        name, kind, rep, sub = SCHEMA[msg][num]
        if wire == 0:
            v, i = _read_varint(buf, i)
            vals: list[Any] = [v]
        elif wire == 1:
            raw = buf[i : i + 8]
            i += 8
            vals = [struct.unpack("<d" if kind == D else "<Q", raw)[0]]
        else:
            n, i = _read_varint(buf, i)
            body = buf[i : i + n]
            i += n
            if kind == M:
                vals = [decode(sub, body)]  # type: ignore[arg-type]
            elif kind == S:
                vals = [body.decode()]
            elif kind == U:
                vals, j = [], 0
                while j < len(body):
                    v, j = _read_varint(body, j)
                    vals.append(v)
            else:
                vals = list(struct.unpack(f"<{len(body) // 8}{'d' if kind == D else 'Q'}", body))
        if rep:
            d[name].extend(vals)
        else:
            d[name] = vals[-1]
    return d


def fingerprint(columns: list[dict[str, Any]]) -> str:
    h = 0xCBF29CE484222325
    for c in columns:
        for b in encode("ColumnSpec", c):
            h = ((h ^ b) * 0x100000001B3) & ((1 << 64) - 1)
    return f"{h:016x}"


def ref_bytes(r: dict[str, Any], refingerprint: bool = True) -> bytes:
    r = copy.deepcopy(r)
    if refingerprint:
        r["fingerprint"] = fingerprint(r["columns"])
    return MAGIC + encode("Reference", r)


def ref_dict(data: bytes) -> dict[str, Any]:
    assert data.startswith(MAGIC)
    return decode("Reference", data[len(MAGIC) :])


# -- fixtures --------------------------------------------------------------


def _reference() -> modeltap.Reference:
    rng = np.random.default_rng(7)
    import pandas as pd

    n = 3000
    X = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "y": rng.exponential(size=n),
            "color": rng.choice(["red", "green", "blue"], size=n),
        }
    )
    return modeltap.Reference.from_data(
        X,
        categorical=["color"],
        predictions=rng.integers(0, 4, size=n),
        probabilities=rng.dirichlet([1, 1, 1], size=n),
        model="m",
        version="1",
    )


REF = _reference()
GOOD = ref_dict(REF.to_bytes())
COL = {c["name"]: i for i, c in enumerate(GOOD["columns"])}

DATA = np.random.default_rng(3).normal(size=(400, 2))


def _window() -> bytes:
    import pandas as pd

    X = pd.DataFrame({"x": DATA[:, 0], "y": DATA[:, 1], "color": ["red"] * 400})
    return REF.profile(X, predictions=np.ones(400, dtype=np.int64))
