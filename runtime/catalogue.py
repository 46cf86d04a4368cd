"""What the front ends of `--workers N` answer without asking the engine process: each serving model's
readiness, metadata, configuration and request schema, per version key, as the engine computed them.

The engine process builds the document (`build`) after every change to what serves (the registry's
listeners: loads, swaps, unloads, rollbacks, traffic splits, labels) and sends it to every front end;
a front end answers model_ready, model_metadata and model_config from it (`Catalogue`) and checks
infer requests against its schemas before they cross the hop, so a bad request never costs the
engine anything. The answers are the engine's own:

- Freshness: one int64 per front end, in its response slab, holds the registry's generation. The
  engine bumps it in the registry's listener, synchronously with the change and before any reply
  that follows it, and a front end whose document is older than the counter asks the engine
  instead. A client that saw an admin call return therefore never reads the state from before it.
- Coverage: a key the document lacks (an unknown model, a version that is not serving, or "" while
  a traffic split routes each request, which only the engine may do) is asked of the engine.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from runtime.engine import Engine, ModelMetadata
from runtime.errors import RuntimeServingError
from runtime.repository.model_config import ModelConfig, config_from_json, config_to_json
from runtime.types import TensorSpec
from runtime.validate import RequestSchema

Document = dict[str, Any]  # {"generation": int, "models": {name: {version key: entry}}}


def _spec_doc(spec: TensorSpec) -> list[Any]:
    return [spec.name, spec.datatype, list(spec.shape)]


def _spec(doc: list[Any]) -> TensorSpec:
    return TensorSpec(doc[0], doc[1], tuple(doc[2]))


async def build(engine: Engine, generation: int) -> Document:
    """The document of everything that serves now. Nothing here suspends, so it is one consistent
    state. Keys: every serving version, every label and, without a traffic split, "" (the latest)."""
    registry = engine.registry
    models: dict[str, dict[str, Any]] = {}
    for entry in registry.entries():
        if not entry.serving:
            continue
        keys = [str(v) for v in sorted(entry.serving)] + sorted(entry.labels)
        if not entry.weights:  # get(name, "") routes by weight, and routing is the engine's alone
            keys.append("")
        versions: dict[str, Any] = {}
        for key in keys:
            try:
                served = registry.get(entry.name, key)
                metadata = await engine.model_metadata(entry.name, key)
                config = await engine.model_config(entry.name, key)
                ready = await engine.model_ready(entry.name, key)
            except RuntimeServingError:
                continue  # not answerable from a document: the front ends ask the engine
            versions[key] = {
                "ready": ready,
                "metadata": dataclasses.asdict(metadata),
                "config": config_to_json(config),
                "schema": {
                    "label": served.schema.label,
                    "inputs": [_spec_doc(s) for s in served.inputs],
                    "outputs": [_spec_doc(s) for s in served.outputs],
                    "max_batch_size": served.config.max_batch_size,
                    "optional": sorted(served.optional_inputs),
                },
            }
        models[entry.name] = versions
    return {"generation": generation, "models": models}


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One (model, version key) of the document, decoded once."""

    ready: bool
    metadata: ModelMetadata
    config: ModelConfig
    schema: RequestSchema


def _entry(name: str, doc: dict[str, Any]) -> Entry:
    meta = doc["metadata"]
    schema = doc["schema"]
    return Entry(
        ready=bool(doc["ready"]),
        metadata=ModelMetadata(
            name=meta["name"],
            versions=list(meta["versions"]),
            platform=meta["platform"],
            inputs=[TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["inputs"]],
            outputs=[TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["outputs"]],
            execution_providers=list(meta["execution_providers"]),
        ),
        config=config_from_json(doc["config"], f"model {name!r}: the engine's configuration"),
        schema=RequestSchema(
            schema["label"],
            [_spec(s) for s in schema["inputs"]],
            [_spec(s) for s in schema["outputs"]],
            int(schema["max_batch_size"]),
            frozenset(schema["optional"]),
        ),
    )


class Catalogue:
    """A front end's copy of the document. `lookup` answers only while the copy is current."""

    def __init__(self, generation: memoryview) -> None:
        self._counter = generation  # the engine's generation: one int64 in shared memory (cast "q")
        self._generation = -1
        self._entries: dict[tuple[str, str], Entry] = {}

    def update(self, document: Document) -> None:
        entries = {
            (name, key): _entry(name, doc) for name, versions in document["models"].items() for key, doc in versions.items()
        }
        self._entries = entries
        self._generation = int(document["generation"])

    @property
    def current(self) -> bool:
        return self._generation == self._counter[0]

    def lookup(self, name: str, version: str) -> Entry | None:
        """That key's entry, or None: not in the document, or the document is older than the registry."""
        if self._generation != self._counter[0]:
            return None
        return self._entries.get((name, version))
