"""Writes deploy/grafana/modeltap.json, the Grafana dashboard over the
metrics of `modeltap collector --http` (regenerate after changing a panel:
``python scripts/make_grafana_dashboard.py``; tests/test_prometheus.py runs
every panel's query against a real Prometheus)."""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "modeltap.json"
SEL = 'model=~"$model", version=~"$version"'

# (title, unit, [(legend, PromQL)], kind)
PANELS = [
    (
        "Predictions per second",
        "reqps",
        [
            (
                "{{model}} {{version}}",
                f"sum by (model, version) (rate(modeltap_predictions_total{{{SEL}}}[5m]))",
            )
        ],
        "timeseries",
    ),
    (
        "Error rate",
        "percentunit",
        [
            (
                "{{model}} {{version}}",
                f"sum by (model, version) (rate(modeltap_prediction_errors_total{{{SEL}}}[5m])) / "
                f"sum by (model, version) (rate(modeltap_predictions_total{{{SEL}}}[5m]))",
            )
        ],
        "timeseries",
    ),
    (
        "Prediction latency p50 / p95 / p99",
        "s",
        [
            (
                f"p{q} {{{{model}}}}",
                f"histogram_quantile({q / 100}, sum by (model, le) "
                f"(rate(modeltap_prediction_latency_seconds_bucket{{{SEL}}}[5m])))",
            )
            for q in (50, 95, 99)
        ],
        "timeseries",
    ),
    (
        "Stage latency p95",
        "s",
        [
            (
                "{{stage}} {{end_to_end}}",
                f"histogram_quantile(0.95, sum by (stage, end_to_end, le) "
                f"(rate(modeltap_stage_latency_seconds_bucket{{{SEL}}}[5m])))",
            )
        ],
        "timeseries",
    ),
    (
        "Features drifted",
        "short",
        [("{{model}} {{version}}", f"modeltap_features_drifted{{{SEL}}}")],
        "stat",
    ),
    (
        "PSI per feature (last hour)",
        "short",
        [("{{feature}}", f'modeltap_feature_drift{{{SEL}, statistic="psi"}}')],
        "timeseries",
    ),
    (
        "Drift decision per feature",
        "short",
        [("{{feature}}", f"modeltap_feature_drifted{{{SEL}}}")],
        "timeseries",
    ),
    (
        "Predicted classes",
        "reqps",
        [("{{class}}", f"sum by (class) (rate(modeltap_predictions_by_class_total{{{SEL}}}[5m]))")],
        "timeseries",
    ),
    (
        "Errors by type",
        "reqps",
        [("{{type}}", f"sum by (type) (rate(modeltap_prediction_errors_total{{{SEL}}}[5m]))")],
        "timeseries",
    ),
    (
        "Records dropped by agents",
        "short",
        [
            (
                "{{agent_id}} {{reason}}",
                "sum by (agent_id, reason) "
                f"(increase(modeltap_agent_records_dropped_total{{{SEL}}}[10m]))",
            )
        ],
        "timeseries",
    ),
    (
        "Agent CPU",
        "percent",
        [("{{agent_id}} {{host}}", f"modeltap_agent_cpu_percent{{{SEL}}}")],
        "timeseries",
    ),
    (
        "Agent memory (RSS)",
        "bytes",
        [("{{agent_id}} {{host}}", f"modeltap_agent_rss_bytes{{{SEL}}}")],
        "timeseries",
    ),
    (
        "GPU utilisation",
        "percent",
        [("{{host}} GPU {{gpu}}", f"modeltap_agent_gpu_utilization_percent{{{SEL}}}")],
        "timeseries",
    ),
    (
        "GPU memory used",
        "bytes",
        [("{{host}} GPU {{gpu}}", f"modeltap_agent_gpu_memory_used_bytes{{{SEL}}}")],
        "timeseries",
    ),
    (
        "Records ingested per second",
        "reqps",
        [("collector", "rate(modeltap_records_ingested_total[5m])")],
        "timeseries",
    ),
    ("Ingest lag", "s", [("latest batch", "modeltap_ingest_lag_seconds")], "timeseries"),
    ("Store size", "bytes", [("store", "modeltap_store_size_bytes")], "stat"),
    (
        "Collector refusals",
        "short",
        [("{{reason}}", "sum by (reason) (increase(modeltap_exports_refused_total[10m]))")],
        "timeseries",
    ),
]


def dashboard() -> dict:
    panels = []
    for i, (title, unit, targets, kind) in enumerate(PANELS):
        panels.append(
            {
                "id": i + 1,
                "type": kind,
                "title": title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {},
                "targets": [
                    {
                        "refId": chr(ord("A") + j),
                        "expr": expr,
                        "legendFormat": legend,
                        "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    }
                    for j, (legend, expr) in enumerate(targets)
                ],
            }
        )

    def variable(name: str, query: str) -> dict:
        return {
            "name": name,
            "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": name},
            "definition": query,
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "refresh": 2,
            "current": {"text": "All", "value": "$__all"},
        }

    return {
        "title": "modeltap",
        "uid": "modeltap",
        "tags": ["modeltap", "ml"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                variable("model", "label_values(modeltap_predictions_total, model)"),
                variable(
                    "version", 'label_values(modeltap_predictions_total{model=~"$model"}, version)'
                ),
            ]
        },
        "panels": panels,
    }


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
