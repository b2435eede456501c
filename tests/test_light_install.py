"""The agent-only install: a venv holding modeltap and the agent's own
dependencies (numpy, psutil, grpcio, protobuf, nvidia-ml-py) and nothing of
the collector extra (DuckDB, pyarrow, plotly, rich, prometheus-client, the
OTLP protos, gRPC health) imports modeltap, logs, traces and ships to a
collector; what needs the extra says which one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import tomllib

import modeltap
from modeltap.collector import BackgroundCollector

ROOT = Path(__file__).resolve().parent.parent
EXTRA = ("duckdb", "pyarrow", "plotly", "rich", "prometheus_client", "grpc_health")

SCRIPT = r"""
import importlib.util, json, sys
import numpy as np
import modeltap
missing = [m for m in sys.argv[2].split(",") if importlib.util.find_spec(m) is None]
a = modeltap.Agent("light", "1", collector=sys.argv[1], metrics_interval=0.2)
for i in range(100):
    with a.span("request"):
        a.log(np.full(3, float(i)), float(i % 2), [0.4, 0.6], request_id=f"r{i}")
ok = a.flush(30)
stats = a.stats()
a.close()
try:
    modeltap.Store("x.duckdb")
    store = "opened"
except ModuleNotFoundError as e:
    store = str(e)
print(json.dumps({"missing": missing, "ok": ok, "shipped": stats["shipped"], "store": store,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in
                                   {"duckdb", "pyarrow", "plotly", "rich", "prometheus_client"})}))
"""


def _requirement_name(req: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", req.strip(), maxsplit=1)[0]


def _agent_distributions() -> set[str]:
    """The distributions the agent-only install brings: pyproject's
    dependencies and, recursively, theirs (extras left out)."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        todo = [_requirement_name(r) for r in tomllib.load(f)["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for req in metadata.distribution(name).requires or []:
            if "extra ==" not in req:
                todo.append(_requirement_name(req))
    return seen


def _top_level(dist: metadata.Distribution) -> set[str]:
    tops = set()
    for f in dist.files or []:
        top = f.parts[0]
        if top.endswith((".dist-info", ".egg-info", ".pth")) or top in ("..", "__pycache__"):
            continue
        tops.add(top)
    return tops


def _light_venv(tmp_path: Path) -> Path:
    """A venv without pip or system packages; a .pth names a directory of
    links to modeltap and the agent's distributions alone."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    links = tmp_path / "agent-packages"
    links.mkdir()
    (links / "modeltap").symlink_to(Path(modeltap.__file__).parent)
    dists = _agent_distributions()
    assert not dists & {"duckdb", "pyarrow", "plotly", "rich", "prometheus-client"}, dists
    for name in sorted(dists):
        dist = metadata.distribution(name)
        for top in _top_level(dist):
            src = Path(str(dist.locate_file(top)))
            if src.exists() and not (links / top).exists():
                (links / top).symlink_to(src)
    (Path(purelib) / "agent-packages.pth").write_text(str(links) + "\n")
    return py


def test_an_agent_runs_without_the_collector_extra(tmp_path):
    py = _light_venv(tmp_path)
    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        p = subprocess.run(
            [str(py), "-c", SCRIPT, col.addr, ",".join(EXTRA)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": ""},
        )
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout.strip().splitlines()[-1])
        with modeltap.Client(col.addr) as c:
            n = c.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py()
    assert n == 100
    assert out["missing"] == list(EXTRA)  # none of the extra is there
    assert out["ok"] is True
    assert out["shipped"] == 100
    assert out["loaded"] == []
    assert "pip install 'modeltap[collector]'" in out["store"]


def test_the_command_line_names_the_extra(tmp_path):
    py = _light_venv(tmp_path)
    p = subprocess.run(
        [str(py), "-m", "modeltap", "query", "SELECT 1", "--collector", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": ""},
    )
    assert p.returncode == 1
    assert "modeltap[collector]" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
