"""monitoring/ under a real Prometheus: promtool checks the config and rules, runs the alerts' unit
tests, parses every dashboard query; a Prometheus process scrapes a live server and its quantiles
agree with the latencies the client measured.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from runtime.examples import save_model
from runtime.monitoring.catalogue import DEFAULT_LATENCY_BUCKETS
from tests.models import build_identity
from tests.monitoring.models import build_monitoring_repository, reference_scores
from tests.monitoring.test_dashboard import _queries, metric_names
from tests.monitoring_stack.prometheus import Prometheus, promtool, running_prometheus
from tests.serving import RunningServer, running_server, thread_http_client

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
ALERT_TESTS = MONITORING / "alerts_test.yml"


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _passes(result: Any) -> bool:
    return bool(result.returncode == 0)


def test_promtool_accepts_the_config_and_rules() -> None:
    config = promtool("check", "config", MONITORING / "prometheus.yml")
    assert _passes(config), config.stdout + config.stderr
    rules = promtool("check", "rules", MONITORING / "alerts.yml")
    assert _passes(rules), rules.stdout + rules.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in rules.stdout


def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", ALERT_TESTS.name, cwd=MONITORING)
    assert _passes(result), result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    assert {rule["alert"]: {True, False} for rule in _alerts()} == cases


@pytest.mark.parametrize("alert", [rule["alert"] for rule in _alerts()])
@pytest.mark.parametrize("broken", ["vector(1) > 0", "vector(0) > 1"], ids=["always", "never"])
def test_the_unit_tests_catch_a_broken_alert(tmp_path: Path, alert: str, broken: str) -> None:
    """The unit tests fail for an alert whose expression always fires, or never does."""
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = broken
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    (tmp_path / ALERT_TESTS.name).write_text(ALERT_TESTS.read_text())
    result = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert not _passes(result), f"{alert} as {broken!r} still passes its unit tests"
    assert alert in result.stdout + result.stderr


# Grafana's variables, as the dashboard's defaults ("All") expand them.
GRAFANA_VARIABLES = {"job": ".*", "model": ".*", "version": ".*", "__rate_interval": "1m", "__interval": "15s", "__range": "1h"}


def promql(expr: str) -> str:
    """A dashboard query as Prometheus would receive it: variables expanded, label_values() as a selector."""
    expr = re.sub(r"\$\{?(\w+)\}?", lambda m: GRAFANA_VARIABLES[m.group(1)], expr)
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", expr)
    return f"group by ({match.group(2)}) ({match.group(1)})" if match else expr


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, the query as written, the query as Prometheus gets it) for each dashboard query."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [(where, expr, promql(expr)) for where, expr in _queries(dashboard)]


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, (_, _, e) in enumerate(queries)]}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", tmp_path / "dashboard.yml")
    assert _passes(result), result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout
    broken = {"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum by (model (rate(x[1m]))"}]}]}
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    assert not _passes(promtool("check", "rules", tmp_path / "broken.yml"))


# ---- a Prometheus scraping a live server ----------------------------------------------------------

# Each request waits in the queue for the whole batch window (Triton's fixed window; its batch never
# fills: one caller), so the latencies sit well above the transport's, in a known bucket.
DELAY_US = 30_000
DELAYED_CONFIG = f"""\
name: "delayed"
max_batch_size: 8
input [{{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] }}]
output [{{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] }}]
dynamic_batching {{ max_queue_delay_microseconds: {DELAY_US} }}
parameters {{ key: "batch_window" value: {{ string_value: "fixed" }} }}
"""
REQUESTS = 60
# What Kubernetes discovery labels a pod of deploy/kserve/inference-service.yaml's predictor with.
POD_LABELS = {"namespace": "default", "pod": "onnx-simple-predictor-7d9f8-abcde"}


@dataclass
class Scraped:
    server: RunningServer
    prometheus: Prometheus
    latencies_s: list[float]


def _infer(client: httpclient.InferenceServerClient, model: str, array: np.ndarray) -> None:
    tensor = httpclient.InferInput("INPUT0", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    client.infer(model, [tensor])


def _wait_for(probe: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    root = tmp_path_factory.mktemp("stack")
    repository = build_monitoring_repository(root / "models")
    save_model(build_identity("FP32"), repository, "delayed", config_pbtxt=DELAYED_CONFIG)
    with running_server(repository, root / "server") as server, running_prometheus(
        root / "prometheus", [f"127.0.0.1:{server.metrics_port}"], labels=POD_LABELS
    ) as prometheus:
        latencies = []
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            _infer(client, "clf", np.array([[0.9, 0.1, 0.0], [0.0, 1.0, 0.0]], np.float32))
            _infer(client, "score", reference_scores(10, seed=1))
            one = np.ones((1, 2), np.float32)
            for _ in range(REQUESTS):
                start = time.perf_counter()
                _infer(client, "delayed", one)
                latencies.append(time.perf_counter() - start)
        finally:
            client.close()
        count = 'sum(model_runtime_request_duration_seconds_count{model="delayed"})'
        _wait_for(lambda: prometheus.scalar(count) == REQUESTS, f"Prometheus to scrape all {REQUESTS} requests")
        yield Scraped(server, prometheus, latencies)


def _bucket_of(seconds: float) -> tuple[float, float]:
    bounds = (0.0, *DEFAULT_LATENCY_BUCKETS)
    return next((low, high) for low, high in zip(bounds, bounds[1:]) if low < seconds <= high)


@pytest.mark.parametrize("quantile", [0.5, 0.99])
def test_histogram_quantile_agrees_with_client_latencies(scraped: Scraped, quantile: float) -> None:
    expr = (
        f"histogram_quantile({quantile}, sum by (le) "
        '(model_runtime_request_duration_seconds_bucket{job="model-runtime", model="delayed"}))'
    )
    estimate = scraped.prometheus.scalar(expr)
    measured = float(np.quantile(scraped.latencies_s, quantile))
    low, high = _bucket_of(measured)
    assert estimate is not None
    # The server's clock stops before the client's, by the transport's share: a little lower, never more
    # than one bucket's width away.
    assert abs(estimate - measured) <= high - low, (quantile, estimate, measured, (low, high))
    assert measured >= DELAY_US / 1e6


def test_dashboard_queries_evaluate_and_name_live_metrics(scraped: Scraped) -> None:
    """Prometheus runs each dashboard query without error, and each metric it names was scraped live."""
    live = scraped.prometheus.names()
    missing = {}
    for where, written, expr in dashboard_queries():
        scraped.prometheus.query(expr)  # fails with Prometheus's error for a query it rejects
        names = {n for n in metric_names(written) if "_gpu_" not in n}  # no GPU here: those panels say so
        if names - live:
            missing[where] = sorted(names - live)
    assert not missing, f"dashboard queries naming metrics the live server did not export: {missing}"


def adapter_query(rule: dict[str, Any]) -> str:
    """The query prometheus-adapter sends for the HPA's pods metric, its templates filled in as it fills them."""
    series = re.match(r"^(\w+)\{", rule["seriesQuery"])
    assert series is not None
    matchers = f'namespace="{POD_LABELS["namespace"]}",pod=~"{POD_LABELS["pod"]}"'
    query = rule["metricsQuery"].replace("<<.Series>>", series.group(1)).replace("<<.LabelMatchers>>", matchers)
    return str(query.replace("<<.GroupBy>>", "pod"))


def test_the_autoscalers_queries_count_requests_in_flight(scraped: Scraped) -> None:
    """deploy/'s two autoscaler queries (prometheus-adapter for the HPA, KEDA through KServe) run on
    Prometheus and see a request while it is in flight: `slow` holds one in its queue for 1.5 s."""
    from tests.deploy.test_manifests import one

    (rule,) = yaml.safe_load(one("ConfigMap")["data"]["config.yaml"])["rules"]
    keda = one("InferenceService")["spec"]["predictor"]["autoScaling"]["metrics"][0]["external"]["metric"]["query"]
    assert scraped.prometheus.query(rule["seriesQuery"])  # the adapter finds the series to offer
    def wait_in_slow() -> None:
        with thread_http_client(scraped.server.http_url) as client:  # a gevent client stays in its thread
            _infer(client, "slow", np.ones((1, 2), np.float32))

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(wait_in_slow)
        inflight = 'sum(model_runtime_inflight_requests{model="slow"})'
        _wait_for(lambda: scraped.prometheus.scalar(inflight) == 1, "Prometheus to see slow's request in flight")
        for query in (adapter_query(rule), keda):
            (series,) = scraped.prometheus.query(query)
            assert float(series["value"][1]) > 0, query
        waiting.result(timeout=30)
