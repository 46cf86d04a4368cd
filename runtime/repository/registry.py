"""Model name -> versions -> live ServedModel. Loads versions from the store per version policy."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.backends.onnx import CUDA, OnnxBackend, SessionSpec, cuda_available, default_intra_op_threads
from runtime.config import Settings
from runtime.errors import InvalidInput, ModelLoadError, ModelNotFound, Unavailable
from runtime.model import ModelState, ServedModel
from runtime.observer import NullObserver, Observer
from runtime.processing import load_processing
from runtime.repository import model_config as mcfg
from runtime.repository.store import ModelDir, RepositoryStore
from runtime.server._pb import model_config_pb2 as mc
from runtime.types import CONFIG_TO_DATATYPE, DATATYPE_TO_NUMPY

log = logging.getLogger(__name__)

_GRAPH_LEVEL_BY_TRITON_VALUE = {-1: "basic", 0: "all", 1: "extended"}


@dataclass(slots=True)
class VersionRecord:
    name: str
    version: int
    state: ModelState
    reason: str = ""
    served: ServedModel | None = None
    load_seconds: float = 0.0


class ModelRegistry:
    def __init__(self, store: RepositoryStore, settings: Settings, observer: Observer | None = None) -> None:
        self._store = store
        self._settings = settings
        self.observer: Observer = observer or NullObserver()
        self._versions: dict[str, dict[int, VersionRecord]] = {}
        self._model_errors: dict[str, str] = {}

    # ---- loading ---------------------------------------------------------------------------

    async def load_all(self) -> None:
        for name in self._store.model_names():
            await self.load_model(name)

    async def load_model(self, name: str) -> None:
        """Load every version the model's policy selects; a failure is recorded, never raised."""
        model_dir = self._store.model(name)
        if model_dir is None:
            raise ModelNotFound(f"no model named {name!r} in the repository {self._store.root}")
        try:
            versions = self._select_versions(model_dir, mcfg.read_config_file(model_dir.path))
        except ModelLoadError as exc:
            self._model_errors[name] = exc.message
            log.error("model %r cannot load: %s", name, exc.message)
            return
        self._model_errors.pop(name, None)
        records = self._versions.setdefault(name, {})
        for version in versions:
            records[version] = VersionRecord(name, version, ModelState.LOADING)
            started = time.monotonic()
            try:
                served = await asyncio.to_thread(self._load_version, model_dir, version)
            except ModelLoadError as exc:
                records[version] = VersionRecord(name, version, ModelState.UNAVAILABLE, exc.message)
                log.error("model %r version %d failed to load: %s", name, version, exc.message)
                continue
            records[version] = VersionRecord(
                name, version, ModelState.READY, served=served, load_seconds=time.monotonic() - started
            )
            log.info(
                "model %r version %d ready on %s (%.2fs)",
                name, version, ",".join(served.backend.providers), time.monotonic() - started,
            )

    def _select_versions(self, model_dir: ModelDir, config: mc.ModelConfig) -> list[int]:
        available = model_dir.versions()
        if not available:
            raise ModelLoadError(f"model {model_dir.name!r}: no numeric version directories in {model_dir.path}")
        policy = config.version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            return available
        if choice == "specific":
            wanted = sorted(set(int(v) for v in policy.specific.versions))
            missing = [v for v in wanted if v not in available]
            if missing:
                raise ModelLoadError(
                    f"model {model_dir.name!r}: version_policy names versions {missing} that do not exist "
                    f"(found {available})"
                )
            return wanted
        count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions else 1
        return available[-count:]

    def _load_version(self, model_dir: ModelDir, version: int) -> ServedModel:
        settings = self._settings
        declared = mcfg.read_config_file(model_dir.path)
        filename = declared.default_model_filename or mcfg.DEFAULT_MODEL_FILENAME
        model_path = model_dir.version_path(version) / filename
        if not model_path.is_file():
            raise ModelLoadError(f"model {model_dir.name!r} version {version}: {model_path} does not exist")
        signature = mcfg.read_graph_signature(model_path)
        config = mcfg.complete_config(
            declared,
            model_dir.name,
            signature,
            settings.default_max_batch_size,
            auto_complete=not settings.disable_auto_complete_config,
        )
        spec = self._session_spec(config, model_path)
        backend = OnnxBackend(spec)
        _record_instance_groups(config, "cuda" if CUDA in backend.providers else "cpu")
        try:
            processing = load_processing(model_dir.path, model_dir.version_path(version), config)
        except ModelLoadError:
            backend.close()
            raise
        served = ServedModel(
            config,
            version,
            backend,
            settings.default_max_queue_size,
            model_dir.path,
            observer=self.observer,
            processing=processing,
        )
        try:
            _warm_up(served, model_dir.path)
        except Exception as exc:
            backend.close()
            raise ModelLoadError(f"{served.label}: warm-up failed: {exc}") from None
        return served

    def _session_spec(self, config: mc.ModelConfig, model_path: Path) -> SessionSpec:
        settings = self._settings
        where = f"model {config.name!r}"
        kinds = {group.kind for group in config.instance_group} - {mc.ModelInstanceGroup.KIND_AUTO}
        if len(kinds) > 1:
            raise ModelLoadError(f"{where}: instance groups mixing KIND_GPU and KIND_CPU are not supported")
        if kinds == {mc.ModelInstanceGroup.KIND_GPU} or settings.execution_provider == "cuda":
            if not cuda_available():
                raise ModelLoadError(
                    f"{where}: asks for the GPU but ONNX Runtime has no CUDAExecutionProvider here "
                    "(install onnxruntime-gpu with CUDA, or use KIND_CPU / --execution-provider cpu)"
                )
            device = "cuda"
        elif kinds == {mc.ModelInstanceGroup.KIND_CPU} or settings.execution_provider == "cpu":
            device = "cpu"
        else:
            # onnxruntime-gpu lists CUDA even where no GPU is usable; the session start tells.
            device = "auto" if cuda_available() else "cpu"
        gpus = tuple(g for group in config.instance_group for g in group.gpus) or (settings.gpu_device_id,)
        instances = mcfg.instance_count(config)
        accelerators = config.optimization.execution_accelerators
        for accelerator in [*accelerators.gpu_execution_accelerator, *accelerators.cpu_execution_accelerator]:
            raise ModelLoadError(f"{where}: execution accelerator {accelerator.name!r} is not supported")
        level = settings.graph_optimization_level
        if config.optimization.HasField("graph"):
            level = _GRAPH_LEVEL_BY_TRITON_VALUE.get(config.optimization.graph.level, "all")
        return SessionSpec(
            model_path=model_path,
            device=device,
            gpu_ids=gpus,
            instance_count=instances,
            intra_op_threads=_int_parameter(config, "intra_op_thread_count")
            or settings.intra_op_threads
            or default_intra_op_threads(instances),
            inter_op_threads=_int_parameter(config, "inter_op_thread_count") or settings.inter_op_threads,
            allow_spinning=settings.allow_spinning,
            graph_optimization_level=level,
        )

    # ---- lookup ----------------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> ServedModel:
        record = self.record(name, version)
        if record.state is not ModelState.READY or record.served is None:
            detail = f": {record.reason}" if record.reason else ""
            raise Unavailable(f"model {name!r} version {record.version} is not ready ({record.state.value}){detail}")
        return record.served

    def record(self, name: str, version: str = "") -> VersionRecord:
        records = self._versions.get(name)
        if not records:
            if name in self._model_errors:
                raise Unavailable(f"model {name!r} is not ready: {self._model_errors[name]}")
            raise ModelNotFound(f"unknown model {name!r}")
        if not version:
            ready = [v for v, r in records.items() if r.state is ModelState.READY]
            return records[max(ready)] if ready else records[max(records)]
        if not version.isdigit():
            raise ModelNotFound(f"model {name!r} has no version {version!r} (versions are positive integers)")
        record = records.get(int(version))
        if record is None:
            raise ModelNotFound(
                f"model {name!r} has no version {version} (available: {', '.join(map(str, sorted(records)))})"
            )
        return record

    def ready_versions(self, name: str) -> list[int]:
        return sorted(v for v, r in self._versions.get(name, {}).items() if r.state is ModelState.READY)

    def records(self) -> list[VersionRecord]:
        return [record for name in sorted(self._versions) for _, record in sorted(self._versions[name].items())]

    def model_errors(self) -> dict[str, str]:
        return dict(self._model_errors)

    def served_models(self) -> list[ServedModel]:
        return [r.served for r in self.records() if r.served is not None and r.state is ModelState.READY]

    async def close(self) -> None:
        """Drain and unload every model version."""
        served = [r.served for r in self.records() if r.served is not None]
        await asyncio.gather(*(model.close() for model in served))
        for record in self.records():
            record.state = ModelState.UNAVAILABLE
            record.served = None


def _record_instance_groups(config: mc.ModelConfig, device: str) -> None:
    """Make the served config say where instances run, as Triton's auto-complete does."""
    kind = mc.ModelInstanceGroup.KIND_GPU if device == "cuda" else mc.ModelInstanceGroup.KIND_CPU
    if not config.instance_group:
        group = config.instance_group.add()
        group.count = 1
    for group in config.instance_group:
        group.kind = kind
        if not group.count:
            group.count = 1
        if not group.name:
            group.name = f"{config.name}_{kind and mc.ModelInstanceGroup.Kind.Name(kind).lower()}"


def _int_parameter(config: mc.ModelConfig, key: str) -> int:
    if key not in config.parameters:
        return 0
    text = config.parameters[key].string_value
    try:
        return int(text)
    except ValueError:
        raise ModelLoadError(f"model {config.name!r}: parameter {key} must be an integer, got {text!r}") from None


def _warm_up(served: ServedModel, model_dir: Path) -> None:
    rng = np.random.default_rng(0)
    for warmup in served.config.model_warmup:
        inputs = {}
        batch = (max(1, warmup.batch_size),) if served.max_batch_size > 0 else ()
        for name, spec in warmup.inputs.items():
            datatype = CONFIG_TO_DATATYPE.get(mc.DataType.Name(spec.data_type), "")
            if datatype not in DATATYPE_TO_NUMPY:
                raise InvalidInput(f"warm-up {warmup.name!r}: input {name!r} has unsupported data_type")
            dtype = DATATYPE_TO_NUMPY[datatype]
            shape = batch + tuple(int(d) for d in spec.dims)
            choice = spec.WhichOneof("input_data_type")
            if choice == "input_data_file":
                raw = (model_dir / "warmup" / spec.input_data_file).read_bytes()
                one = np.frombuffer(raw, dtype=dtype).reshape(tuple(int(d) for d in spec.dims))
                inputs[name] = np.broadcast_to(one, shape).copy()
            elif dtype == object:
                inputs[name] = np.full(shape, b"", dtype=object)
            elif choice == "random_data":
                inputs[name] = (rng.random(shape) * 10).astype(dtype)
            else:
                inputs[name] = np.zeros(shape, dtype=dtype)
        for _ in range(max(1, warmup.count)):
            served.run_sync(inputs)
