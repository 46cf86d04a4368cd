"""monitoring/: the Grafana dashboard is well-formed and every query names metrics we export.

test_server_metrics.py checks that each name in runtime.monitoring.EXPORTED really shows up on a
live /metrics; here every metric a dashboard panel, template variable or alert queries must be one
of those names, so a renamed metric breaks this test instead of an operator's dashboard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from runtime.monitoring import exposed_names

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
PANEL_TYPES = {"row", "timeseries", "table", "bargauge", "heatmap", "stat", "gauge", "barchart", "piechart"}
# Words in PromQL that are not metric names.
PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "by",
    "without",
    "rate",
    "increase",
    "irate",
    "histogram_quantile",
    "ignoring",
    "on",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "label_values",
    "offset",
    "bool",
    "topk",
    "bottomk",
    "quantile",
    "abs",
    "clamp_min",
    "clamp_max",
    "delta",
    "deriv",
    "time",
    "vector",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return loaded


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that name metrics (labels, functions and variables dropped)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    without_label_args = re.sub(r"\blabel_values\(([^,()]*),[^)]*\)", r"\1", without_labels)
    without_groupings = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", without_label_args
    )
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_groupings)
    tokens = set(re.findall(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {t for t in tokens if t not in PROMQL_WORDS}


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, model) "
        '(rate(model_runtime_x_bucket{job=~"$job", le!="1"}[$__rate_interval])))'
    )
    assert metric_names(expr) == {"model_runtime_x_bucket"}
    assert metric_names("a / ignoring(class) group_left sum by (m) (b)") == {"a", "b"}
    assert metric_names('label_values(model_runtime_model_state{job=~"$job"}, model)') == {
        "model_runtime_model_state"
    }


def test_dashboard_is_grafana_json(dashboard: dict[str, Any]) -> None:
    for key, kind in [
        ("title", str),
        ("uid", str),
        ("schemaVersion", int),
        ("panels", list),
        ("templating", dict),
        ("time", dict),
        ("editable", bool),
    ]:
        assert isinstance(dashboard.get(key), kind), key
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"])
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    names = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "job", "model", "version"} <= names
    for panel in _panels(dashboard):
        assert panel["type"] in PANEL_TYPES, panel["title"]
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y"))
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        targets = panel["targets"]
        assert targets, f"panel {panel['title']!r} has no query"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids))
        for target in targets:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            for variable in re.findall(r"\$(\w+)", expr):
                assert variable in names | {"__rate_interval", "__interval", "__range"}, variable


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["query"]["query"]


def test_every_dashboard_query_names_exported_metrics(dashboard: dict[str, Any]) -> None:
    exported = exposed_names()
    for where, expr in _queries(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: {expr!r} names no metric"
        unknown = names - exported
        assert not unknown, f"{where}: {sorted(unknown)} are not metrics model-runtime exports"


def test_dashboard_covers_the_issue(dashboard: dict[str, Any]) -> None:
    exprs = [expr for _, expr in _queries(dashboard)]
    used = set().union(*(metric_names(e) for e in exprs))
    for needed in [
        "model_runtime_requests_total",  # throughput and errors
        "model_runtime_request_duration_seconds_bucket",
        "model_runtime_batch_size_bucket",
        "model_runtime_inference_rows_total",
        "model_runtime_executions_total",
        "model_runtime_queue_depth",
        "model_runtime_prediction_class_total",
        "model_runtime_prediction_value_bucket",
        "model_runtime_drift_psi",
    ]:
        assert needed in used, needed
    latency = [e for e in exprs if "model_runtime_request_duration_seconds_bucket" in e]
    quantiles = {q for e in latency for q in re.findall(r"histogram_quantile\(([\d.]+)", e)}
    assert quantiles >= {"0.5", "0.95", "0.99"}
    assert any("by (model, reason)" in e and 'outcome="failure"' in e for e in exprs), "errors by reason"
    assert any("model_runtime_drift_psi" in e and "version" in e for e in exprs), "drift per version"


def test_prometheus_config_scrapes_the_metrics_port() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "model-runtime")
    assert job["metrics_path"] == "/metrics"
    assert any(target.endswith(":8002") for group in job["static_configs"] for target in group["targets"])
    for rule_file in config["rule_files"]:
        assert (MONITORING / rule_file).is_file()


def test_alert_rules_name_exported_metrics() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    exported = exposed_names()
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert exprs
    for expr in exprs:
        assert metric_names(expr) and metric_names(expr) <= exported, expr


def test_gpu_panels_say_no_gpu_when_there_is_none(dashboard: dict[str, Any]) -> None:
    gpu_panels = [
        panel for panel in _panels(dashboard) if any("_gpu_" in t.get("expr", "") for t in panel.get("targets", []))
    ]
    assert gpu_panels
    for panel in gpu_panels:
        assert "no GPU" in panel["fieldConfig"]["defaults"].get("noValue", ""), panel["title"]
