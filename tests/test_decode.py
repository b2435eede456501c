"""decode_batch refuses bad bytes with clear errors."""

from __future__ import annotations

import pytest

import modeltap


def one_batch():
    got = []
    a = modeltap.Agent("m", sink=got.append, metrics_interval=None)
    a.log([1.0, 2.0], 1)
    a.close()
    return got[0]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_garbage_bytes():
    with pytest.raises(modeltap.BatchDecodeError, match="malformed"):
        modeltap.decode_batch(b"\xff\xff\xff\xff not protobuf")


def test_future_schema_version():
    data = one_batch() + b"\x08" + varint(99)  # field 1 (schema_version) = 99
    with pytest.raises(modeltap.UnsupportedSchemaVersion, match="99"):
        modeltap.decode_batch(data)


def test_inconsistent_columns():
    data = one_batch() + b"\x38" + varint(5)  # field 7 (n_records) = 5, columns hold 1
    with pytest.raises(modeltap.BatchDecodeError, match="inconsistent"):
        modeltap.decode_batch(data)


def test_missing_version():
    with pytest.raises(modeltap.BatchDecodeError):
        modeltap.decode_batch(b"")


def test_truncated_batch():
    data = one_batch()
    with pytest.raises(modeltap.BatchDecodeError):
        modeltap.decode_batch(data[: len(data) // 2])


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _one_batch() -> bytes:
    got: list[bytes] = []
    a = modeltap.Agent("m", sink=got.append, metrics_interval=None)
    a.log([1.0, 2.0], 1)
    a.close()
    return got[0]


@pytest.mark.parametrize(
    ("field", "payload", "count"),
    [
        (29, b"", 5_000),  # system samples
        (27, _field(2, b"E"), 2),  # errors: more than one per row
        (28, b"", 2),  # attributes
        (12, _field(2, b"id"), 2),  # caller-given request ids
        (32, b"", 5_000),  # window profiles
    ],
)
def test_extras_beyond_what_rows_allow_are_refused(field, payload, count):
    """A message cannot make decoding build many more objects than it has
    rows: appended repeated entries past the bound are a decode error."""
    data = _one_batch() + _field(field, payload) * count
    with pytest.raises(modeltap.BatchDecodeError, match="at most"):
        modeltap.decode_batch(data)


def test_huge_model_params_are_refused():
    params = b"".join(  # ModelInfo.params map entries, distinct keys
        _field(3, _field(1, f"k{i}".encode()) + _field(2, b"")) for i in range(2_000)
    )
    data = _one_batch() + _field(4, params)
    with pytest.raises(modeltap.BatchDecodeError, match="params"):
        modeltap.decode_batch(data)
