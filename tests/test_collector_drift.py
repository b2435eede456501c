"""Drift at the collector: window profiles from many agents merged, never
raw records re-read; references registered by RPC, flag and agents."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import modeltap
from collector_util import Collector
from modeltap.collector import BackgroundCollector


@pytest.fixture(scope="module")
def ref_and_rows():
    rng = np.random.default_rng(9)
    df = pd.DataFrame(rng.normal(size=(20_000, 5)), columns=list("abcde"))
    df["shop"] = rng.choice(["n", "s", "e"], size=20_000)
    ref = modeltap.Reference.from_data(df)
    X = rng.normal(size=(12_000, 5))
    X[:, 1] += 0.8
    shops = rng.choice(["n", "s", "e", "w"], size=12_000, p=[0.2, 0.2, 0.2, 0.4])
    rows = [[*X[i].tolist(), shops[i]] for i in range(12_000)]
    return ref, rows


def test_four_agents_merged_at_the_collector_equal_one_agent(tmp_path, ref_and_rows):
    ref, rows = ref_and_rows
    one = modeltap.Agent("m", "1", reference=ref, metrics_interval=None, window_s=5)
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        agents = [
            modeltap.Agent(
                "m", "1", collector=col.addr, reference=ref, metrics_interval=None, window_s=5
            )
            for _ in range(4)
        ]
        for i, r in enumerate(rows):
            agents[i % 4].log(r, 0)
            one.log(r, 0)
        for a in agents:
            a.close()
        one.flush(10)
        with modeltap.Client(col.addr) as client:
            remote = client.drift("m", "1")
            with pytest.raises(Exception, match="no profiles"):
                client.drift("unknown-model")
    local = one.drift()
    one.close()
    assert remote.records == local.records == 12_000
    assert sorted(remote.drifted) == sorted(local.drifted) == ["b", "shop"]
    for r1, r2 in zip(local.rows, remote.rows, strict=True):
        for k in ("psi", "ks", "js", "chi2", "hellinger", "wasserstein"):
            if np.isnan(r1[k]):
                assert np.isnan(r2[k])
            else:
                assert r2[k] == pytest.approx(r1[k], rel=1e-9, abs=1e-12), (r1["feature"], k)
    with modeltap.Store(tmp_path / "s.duckdb") as s:
        n = s.sql("SELECT count(DISTINCT agent_id) AS n FROM window_profiles").to_pylist()[0]["n"]
        offline = s.drift("m", since=0)
    assert n == 4
    assert offline.drifted == remote.drifted


def test_time_ranges_select_windows(tmp_path, ref_and_rows):
    ref, rows = ref_and_rows
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        a = modeltap.Agent(
            "m", "1", collector=col.addr, reference=ref, metrics_interval=None, window_s=1
        )
        for r in rows[:3000]:
            a.log(r, 0)
        a.flush(10)
        import time

        time.sleep(1.1)
        cut = time.time()
        for r in rows[3000:4000]:
            a.log(r, 0)
        a.close()
        with modeltap.Client(col.addr) as c:
            assert c.drift("m", "1").records == 4000
            # windows are selected by their start: 1 s windows, the second
            # group's all start at or after the second the cut falls in
            boundary = float(int(cut))
            assert c.drift("m", "1", since=boundary).records == 1000
            assert c.drift("m", "1", until=boundary).records == 3000


def test_cli_reference_build_collector_flag_and_drift(tmp_path, ref_and_rows):
    _ref, rows = ref_and_rows
    rng = np.random.default_rng(1)
    train = pd.DataFrame(rng.normal(size=(5000, 5)), columns=list("abcde"))
    train["shop"] = rng.choice(["n", "s", "e"], size=5000)
    train.to_parquet(tmp_path / "train.parquet")
    train.to_csv(tmp_path / "train.csv", index=False)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "modeltap",
            "reference",
            "build",
            str(tmp_path / "train.parquet"),
            "--out",
            str(tmp_path / "ref.mtref"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    built = modeltap.Reference.load(tmp_path / "ref.mtref")
    assert built.feature_names == [*list("abcde"), "shop"]
    assert built.categorical == ["shop"]
    csv = subprocess.run(
        [
            sys.executable,
            "-m",
            "modeltap",
            "reference",
            "build",
            str(tmp_path / "train.csv"),
            "--out",
            str(tmp_path / "ref2.mtref"),
            "--bins",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert csv.returncode == 0, csv.stderr
    # five quantile bins, below the minimum, above the maximum
    assert modeltap.Reference.load(tmp_path / "ref2.mtref").columns[0]["psi_bins"] == 7

    col = Collector(
        tmp_path / "s.duckdb", None, "--reference", f"m:2={tmp_path / 'ref.mtref'}"
    ).start()
    try:
        # an agent whose reference binned the same way, but never registered
        a = modeltap.Agent("m", "2", collector=col.addr, metrics_interval=None)
        a.close()
        b = modeltap.Agent("m", "2", collector=col.addr, reference=built, metrics_interval=None)
        for r in rows[:2000]:
            b.log(r, 0)
        b.close()
        js = subprocess.run(
            [
                sys.executable,
                "-m",
                "modeltap",
                "drift",
                "--model",
                "m",
                "--version",
                "2",
                "--collector",
                col.addr,
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert js.returncode == 0, js.stderr
        data = json.loads(js.stdout)
        assert data["records"] == 2000
        drifted = sorted(c["feature"] for c in data["columns"] if c["drifted"])
        assert drifted == ["b", "shop"]
        table = subprocess.run(
            [
                sys.executable,
                "-m",
                "modeltap",
                "drift",
                "--model",
                "m",
                "--collector",
                col.addr,
                "--since",
                "1h",
                "--rule",
                "b=psi:100",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert table.returncode == 0, table.stderr
        # b's shift no longer passes its (absurd) threshold
        assert "1 of 6 columns drifted" in table.stdout
        missing = subprocess.run(
            [sys.executable, "-m", "modeltap", "drift", "--model", "nope", "--collector", col.addr],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert missing.returncode == 1
        assert "no profiles" in missing.stderr
    finally:
        col.stop()


def test_a_damaged_stored_profile_is_left_out_with_a_note(tmp_path, ref_and_rows):
    ref, rows = ref_and_rows
    store = tmp_path / "s.duckdb"
    with BackgroundCollector(store) as col:
        a = modeltap.Agent("m", "1", collector=col.addr, reference=ref, metrics_interval=None)
        for r in rows[:2_000]:
            a.log(r, 0)
        a.close()
    with modeltap.Store(store) as s:
        clean = s.drift("m", "1")
    with modeltap.Store(store, read_only=False) as s:
        row = list(s.con.execute("SELECT * FROM window_profiles LIMIT 1").fetchone())
        row[3] += 1000  # batch_seq
        row[-1] = bytes(row[-1])[:-7]  # a torn profile
        s.con.execute("INSERT INTO window_profiles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    with modeltap.Store(store) as s:
        report = s.drift("m", "1")
    assert report.records == clean.records == 2_000
    assert any("left out" in n for n in report.notes), report.notes
    assert sorted(report.drifted) == sorted(clean.drifted)
