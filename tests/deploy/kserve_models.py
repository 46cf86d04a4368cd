"""The KServe kinds' check against the kserve SDK's generated models, run as a child process by
tests/deploy/test_manifests.py: `python -m tests.deploy.kserve_models` reads [value, type_name, where]
as JSON on stdin and prints the list of errors as JSON.

It runs apart because importing `kserve` registers its protobuf messages (`inference.*`) in the
default pool under the same full names as tritonclient's, which the test process holds.
"""
from __future__ import annotations

import json
import re
import sys
from typing import Any, Iterator

import kserve.models as kserve_models
import kubernetes.client.models as k8s_models
import pydantic

_LIST = re.compile(r"^list\[(.+)\]$")
_DICT = re.compile(r"^dict\(([^,]+), (.+)\)$")
_SCALARS = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float)}


def _model_class(name: str) -> Any:
    return getattr(kserve_models, name, None) or getattr(k8s_models, name, None)


def model_errors(value: Any, type_name: str, where: str) -> Iterator[str]:
    """What in `value` does not fit the OpenAPI type `type_name` (an SDK model, list[...], dict(...))."""
    if (match := _LIST.match(type_name)) is not None:
        if not isinstance(value, list):
            yield f"{where}: expected a list, got {value!r}"
            return
        for index, item in enumerate(value):
            yield from model_errors(item, match.group(1), f"{where}[{index}]")
        return
    if (match := _DICT.match(type_name)) is not None:
        if not isinstance(value, dict):
            yield f"{where}: expected a mapping, got {value!r}"
            return
        for key, item in value.items():
            yield from model_errors(item, match.group(2), f"{where}.{key}")
        return
    if type_name in _SCALARS:
        if isinstance(value, bool) and type_name != "bool" or not isinstance(value, _SCALARS[type_name]):
            yield f"{where}: expected {type_name}, got {value!r}"
        return
    cls = _model_class(type_name)
    if isinstance(cls, type) and issubclass(cls, pydantic.BaseModel):
        # The Kubernetes client's models are pydantic, strict and extra="forbid": they validate themselves.
        try:
            cls.model_validate(value)
        except pydantic.ValidationError as exc:
            yield f"{where}: {exc}"
        return
    if cls is None or not getattr(cls, "openapi_types", None):
        return  # object, quantities, int-or-string: free-form in the schema
    if not isinstance(value, dict):
        yield f"{where}: expected a {type_name} mapping, got {value!r}"
        return
    fields = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    for key, item in value.items():
        if key not in fields:
            yield f"{where}: {key!r} is not a field of {type_name}"
        else:
            yield from model_errors(item, cls.openapi_types[fields[key]], f"{where}.{key}")
    # The generated constructor raises for a required field left out (client-side validation).
    try:
        cls(**{fields[key]: object() for key in value if key in fields})
    except ValueError as exc:
        yield f"{where}: {exc}"


if __name__ == "__main__":
    # stdin: a JSON list of [value, type_name, where]; stdout: a JSON list of each one's errors
    cases = json.loads(sys.stdin.read())
    print(json.dumps([list(model_errors(value, type_name, where)) for value, type_name, where in cases]))
