"""Loads one model version from disk into a ready ServedModel: config, session, processing, warm-up.

Synchronous and slow (ONNX Runtime builds sessions); the registry runs it in a thread.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.onnx import CUDA, OnnxBackend, SessionSpec, cuda_available, default_intra_op_threads
from runtime.config import GraphOptimizationLevel, Settings
from runtime import ensemble
from runtime.errors import InvalidInput, ModelLoadError, quoted
from runtime.model import ServedModel
from runtime.monitoring.observer import Observer
from runtime.processing import load_processing
from runtime.processing.classification import config_labels
from runtime.repository import limits
from runtime.repository import model_config as mcfg
from runtime.paths import inside
from runtime.repository.store import ModelDir
from runtime.tensors import array_from_file
from runtime.types import DATATYPE_TO_NUMPY, Array

log = logging.getLogger(__name__)

_GRAPH_LEVEL_BY_TRITON_VALUE: dict[int, GraphOptimizationLevel] = {-1: "basic", 0: "all", 1: "extended"}


@dataclass(frozen=True, slots=True)
class VersionFingerprint:
    """What a loaded version was made from; equal fingerprints need no reload."""

    config: bytes
    files: tuple[tuple[str, int, int], ...]  # (relative path, size, mtime_ns)


def select_versions(model_dir: ModelDir, config: mcfg.ModelConfig, allowed: set[int] | None = None) -> list[int]:
    """The versions the config's version_policy selects among those on disk (and `allowed`).

    Checks every numeric field's range first (limits.py): this is the first look at a declared config.
    """
    limits.check(config, f"model {model_dir.name!r}")
    available = [v for v in model_dir.versions() if allowed is None or v in allowed]
    if not available:
        raise ModelLoadError(f"model {model_dir.name!r}: no numeric version directories with a model in {model_dir.path}")
    policy = mcfg.version_policy(config)
    if policy.choice == "all":
        return available
    if policy.choice == "specific":
        wanted = list(policy.versions)
        missing = [v for v in wanted if v not in available]
        if missing:
            raise ModelLoadError(
                f"model {model_dir.name!r}: version_policy names versions {missing} that do not exist "
                f"(found {available})"
            )
        return wanted
    return available[-policy.count:]


def model_path(model_dir: ModelDir, version: int, declared: mcfg.ModelConfig) -> Path:
    """Where the model file would be, unchecked: for looking whether a version has one (the poller).

    Loading reads it only through `model_file`, which refuses a name that leads outside.
    """
    return model_dir.version_path(version) / (declared.default_model_filename or mcfg.DEFAULT_MODEL_FILENAME)


def model_file(model_dir: ModelDir, version: int, declared: mcfg.ModelConfig) -> Path:
    """The version's model file, resolved inside its version directory; ModelLoadError otherwise."""
    filename = declared.default_model_filename or mcfg.DEFAULT_MODEL_FILENAME
    where = f"model {model_dir.name!r} version {version}: default_model_filename"
    # Relative to the version directory itself: an upload's version is loaded from its staging place.
    path = inside(model_dir.version_path(version), filename, where, "version directory")
    if not path.is_file():
        raise ModelLoadError(f"{where} {quoted(filename)}: version directory {version} has no such file")
    return path


def fingerprint(model_dir: ModelDir, version: int, declared: mcfg.ModelConfig) -> VersionFingerprint:
    files = []
    version_dir = model_dir.version_path(version)
    for root, _, names in os.walk(version_dir):
        for name in sorted(names):
            path = Path(root) / name
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            files.append((str(path.relative_to(version_dir)), stat.st_size, stat.st_mtime_ns))
    # Model-level files that shape every version count too: the processing spec, and the label files
    # (read once at load), so a replaced one is picked up by the next load or poll.
    shared = ["processing.json", *sorted({o.label_filename for o in declared.output if o.label_filename})]
    for name in shared:
        try:
            stat = inside(model_dir.path, name, f"model {model_dir.name!r}: label_filename").stat()
        except (ModelLoadError, OSError):
            continue  # refused or absent: the load itself says why
        files.append((f"../{name}", stat.st_size, stat.st_mtime_ns))
    return VersionFingerprint(declared.SerializeToString(deterministic=True), tuple(sorted(files)))


def estimate_bytes(model_dir: ModelDir, version: int, declared: mcfg.ModelConfig) -> int:
    """Memory a loaded version is expected to take: its files (weights dominate) once per instance.

    ONNX Runtime keeps the initializers in memory per session, and graph optimisation can add
    pre-packed copies, so this is a floor, not a bound; the budget should leave headroom.
    """
    size = sum(entry[1] for entry in fingerprint(model_dir, version, declared).files)
    return size * mcfg.instance_count(declared)


def load_version(
    model_dir: ModelDir,
    version: int,
    declared: mcfg.ModelConfig,
    settings: Settings,
    observer: Observer,
) -> ServedModel:
    if mcfg.is_ensemble(declared):
        return _load_ensemble(model_dir, version, declared, settings, observer)
    path = model_file(model_dir, version, declared)
    signature = mcfg.read_graph_signature(path, model_dir.version_path(version), f"model {model_dir.name!r} version {version}")
    config = mcfg.complete_config(
        declared,
        model_dir.name,
        signature,
        settings.default_max_batch_size,
        auto_complete=not settings.disable_auto_complete_config,
    )
    backend = OnnxBackend(session_spec(config, path, settings))
    served: ServedModel | None = None
    try:
        mcfg.record_instance_groups(config, "cuda" if CUDA in backend.providers else "cpu")
        spec = mcfg.version_spec(config)  # the core takes plain values from here on
        # Label files are read once, here: classification and monitoring use these.
        labels = config_labels(model_dir.path, spec, model_dir.version_path(version))
        processing = load_processing(model_dir.path, model_dir.version_path(version), spec, labels)
        served = ServedModel(
            spec,
            version,
            backend,
            settings.default_max_queue_size,
            model_dir.path,
            observer=observer,
            processing=processing,
            inline_execution_us=settings.inline_execution_us,
            labels=labels,
            max_sequences=settings.max_sequences,
        )
        try:
            _warm_up(served, mcfg.warmups(config), model_dir.path)
        except Exception as exc:
            raise ModelLoadError(f"{served.label}: warm-up failed: {exc}") from None
    except BaseException:
        # A version that never served: its instance threads (if it got that far) and sessions go now.
        if served is not None:
            served.discard()
        else:
            backend.close()
        raise
    return served


def _load_ensemble(
    model_dir: ModelDir, version: int, declared: mcfg.ModelConfig, settings: Settings, observer: Observer
) -> ServedModel:
    """An ensemble version: its config and its step graph; no model file (the version directory is
    empty, as in Triton), no session. The registry checks the steps against the models they name."""
    config = mcfg.complete_ensemble_config(declared, model_dir.name)
    spec = mcfg.version_spec(config)
    graph = ensemble.build(spec, f"model {model_dir.name!r} version {version}")
    labels = config_labels(model_dir.path, spec, model_dir.version_path(version))
    return ServedModel(
        spec,
        version,
        ensemble.EnsembleBackend(graph),
        settings.default_max_queue_size,
        model_dir.path,
        observer=observer,
        labels=labels,
    )


def session_spec(config: mcfg.ModelConfig, path: Path, settings: Settings) -> SessionSpec:
    where = f"model {config.name!r}"
    place = mcfg.placement(config)
    if len(place.kinds) > 1:
        raise ModelLoadError(f"{where}: instance groups mixing KIND_GPU and KIND_CPU are not supported")
    # The model's own instance_group kind wins over the server-wide execution provider.
    wants_gpu = place.kinds == {"gpu"}
    wants_cpu = place.kinds == {"cpu"}
    if wants_gpu or (not wants_cpu and settings.execution_provider == "cuda"):
        if not cuda_available():
            raise ModelLoadError(
                f"{where}: asks for the GPU but ONNX Runtime has no CUDAExecutionProvider here "
                "(install onnxruntime-gpu with CUDA, or use KIND_CPU / --execution-provider cpu)"
            )
        device = "cuda"
    elif wants_cpu or settings.execution_provider == "cpu":
        device = "cpu"
    else:
        # onnxruntime-gpu lists CUDA even where no GPU is usable; the session start tells.
        device = "auto" if cuda_available() else "cpu"
    gpus = place.gpus or (settings.gpu_device_id,)
    instances = place.instances
    for accelerator in place.accelerators:
        raise ModelLoadError(f"{where}: execution accelerator {accelerator!r} is not supported")
    level = settings.graph_optimization_level
    if place.graph_level is not None:
        level = _GRAPH_LEVEL_BY_TRITON_VALUE.get(place.graph_level, "all")
    return SessionSpec(
        model_path=path,
        device=device,
        gpu_ids=gpus,
        instance_count=instances,
        intra_op_threads=_int_parameter(where, place, "intra_op_thread_count")
        or settings.intra_op_threads
        or default_intra_op_threads(instances),
        inter_op_threads=_int_parameter(where, place, "inter_op_thread_count") or settings.inter_op_threads,
        allow_spinning=settings.allow_spinning,
        graph_optimization_level=level,
        cuda_tf32=settings.cuda_tf32,
    )


def _int_parameter(where: str, place: mcfg.Placement, key: str) -> int:
    if key not in place.parameters:
        return 0
    text = place.parameters[key]
    try:
        return int(text)
    except ValueError:
        raise ModelLoadError(f"{where}: parameter {key} must be an integer, got {text!r}") from None


def _warm_up(served: ServedModel, warmups: list[mcfg.Warmup], model_dir: Path) -> None:
    rng = np.random.default_rng(0)
    for warmup in warmups:
        inputs = {}
        batch = (max(1, warmup.batch_size),) if served.max_batch_size > 0 else ()
        for spec in warmup.inputs:
            if spec.datatype not in DATATYPE_TO_NUMPY:
                raise InvalidInput(f"warm-up {warmup.name!r}: input {spec.name!r} has unsupported data_type")
            dtype = DATATYPE_TO_NUMPY[spec.datatype]
            shape = batch + spec.dims
            if spec.source == "input_data_file":
                one = _warm_up_sample(model_dir, warmup.name, spec, dtype)
                inputs[spec.name] = np.broadcast_to(one, shape).copy()
            elif dtype == object:
                inputs[spec.name] = np.full(shape, "", dtype=object)
            elif spec.source == "random_data":
                inputs[spec.name] = (rng.random(shape) * 10).astype(dtype)
            else:
                inputs[spec.name] = np.zeros(shape, dtype=dtype)
        for _ in range(max(1, warmup.count)):
            served.run_sync(inputs)


def _warm_up_sample(model_dir: Path, warmup: str, spec: mcfg.WarmupInput, dtype: np.dtype[Any]) -> Array:
    """One warm-up sample from `<model>/warmup/<input_data_file>`: inside the model's directory, and exactly
    the bytes its dims and data_type need (a larger file is not read)."""
    what = f"model_warmup {quoted(warmup)}: input {quoted(spec.name)}: input_data_file"
    # Two steps, so the warmup folder may not lead outside either, and the message quotes only the given name.
    folder = inside(model_dir, "warmup", what)
    path = inside(folder, spec.data_file, what, "model's warmup directory")
    if dtype == object:
        raise ModelLoadError(f"{what}: BYTES samples from a file are not supported; use zero_data")
    return array_from_file(path, dtype, spec.dims, what, spec.data_file, "model's warmup directory")
