"""A caller's request id is stored as given, whichever way it travels: 32
lowercase hex digits as the 16 bytes they spell, an id of up to 40 bytes
in the ring slot, a longer one beside it."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

import modeltap
from modeltap.collector import BackgroundCollector

IDS = [
    modeltap.random_id(),  # 32 lowercase hex: travels as 16 bytes
    "0" * 32,  # spells the "no id" value: travels as text
    "ABCDEF0123456789ABCDEF0123456789",  # upper case: as text
    str(uuid.UUID(int=12345)),  # 36 characters: in the slot
    "req-42",
    "x" * 40,  # the longest kept in the slot
    "y" * 41,  # the shortest beside it
    "é" * 20,  # 40 bytes of UTF-8
    "ü" * 21,  # 42 bytes
    "r" * 300,  # clipped past 256 bytes, as before
    "",  # empty
]


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    path = tmp_path_factory.mktemp("ids") / "s.duckdb"
    with BackgroundCollector(str(path)) as col:
        a = modeltap.Agent("ids", "1", collector=col.addr, metrics_interval=None)
        returned = []
        for k, rid in enumerate(IDS):
            returned.append(a.log(np.full(3, float(k)), 1, request_id=rid))
        returned.append(a.log(np.full(3, -1.0), 1, request_id=uuid.UUID(int=7)))  # not a str
        generated = a.log(np.full(3, -2.0), 1)
        assert a.flush(30)
        a.close()
        with modeltap.Client(col.addr) as c:
            rows = c.sql(
                "SELECT features[1] AS k, request_id FROM predictions ORDER BY ts"
            ).to_pylist()
    return returned, generated, {r["k"]: r["request_id"] for r in rows}


def test_given_ids_are_returned_as_given(stored):
    returned, _, _ = stored
    assert returned[: len(IDS)] == IDS
    assert returned[-1] == str(uuid.UUID(int=7))


@pytest.mark.parametrize("k", range(len(IDS)))
def test_given_ids_are_stored_as_given(stored, k):
    _, _, by_k = stored
    rid = IDS[k]
    if len(rid.encode()) > 256:
        assert by_k[float(k)].startswith(rid[:200])
        assert "bytes cut" in by_k[float(k)]
    else:
        assert by_k[float(k)] == rid


def test_other_ids_and_generated_ones(stored):
    _, generated, by_k = stored
    assert by_k[-1.0] == str(uuid.UUID(int=7))
    assert by_k[-2.0] == generated
    assert len(generated) == 32
    int(generated, 16)


def test_an_inline_id_does_not_leak_into_the_next_record(tmp_path):
    """A slot reused after a record with a short id, by one without."""
    got: list[bytes] = []
    a = modeltap.Agent("ids", "1", sink=got.append, metrics_interval=None, buffer_size=8)
    for i in range(64):
        a.log(np.zeros(2), 1, request_id="short-id" if i % 2 == 0 else None)
        if i % 8 == 7:
            a.flush(10)
    a.close()
    from modeltap.collector.store import decode

    ids = []
    for b in got:
        t = decode(b).predictions
        assert t is not None
        ids.extend(t.column("request_id").to_pylist())
    assert len(ids) == 64
    assert ids[0::2] == ["short-id"] * 32
    assert all(len(i) == 32 and i != "short-id" for i in ids[1::2])
