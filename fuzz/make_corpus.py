"""Writes the seed corpus of the fuzz targets from the real encoders: batches
an agent ships, reference files ``Reference.from_data`` builds, and window
profiles of both paths, plus edge cases. Also writes ``fuzz/reference.mtref``,
the reference the profile target measures drift against (the profile seeds
are built against it).

    PYTHONPATH=python python fuzz/make_corpus.py

Seeds are named ``seed-*``; inputs that once crashed a target are kept beside
them as ``crash-*`` regressions, and batches of schema version 1 (written by
earlier agents, read as version 2) as ``v1-*``; those are left alone here."""

from __future__ import annotations

import enum
from pathlib import Path

import numpy as np
import pandas as pd

import modeltap
from modeltap import _core

HERE = Path(__file__).resolve().parent
MAGIC = b"MTREF\x00\x01\x00"


def write(target: str, name: str, data: bytes) -> None:
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


def clear_seeds() -> None:
    for f in (HERE / "corpus").glob("*/seed-*"):
        f.unlink()


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def main() -> None:
    clear_seeds()
    rng = np.random.default_rng(11)
    n = 500
    X = pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "y": rng.exponential(size=n),
            "color": rng.choice(["red", "green", "blue"], size=n),
        }
    )
    ref = modeltap.Reference.from_data(
        X,
        categorical=["color"],
        predictions=rng.integers(0, 4, size=n),
        probabilities=rng.dirichlet([1, 1, 1], size=n),
        model="fuzz",
        version="1",
        bins=5,
    )
    (HERE / "reference.mtref").write_bytes(ref.to_bytes())

    # -- references
    write("reference_read", "mixed", ref.to_bytes())
    write(
        "reference_read",
        "equal-width",
        modeltap.Reference.from_data(
            rng.normal(size=(50, 2)), feature_names=["a", "b"], bins=3, equal_width=True
        ).to_bytes(),
    )
    write(
        "reference_read",
        "categorical-other",
        modeltap.Reference.from_data(
            pd.DataFrame({"c": [str(i % 7) for i in range(40)]}),
            categorical=["c"],
            predictions=np.array(["yes", "no"] * 20),
            max_categories=3,
        ).to_bytes(),
    )
    write(
        "reference_read",
        "float-prediction-nan-inf",
        modeltap.Reference.from_data(
            np.array([[1.0], [np.nan], [np.inf], [2.0], [-np.inf]]),
            predictions=np.array([0.5, 1.5, np.nan, 2.5, 3.0]),
        ).to_bytes(),
    )
    write(
        "reference_read",
        "all-missing",
        modeltap.Reference.from_data(np.full((4, 1), np.nan)).to_bytes(),
    )
    # a reference of no columns: the format version and the empty fingerprint
    empty_fp = b"cbf29ce484222325"
    write("reference_read", "no-columns", MAGIC + b"\x08\x01" + b"\x42\x10" + empty_fp)
    write("reference_read", "magic-only", MAGIC)
    write("reference_read", "empty", b"")
    write("reference_read", "truncated", ref.to_bytes()[:-7])

    # -- batches (and the profiles inside them) from a real agent
    batches: list[bytes] = []
    agent = modeltap.Agent(
        model="fuzz",
        version="1",
        collector=None,
        sink=batches.append,
        reference=ref,
        batch_size=16,
    )
    for i in range(40):
        agent.log(
            {
                "x": float(rng.normal()) if i % 9 else float("nan"),
                "y": float("inf") if i == 5 else float(rng.exponential()),
                "color": ["red", "green", "purple", Color.BLUE][i % 4],
            },
            int(rng.integers(0, 6)),
            probabilities=[0.1, 0.2, 0.7] if i % 5 else [0.5, 0.5],
            latency_s=0.001 * i,
            request_id=f"req-{i}" if i % 3 == 0 else None,
            error=ValueError("boom") if i == 7 else None,
            attributes={"k": str(i)} if i % 4 == 0 else None,
        )
    agent.log_batch(X.iloc[:20], np.arange(20))
    assert agent.flush(10.0)
    agent.close()
    plain: list[bytes] = []
    agent = modeltap.Agent(model="plain", collector=None, sink=plain.append, batch_size=8)
    for i in range(12):
        agent.log([float(i), -float(i)], "label-" + str(i % 3) if i % 2 else [0.1 * i, 0.2])
    assert agent.flush(10.0)
    agent.close()
    profiles: list[bytes] = []
    for k, b in enumerate(batches + plain):
        write("batch_decode", f"agent-{k}", b)
        for _start, _width, _records, p in _core.decode_batch(b)["profiles"]:
            if _core.profile_fingerprint(p) == ref.fingerprint:
                profiles.append(bytes(p))
    write("batch_decode", "empty", b"")
    write("batch_decode", "version-only", b"\x08\x01")

    # -- window profiles against the reference
    for k, p in enumerate(profiles[:6]):
        write("profile_decode", f"agent-{k}", p)
    offline = ref.profile(
        X.iloc[:100],
        predictions=rng.integers(0, 6, size=100),
        probabilities=rng.dirichlet([1, 1, 1], size=100),
    )
    write("profile_decode", "offline", offline)
    merged = _core.merge_profiles([offline, *profiles[:3]])
    assert merged is not None
    write("profile_decode", "merged", merged)
    write("profile_decode", "empty", b"")
    for target in ("batch_decode", "reference_read", "profile_decode"):
        count = len(list((HERE / "corpus" / target).iterdir()))
        print(f"{target}: {count} inputs")


if __name__ == "__main__":
    main()
