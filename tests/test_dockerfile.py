"""The Dockerfile agrees with pyproject.toml and the settings, checked statically (no Docker here):
base image, extras, CUDA from onnxruntime-gpu's own extras, ports, health check, user, entrypoint.

Parsed with `dockerfile` (BuildKit's own parser), so continuation lines and exec forms read as Docker reads them.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import dockerfile
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from runtime.config import ENV_PREFIX, Settings, setting_fields

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
COMMANDS = dockerfile.parse_file(str(ROOT / "Dockerfile"))


def stages() -> list[list[Any]]:
    found: list[list[Any]] = []
    for command in COMMANDS:
        if command.cmd == "FROM":
            found.append([])
        found[-1].append(command)
    return found


RUNTIME = stages()[-1]


def final(cmd: str) -> list[Any]:
    return [c for c in RUNTIME if c.cmd == cmd]


def test_every_stage_is_the_same_slim_python_that_pyproject_allows() -> None:
    images = [stage[0].value[0] for stage in stages()]
    assert len(set(images)) == 1, images  # the wheel is built by the interpreter that runs it
    match = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-(\w+)", images[0])
    assert match, f"{images[0]}: expected a pinned python:X.Y.Z-slim-<debian> base"
    assert Version(match.group(1)) in SpecifierSet(PYPROJECT["project"]["requires-python"].split("#")[0])
    assert not any("nvidia/cuda" in c.original for c in COMMANDS), "CUDA comes from the wheels only"


def installed_extras() -> set[str]:
    installs = [c for c in final("RUN") if "pip install" in c.value[0]]
    assert len(installs) == 1
    match = re.search(r"model_runtime-\*\.whl\)\[([\w,]+)\]", installs[0].value[0])
    assert match, installs[0].value[0]
    return set(match.group(1).split(","))


def test_the_image_installs_extras_pyproject_defines() -> None:
    extras = installed_extras()
    assert extras == {"gpu", "tracing"}
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"])


def test_cuda_comes_from_onnxruntime_gpus_own_extras_at_one_pinned_version() -> None:
    requirements = {Requirement(r).name: Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["gpu"]}
    assert set(requirements) == {"onnxruntime-gpu", "cuda-bindings"}
    gpu = requirements["onnxruntime-gpu"]
    assert gpu.extras == {"cuda", "cudnn"}
    (pin,) = gpu.specifier
    assert pin.operator == "==", f"pin onnxruntime-gpu in the gpu extra: it decides the image's CUDA ({gpu})"
    base = [Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("onnxruntime-gpu")]
    assert base and all(Version(pin.version) in r.specifier for r in base)  # the pin satisfies the base range
    # CUDA shared memory's bindings: the CUDA major onnxruntime-gpu 1.31.1 was built for (13), no later one.
    assert Version("13.5") in requirements["cuda-bindings"].specifier and Version("14.0") not in requirements["cuda-bindings"].specifier
    named = " ".join(c.original for c in COMMANDS)
    assert "nvidia-cuda" not in named and "nvidia-cudnn" not in named, "no second source of CUDA versions"


def test_ports_are_the_default_settings() -> None:
    defaults = Settings()
    (expose,) = final("EXPOSE")
    assert {int(port) for port in expose.value} == {defaults.http_port, defaults.grpc_port, defaults.metrics_port}


def test_the_health_check_asks_readiness_on_the_http_port() -> None:
    (check,) = final("HEALTHCHECK")
    assert check.value[0] == "CMD" and check.json
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]+)", " ".join(check.value))
    assert url and (int(url.group(1)), url.group(2)) == (Settings().http_port, "/v2/health/ready")
    assert check.value[1] == "python"  # no curl in a slim image


def test_the_process_runs_as_the_non_root_user_the_manifests_expect() -> None:
    (user,) = final("USER")
    uid, _, gid = user.value[0].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0  # numeric: runAsNonRoot can check it
    creates = " ".join(c.value[0] for c in final("RUN"))
    assert f"--uid {uid}" in creates and f"--gid {gid}" in creates
    deployment = next(
        doc for doc in yaml.safe_load_all((ROOT / "deploy/kubernetes/deployment.yaml").read_text()) if doc["kind"] == "Deployment"
    )
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid))


def test_entrypoint_env_and_volume_name_real_things() -> None:
    (entrypoint,) = final("ENTRYPOINT")
    assert entrypoint.json and list(entrypoint.value) == ["model-runtime", "serve"]
    assert "model-runtime" in PYPROJECT["project"]["scripts"]
    fields = {field.name for field in setting_fields()}
    env = {}
    for command in final("ENV"):
        env.update(dict(zip(command.value[::2], command.value[1::2])))
    ours = {key.removeprefix(ENV_PREFIX).lower(): value for key, value in env.items() if key.startswith(ENV_PREFIX)}
    assert ours and set(ours) <= fields
    (volume,) = final("VOLUME")
    assert ours["model_repository"] in volume.value


@pytest.mark.parametrize("copy", [c for c in COMMANDS if c.cmd == "COPY" and not c.flags], ids=lambda c: c.value[0])
def test_what_the_build_copies_exists(copy: Any) -> None:
    for source in copy.value[:-1]:
        assert (ROOT / source).exists(), source
    build = " ".join(shlex.split(stages()[0][-1].value[0]))
    assert "pip wheel" in build
