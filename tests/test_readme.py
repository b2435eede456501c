"""The README's quickstart runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quickstart_runs(capsys):
    text = README.read_text()
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", text, re.S)
    assert code, "README has a python quickstart block"
    exec(compile(code.group(1), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'shipped': 1002" in out
    assert "['de', 'de']" in out


def test_sql_examples_run_against_a_store(tmp_path):
    import numpy as np

    import modeltap
    from modeltap.collector import BackgroundCollector

    with BackgroundCollector(tmp_path / "s.duckdb") as col:
        a = modeltap.Agent("fraud", "3.2.0", collector=col.addr, metrics_interval=None)
        X = np.arange(40.0).reshape(10, 4)
        for i, x in enumerate(X):
            a.log(x, "yes" if i % 2 else "no", latency_s=0.01 * i, error="boom" if i == 3 else None)
        a.close()
    text = README.read_text()
    sql = re.search(r"```sql\n(.*?)```", text, re.S)
    assert sql
    statements = [q for q in sql.group(1).split(";") if q.strip()]
    assert len(statements) == 2
    with modeltap.Store(tmp_path / "s.duckdb") as s:
        first = s.sql(statements[0]).to_pylist()
        second = s.sql(statements[1]).to_pylist()
    assert first[0]["requests"] == 10
    assert abs(first[0]["error_rate"] - 0.1) < 1e-9
    means = {r["prediction_label"]: r["mean_f3"] for r in second}
    assert means == {"no": np.mean(X[0::2, 3]), "yes": np.mean(X[1::2, 3])}
