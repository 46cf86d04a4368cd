"""Server settings: one dataclass, filled from defaults < config file < environment < command line.

Every field is a flag (`--http-port`), an environment variable (`MODEL_RUNTIME_HTTP_PORT`) and a
config-file key (`http_port` in a TOML file given by `--config-file`). Imports nothing from runtime.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

ENV_PREFIX = "MODEL_RUNTIME_"

# Caps shared with the model config's limits (runtime/repository/limits.py reads them from here,
# since this module imports nothing from runtime).
MAX_BATCH_SIZE = 1 << 20
MAX_QUEUE_SIZE = 1 << 20
MAX_SEQUENCES = 1 << 20  # live sequences of one version: each holds its state and a table entry
MAX_GPU_ID = 63
MAX_CACHE_BYTES = 1 << 40  # --cache-config local,size=BYTES
MAX_WORKERS = 64
# --workers auto (0) runs at most this many processes in all: beyond it the one engine process,
# not the front ends, is what limits throughput.
AUTO_WORKERS_CORES = 8


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def worker_count(settings: Settings) -> int:
    """Front-end processes --workers asks for: 0 (auto) is min(cores, 8) - 1, at least 1."""
    if settings.workers > 0:
        return settings.workers
    return max(1, min(available_cores(), AUTO_WORKERS_CORES) - 1)


GraphOptimizationLevel = Literal["disable", "basic", "extended", "all"]
ExecutionProvider = Literal["auto", "cuda", "cpu"]
LogFormat = Literal["text", "json"]
ModelControlMode = Literal["none", "explicit", "poll"]


def _doc(text: str, **kwargs: Any) -> Any:
    return field(metadata={"doc": text}, **kwargs)


@dataclass
class Settings:
    model_repository: Path | None = _doc(
        "Model repository (Triton layout REPO/<model>/<version>/model.onnx). "
        "Unset: serve the built-in examples, written to --example-repository.",
        default=None,
    )
    example_repository: Path = _doc(
        "Where the built-in example models are written when no repository is given.",
        default=Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "model-runtime" / "examples",
    )
    http_address: str = _doc("Address the HTTP server binds.", default="0.0.0.0")
    http_port: int = _doc("HTTP port (0 picks a free one).", default=8000)
    grpc_address: str = _doc("Address the gRPC server binds.", default="0.0.0.0")
    grpc_port: int = _doc("gRPC port (0 picks a free one).", default=8001)
    metrics_address: str = _doc("Address the Prometheus metrics server binds.", default="0.0.0.0")
    metrics_port: int = _doc("Prometheus metrics port (0 picks a free one).", default=8002)
    allow_http: bool = _doc("Serve the HTTP/REST endpoint.", default=True)
    allow_grpc: bool = _doc("Serve the gRPC endpoint.", default=True)
    allow_metrics: bool = _doc("Serve Prometheus metrics.", default=True)
    allow_client_shm: bool = _doc(
        "Let clients register system and CUDA shared-memory regions (Triton's flag): the server then maps "
        "any shared-memory object a client names that this process can open. Off: register is refused.",
        default=False,
    )
    shm_io_binding: bool = _doc(
        "Tensors in system shared memory go by pointer through ONNX Runtime's IO binding (outputs written "
        "straight into the client's region) instead of as numpy views of the mapping. Measured slower on "
        "CPU (bench/RESULTS.md), so off; CUDA regions always go by pointer.",
        default=False,
    )
    ports_file: Path | None = _doc(
        "Once serving, write the bound ports as JSON here ({\"http\": N, \"grpc\": N, \"metrics\": N}).",
        default=None,
    )
    max_request_bytes: int = _doc(
        "Largest request body (HTTP) or message (gRPC) accepted, in bytes.", default=64 * 1024 * 1024
    )
    execution_provider: ExecutionProvider = _doc(
        "ONNX Runtime execution provider: auto (CUDA when available, else CPU), cuda or cpu. "
        "A model's instance_group kind KIND_GPU/KIND_CPU overrides it.",
        default="auto",
    )
    gpu_device_id: int = _doc("CUDA device used when a model's instance_group names no gpus.", default=0)
    cuda_tf32: bool = _doc(
        "Let CUDA run float32 matrix products and convolutions on TF32 tensor cores (Ampere and newer): "
        "faster for large layers, about 1e-4 to 1e-3 relative error. Off, float32 results match the CPU's "
        "to rounding.",
        default=False,
    )
    intra_op_threads: int = _doc(
        "ONNX Runtime intra-op threads per model instance; 0 sizes it from the cores present "
        "(cores // 2 // instances, at least 1, leaving room for the event loop).",
        default=0,
    )
    inter_op_threads: int = _doc("ONNX Runtime inter-op threads per instance (sequential mode uses 1).", default=1)
    inline_execution_us: float = _doc(
        "Run a model on the event loop itself, instead of its instance thread, while its measured "
        "execution time averages under this many microseconds: for tiny models the hand-over costs "
        "more than the work. 0 never does.",
        default=100.0,
    )
    allow_spinning: bool = _doc(
        "Let ONNX Runtime worker threads spin while idle (lower latency, burns CPU the event loop needs).",
        default=False,
    )
    graph_optimization_level: GraphOptimizationLevel = _doc(
        "ONNX Runtime graph optimisation level unless a model's config sets optimization.graph.level.",
        default="all",
    )
    default_max_batch_size: int = _doc(
        "max_batch_size given to models whose config is auto-completed and whose ONNX graph has a batch dim.",
        default=4,
    )
    disable_auto_complete_config: bool = _doc(
        "Require a complete config.pbtxt instead of completing it from the ONNX model.", default=False
    )
    default_max_queue_size: int = _doc(
        "Queue bound (requests) for models whose config sets no max_queue_size: overload is "
        "rejected at once with 503 / UNAVAILABLE instead of growing memory.",
        default=1024,
    )
    cache_config: str | None = _doc(
        "Triton's --cache-config: local,size=BYTES gives the response cache that budget (LRU) for the "
        "models whose config says response_cache { enable: true }; unset: no cache. size 1 to 2^40.",
        default=None,
    )
    max_sequences: int = _doc(
        "Live sequences per version of a sequence-batching model (started, not yet ended or idle-released, "
        "slot holders and backlog together): a start past it is refused with 503 / RESOURCE_EXHAUSTED.",
        default=1024,
    )
    model_control_mode: ModelControlMode = _doc(
        "none: load every model at start; explicit: load --load-model models, then the admin API; "
        "poll: rescan the repository every --repository-poll-secs.",
        default="none",
    )
    load_model: list[str] = _doc(
        "Model to load at start in explicit mode (repeatable; '*' loads all).", default_factory=list
    )
    repository_poll_secs: float = _doc("Seconds between repository scans in poll mode.", default=15.0)
    repository_poll_quiet_secs: float = _doc(
        "Poll mode loads a version only once none of its files changed for this many seconds "
        "(and they look the same in two consecutive scans): a writer pausing for less mid-file is never loaded.",
        default=10.0,
    )
    exit_timeout_secs: float = _doc(
        "Grace period on SIGTERM/SIGINT to drain queued and running requests.", default=30.0
    )
    http_keep_alive_timeout_secs: float = _doc("Idle keep-alive HTTP connections are closed after this.", default=15.0)
    tls_cert_file: Path | None = _doc("PEM certificate: serve HTTP and gRPC over TLS.", default=None)
    tls_key_file: Path | None = _doc("PEM private key of --tls-cert-file.", default=None)
    tls_client_ca_file: Path | None = _doc(
        "PEM CA bundle: require client certificates signed by it (mutual TLS).", default=None
    )
    admin_address: str = _doc("Address of the separate admin port.", default="127.0.0.1")
    admin_port: int | None = _doc(
        "Serve the repository (admin) API on this separate HTTP port only, not on the public ports. "
        "Unset: the admin API is on the HTTP and gRPC ports.",
        default=None,
    )
    admin_token: str | None = _doc(
        "Bearer token the admin API requires (HTTP 'Authorization: Bearer <token>', gRPC metadata "
        "'authorization'). Unset: no token is required.",
        default=None,
    )
    model_memory_budget_bytes: int = _doc(
        "Refuse to load a model version when the estimated memory of all loaded versions would exceed "
        "this many bytes (0: no budget).",
        default=0,
    )
    http_max_connections: int = _doc(
        "Most concurrent HTTP connections; beyond it new ones are answered 503.", default=4096
    )
    grpc_max_concurrent_rpcs: int = _doc(
        "Most gRPC calls in progress at once; beyond it a new call is answered RESOURCE_EXHAUSTED at once.",
        default=4096,
    )
    grpc_max_streams_per_connection: int = _doc(
        "HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: the most calls one gRPC connection may hold open.",
        default=1024,
    )
    grpc_stream_idle_timeout_secs: float = _doc(
        "A ModelStreamInfer stream with nothing pending and no request for this long is ended "
        "(DEADLINE_EXCEEDED).",
        default=300.0,
    )
    http_header_timeout_secs: float = _doc(
        "A client must send a request's headers and body within this many seconds (slow clients are cut off).",
        default=30.0,
    )
    metrics_latency_buckets: list[str] = _doc(
        "Histogram bucket bounds in seconds for latency metrics (comma-separated).",
        default_factory=lambda: [
            "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
            "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
        ],
    )
    metrics_detail: Literal["full", "basic", "off"] = _doc(
        "full: every metric incl. prediction distribution and drift; basic: request, latency and batch "
        "metrics only; off: record nothing (the endpoint still serves process metrics).",
        default="full",
    )
    drift_window: int = _doc("Predictions kept in the sliding window behind each drift score.", default=1000)
    request_log_sample_rate: float = _doc(
        "Fraction of requests logged (one line each, JSON with --log-format json); 0 logs none.", default=0.0
    )
    workers: int = _doc(
        "Front-end processes (HTTP and gRPC decode/encode) feeding one engine process (models, batch "
        "queues, metrics port) through shared memory. 1: everything in this one process, as without the "
        "flag. 0 or 'auto': min(cores, 8) - 1, at least 1 (one core left to the engine).",
        default=1,
    )
    worker_slab_bytes: int = _doc(
        "With --workers above 1: bytes of each front end's two shared-memory slabs (requests in, "
        "responses out). A request whose tensors do not fit in what is free is answered 503 / UNAVAILABLE.",
        default=64 * 1024 * 1024,
    )
    event_loop: Literal["auto", "uvloop", "asyncio"] = _doc(
        "Event loop implementation: auto uses uvloop where installed.", default="auto"
    )
    trace_otlp_endpoint: str | None = _doc(
        "Export OpenTelemetry traces of sampled requests over OTLP to this endpoint: host:port or "
        "http[s]://host:port for gRPC (the collector's 4317), http[s]://host:port[/v1/traces] with "
        "--trace-otlp-protocol http (4318). Unset: no tracing, and no cost on the request path.",
        default=None,
    )
    trace_otlp_protocol: Literal["grpc", "http"] = _doc("OTLP transport of --trace-otlp-endpoint.", default="grpc")
    trace_rate: int = _doc(
        "Trace one request in every N (Triton's trace_rate; 1 traces all). A request carrying a W3C "
        "traceparent follows its caller's sampled flag instead.",
        default=1000,
    )
    trace_level: Literal["timestamps", "off"] = _doc(
        "With --trace-otlp-endpoint: timestamps traces from the start, off waits for the trace extension "
        "(POST /v2/trace/setting) to turn it on.",
        default="timestamps",
    )
    log_level: Literal["debug", "info", "warning", "error"] = _doc("Log level.", default="info")
    log_format: LogFormat = _doc("Log line format: text, or one JSON object per line.", default="text")

    def __post_init__(self) -> None:
        check_ranges(self)

    @property
    def repository(self) -> Path:
        return self.model_repository if self.model_repository is not None else self.example_repository


@dataclass(frozen=True, slots=True)
class Range:
    """The values a numeric setting may take, low..high inclusive; `low_open`: low itself is refused."""

    low: float
    high: float
    low_open: bool = False

    def allows(self, value: float) -> bool:
        # Written so that NaN fails every comparison and is refused.
        above_low = value > self.low if self.low_open else value >= self.low
        return bool(above_low and value <= self.high)

    def describe(self) -> str:
        low = f"{_number(self.low)} (exclusive)" if self.low_open else _number(self.low)
        return f"between {low} and {_number(self.high)}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


_PORT = Range(0, 65535)
_HOUR = 3600.0
_DAY = 86400.0


def setting_ranges() -> dict[str, Range]:
    """Every numeric setting's range (README, "Limits"); a function because thread caps follow the cores."""
    cores = available_cores()
    return {
        "http_port": _PORT,
        "grpc_port": _PORT,
        "metrics_port": _PORT,
        "admin_port": _PORT,
        # gRPC's message size is an int32; larger would wrap.
        "max_request_bytes": Range(1024, 2**31 - 1),
        "gpu_device_id": Range(0, MAX_GPU_ID),
        # Threads beyond the cores only contend; 0 lets the server size them.
        "intra_op_threads": Range(0, cores),
        "inter_op_threads": Range(0, cores),
        "inline_execution_us": Range(0, 1_000_000),
        "default_max_batch_size": Range(0, MAX_BATCH_SIZE),
        "default_max_queue_size": Range(1, MAX_QUEUE_SIZE),
        "max_sequences": Range(1, MAX_SEQUENCES),
        "repository_poll_secs": Range(0, _DAY, low_open=True),
        "repository_poll_quiet_secs": Range(0, _DAY),
        "exit_timeout_secs": Range(0, _HOUR),
        "http_keep_alive_timeout_secs": Range(0, _HOUR, low_open=True),
        "model_memory_budget_bytes": Range(0, 2**62),
        "http_max_connections": Range(1, 1_000_000),
        "grpc_max_concurrent_rpcs": Range(1, 1_000_000),
        # HTTP/2 caps SETTINGS_MAX_CONCURRENT_STREAMS at 2**31 - 1.
        "grpc_max_streams_per_connection": Range(1, 2**31 - 1),
        "grpc_stream_idle_timeout_secs": Range(0, _DAY, low_open=True),
        "http_header_timeout_secs": Range(0, _HOUR, low_open=True),
        "drift_window": Range(1, 1_000_000),
        "request_log_sample_rate": Range(0, 1),
        "trace_rate": Range(1, 2**31 - 1),
        "workers": Range(0, MAX_WORKERS),
        "worker_slab_bytes": Range(1024 * 1024, 2**40),
    }


def check_ranges(settings: Settings) -> None:
    """ValueError naming the setting, its value and its range for the first number out of range."""
    cache_size_bytes(settings.cache_config)
    for name, allowed in setting_ranges().items():
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not allowed.allows(value):
            raise ValueError(f"{name}: {value!r} is out of range; it must be {allowed.describe()}")
    bounds: list[float] = []
    texts = [part.strip() for item in settings.metrics_latency_buckets for part in str(item).split(",") if part.strip()]
    for text in texts:
        try:
            bound = float(text)
        except ValueError:
            raise ValueError(f"metrics_latency_buckets: {text!r} is not a number") from None
        if not 0 < bound <= _DAY:
            raise ValueError(
                f"metrics_latency_buckets: {text!r} is out of range; each bound must be between 0 (exclusive) and 86400"
            )
        if bounds and bound <= bounds[-1]:
            raise ValueError(f"metrics_latency_buckets: {text!r} is not above the bound before it; bounds must increase")
        bounds.append(bound)


def cache_size_bytes(text: str | None) -> int:
    """The byte budget of Triton's `--cache-config local,size=BYTES` (None: 0, no cache); ValueError
    naming the setting for anything else (`local` is the one cache this server has)."""
    if text is None:
        return 0
    name, _, rest = text.strip().partition(",")
    options = dict(part.strip().partition("=")[::2] for part in rest.split(",") if part.strip())
    if name.strip().lower() != "local" or set(options) != {"size"}:
        raise ValueError(f"cache_config: {text!r} is not local,size=BYTES (the one cache this server has)")
    try:
        size = int(options["size"])
    except ValueError:
        raise ValueError(f"cache_config: size {options['size']!r} is not an integer number of bytes") from None
    if not 1 <= size <= MAX_CACHE_BYTES:
        raise ValueError(f"cache_config: size {size} is out of range; it must be between 1 and {MAX_CACHE_BYTES}")
    return size


def setting_fields() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(Settings))


def field_types() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def coerce(name: str, raw: Any) -> Any:
    """Convert a raw value (string from env/argv, or TOML value) to the field's type."""
    hint = field_types()[name]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if raw not in args:
            raise ValueError(f"{name}: {raw!r} is not one of {', '.join(map(str, args))}")
        return raw
    if origin is list:
        items = raw if isinstance(raw, list) else [s for s in str(raw).split(",") if s]
        return [str(item) for item in items]
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if raw is None:
        return None
    if name == "workers" and str(raw).strip().lower() == "auto":
        return 0
    if base is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: {raw!r} is not a boolean")
    if base is Path:
        return Path(str(raw)).expanduser()
    try:
        return base(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: {raw!r} is not a valid {getattr(base, '__name__', base)}") from None


def from_sources(
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Settings with precedence command line > environment > config file > defaults."""
    names = {f.name for f in setting_fields()}
    values: dict[str, Any] = {}
    if config_file is not None:
        with open(config_file, "rb") as handle:
            for key, raw in tomllib.load(handle).items():
                name = key.replace("-", "_")
                if name not in names:
                    raise ValueError(f"config file {config_file}: unknown key {key!r}")
                values[name] = coerce(name, raw)
    environ = os.environ if environ is None else environ
    for name in names:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = coerce(name, raw)
    for name, raw in (cli or {}).items():
        if raw is not None:
            values[name] = coerce(name, raw)
    return Settings(**values)


def settings_to_json(settings: Settings) -> str:
    """The settings as one JSON object (paths as strings): how the supervisor hands them to its children."""
    values = {
        name: str(value) if isinstance(value, Path) else value
        for name, value in dataclasses.asdict(settings).items()
    }
    return json.dumps(values)


def settings_from_json(text: str) -> Settings:
    """The inverse of settings_to_json (every value coerced and range-checked again)."""
    names = {f.name for f in setting_fields()}
    values = json.loads(text)
    if not isinstance(values, dict) or set(values) - names:
        raise ValueError(f"settings JSON: unknown keys {sorted(set(values) - names) if isinstance(values, dict) else values!r}")
    return Settings(**{name: coerce(name, raw) for name, raw in values.items()})
