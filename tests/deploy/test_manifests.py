"""deploy/: every manifest validates offline, and every flag it passes is one `model-runtime serve` accepts.

Core kinds are validated by kubernetes-validate against the Kubernetes OpenAPI schema (strict: unknown
fields are errors). KServe's kinds are checked against the kserve SDK's generated models: every key
must be a field of its model (recursively),
and the required fields must be there. The Kubernetes client's models are pydantic (strict,
extra fields forbidden) and validate the pod parts themselves.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from runtime.cli import build_parser
from runtime.config import ENV_PREFIX, Settings, from_sources
from runtime.monitoring.catalogue import exposed_names

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.33.0"
KSERVE_KINDS = {
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                found.append((f"{path.relative_to(ROOT)}#{index}", doc))
    return found


DOCUMENTS = documents()


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCUMENTS if doc["kind"] == kind]


def one(kind: str) -> dict[str, Any]:
    (doc,) = by_kind(kind)
    return doc


# --- KServe kinds against the SDK's models -------------------------------------------------------

def kserve_cases() -> dict[str, tuple[dict[str, Any], str, str]]:
    """Every value the tests below check against the SDK's models: the manifests and broken copies."""
    cases = {
        name: (doc, KSERVE_KINDS[doc["apiVersion"], doc["kind"]], doc["kind"])
        for name, doc in DOCUMENTS
        if (doc["apiVersion"], doc["kind"]) in KSERVE_KINDS
    }
    runtime = one("ClusterServingRuntime")
    spec = dict(runtime["spec"], supportedModelFormat=runtime["spec"]["supportedModelFormats"])
    cases["misspelt field"] = (dict(runtime, spec=spec), "V1alpha1ClusterServingRuntime", "csr")
    container = dict(runtime["spec"]["containers"][0], readinesProbe={})
    cases["misspelt container field"] = (
        dict(runtime, spec=dict(runtime["spec"], containers=[container])), "V1alpha1ClusterServingRuntime", "csr"
    )
    service = one("InferenceService")
    predictor = dict(service["spec"]["predictor"], model={"runtime": "model-runtime-onnx"})
    cases["missing model format"] = (dict(service, spec={"predictor": predictor}), "V1beta1InferenceService", "isvc")
    return cases


@pytest.fixture(scope="module")
def model_errors() -> dict[str, list[str]]:
    """What in each case does not fit its SDK model: checked by tests/deploy/kserve_models.py in one child
    process, since importing `kserve` registers protobuf messages under the same full names as
    tritonclient's, which this process holds (one protobuf pool refuses both)."""
    cases = kserve_cases()
    completed = subprocess.run(
        [sys.executable, "-m", "tests.deploy.kserve_models"],
        input=json.dumps(list(cases.values())), capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    errors: list[list[str]] = json.loads(completed.stdout.splitlines()[-1])
    return dict(zip(cases, errors))


@pytest.mark.parametrize(
    "name, doc", [(n, d) for n, d in DOCUMENTS if (d["apiVersion"], d["kind"]) in KSERVE_KINDS], ids=lambda v: v if isinstance(v, str) else ""
)
def test_kserve_kinds_fit_the_sdk_models(name: str, doc: dict[str, Any], model_errors: dict[str, list[str]]) -> None:
    assert model_errors[name] == []


def test_the_kserve_check_catches_a_misspelt_field(model_errors: dict[str, list[str]]) -> None:
    assert model_errors["misspelt field"] == ["csr.spec: 'supportedModelFormat' is not a field of V1alpha1ServingRuntimeSpec"]
    (error,) = model_errors["misspelt container field"]
    assert error.startswith("csr.spec.containers[0]: 1 validation error for V1Container\nreadinesProbe\n")
    assert "Extra inputs are not permitted" in error
    assert model_errors["missing model format"] == [
        "isvc.spec.predictor.model: Invalid value for `model_format`, must not be `None`"
    ]


# --- core kinds against the Kubernetes schema ----------------------------------------------------


@pytest.mark.parametrize(
    "name, doc", [(n, d) for n, d in DOCUMENTS if (d["apiVersion"], d["kind"]) not in KSERVE_KINDS], ids=lambda v: v if isinstance(v, str) else ""
)
def test_core_kinds_validate_strictly(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_every_manifest_is_checked() -> None:
    kinds = {doc["kind"] for _, doc in DOCUMENTS}
    assert kinds >= {
        "ClusterServingRuntime", "InferenceService", "Deployment", "Service", "PodDisruptionBudget",
        "HorizontalPodAutoscaler", "ConfigMap",
    }


# --- the container's flags, through the real CLI ---------------------------------------------------


def containers() -> list[tuple[str, dict[str, Any]]]:
    found = [("ClusterServingRuntime", c) for c in one("ClusterServingRuntime")["spec"]["containers"]]
    found += [("Deployment", c) for c in one("Deployment")["spec"]["template"]["spec"]["containers"]]
    return found


def serve_settings(container: dict[str, Any]) -> Settings:
    """The Settings `model-runtime serve` makes of the container's args and MODEL_RUNTIME_* env."""
    parser = build_parser()
    args = parser.parse_args(["serve", *container.get("args", [])])  # exits (SystemExit) on an unknown flag
    environ = {e["name"]: e["value"] for e in container.get("env", []) if e["name"].startswith(ENV_PREFIX)}
    values = {name: getattr(args, name) for name in vars(args) if name not in ("command", "version", "config_file")}
    return from_sources(values, environ=environ)


@pytest.mark.parametrize("kind, container", containers(), ids=lambda v: v if isinstance(v, str) else "")
def test_container_flags_parse_with_the_real_cli(kind: str, container: dict[str, Any]) -> None:
    settings = serve_settings(container)
    ports = {p["containerPort"] for p in container["ports"]}
    assert {settings.http_port, settings.grpc_port, settings.metrics_port} == ports
    assert settings.model_repository is not None
    probes = [container["readinessProbe"], container["livenessProbe"]]
    assert [p["httpGet"]["path"] for p in probes] == ["/v2/health/ready", "/v2/health/live"]
    for probe in probes:
        port = probe["httpGet"]["port"]
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert named.get(port, port) == settings.http_port
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_a_misspelt_flag_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        serve_settings({"args": ["--http-prot=8000"]})
    assert "unrecognized arguments: --http-prot=8000" in capsys.readouterr().err


def test_kserve_maps_its_model_folder_and_ports() -> None:
    runtime = one("ClusterServingRuntime")["spec"]
    settings = serve_settings(runtime["containers"][0])
    assert settings.model_repository == Path("/mnt/models")
    assert (settings.http_port, settings.grpc_port) == (8080, 9000)
    assert settings.allow_http and settings.allow_grpc
    assert set(runtime["protocolVersions"]) == {"v2", "grpc-v2"}
    assert [f["name"] for f in runtime["supportedModelFormats"]] == ["onnx"]
    assert runtime["annotations"]["prometheus.kserve.io/port"] == str(settings.metrics_port)
    service = one("InferenceService")["spec"]["predictor"]["model"]
    assert service["runtime"] == one("ClusterServingRuntime")["metadata"]["name"]
    assert service["modelFormat"]["name"] == "onnx"


def test_grace_period_outlasts_the_drain() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pause + serve_settings(container).exit_timeout_secs
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_selectors_and_ports_line_up() -> None:
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    budget = one("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in services["model-runtime"]["spec"]["ports"]} == {
        p["name"] for p in container["ports"]
    }
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(serve_settings(container).metrics_port)
    target = one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_images_carry_the_package_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {c["image"] for _, c in containers()}
    assert images == {f"model-runtime:{version}"}


def test_autoscalers_name_exported_metrics() -> None:
    hpa_metric = one("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    adapter = yaml.safe_load(one("ConfigMap")["data"]["config.yaml"])
    (rule,) = adapter["rules"]
    assert rule["name"]["as"] == hpa_metric
    assert hpa_metric in exposed_names()
    assert re.match(r"^(\w+)\{", rule["seriesQuery"]).group(1) in exposed_names()  # type: ignore[union-attr]
    query = one("InferenceService")["spec"]["predictor"]["autoScaling"]["metrics"][0]["external"]["metric"]["query"]
    names = set(re.findall(r"\b(model_runtime_\w+)\b", query))
    assert names and names <= exposed_names()


def test_prometheus_finds_the_pods_through_the_headless_service() -> None:
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "model-runtime-pods")
    (sd,) = job["dns_sd_configs"]
    (name,) = sd["names"]
    headless = next(s for s in by_kind("Service") if s["spec"].get("clusterIP") == "None")
    assert name.split(".")[0] == headless["metadata"]["name"]
    metrics = next(p for p in headless["spec"]["ports"] if p["name"] == "metrics")
    assert sd["port"] == metrics["port"] == serve_settings(containers()[-1][1]).metrics_port
