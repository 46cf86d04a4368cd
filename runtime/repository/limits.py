"""The range of every numeric field of a model config, checked before anything is loaded.

A config can come from an admin override, so its numbers are client input: an instance count
becomes OS threads and ONNX Runtime sessions, a delay becomes a timer every request waits on, a
level count becomes a loop. Each field below has a documented range (README, "Limits"); a value
outside it is a ModelLoadError (400 / INVALID_ARGUMENT) naming the model, the field, the value and
the range. Caps that follow the machine (instances, threads) are computed from its cores.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

from google.protobuf.message import Message

from runtime.config import MAX_BATCH_SIZE, MAX_GPU_ID, MAX_QUEUE_SIZE, MAX_SEQUENCES, available_cores
from runtime.errors import ModelLoadError, quoted
from runtime._pb import model_config_pb2 as mc

__all__ = ["LIMITS", "Limit", "check", "limits"]

MAX_DIM = 2**31 - 1
MAX_RANK = 64  # numpy's NPY_MAXDIMS, as runtime.tensors.MAX_DIMS
MAX_DELAY_US = 10_000_000  # 10 s: a batching window longer than that is a mistake, not a tuning
MAX_TIMEOUT_US = 3_600_000_000  # 1 h in the queue
MAX_PRIORITY_LEVELS = 64
MAX_WARMUP_COUNT = 1000
MAX_WARMUP_ELEMENTS = 1 << 27  # per warm-up input, batch included (512 MiB of FP32)
MAX_VERSIONS = 64  # versions loaded at once by one policy (each holds every instance's session)
MAX_STATES = 64  # implicit states of one sequence model
MAX_STATE_ELEMENTS = 1 << 22  # one sequence's initial state (16 MiB of FP32); every live sequence holds one
WILDCARD = -1
MAX_ENSEMBLE_STEPS = 256  # steps of one ensemble: each is a request to its model, per ensemble request


def max_instances() -> int:
    """Instances of one model version: each is an OS thread and an ONNX Runtime session."""
    return min(64, max(8, 4 * available_cores()))


@dataclass(frozen=True, slots=True)
class Limit:
    """One field's range, low..high inclusive; `choices`: only these values (Triton's enumerations)."""

    field: str
    low: int
    high: int
    why: str
    choices: tuple[int, ...] = ()
    wildcard: bool = False  # -1 (a variable-size dim) is allowed besides low..high

    def allows(self, value: int) -> bool:
        if self.choices:
            return value in self.choices
        if self.wildcard and value == WILDCARD:
            return True
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        span = f"between {self.low} and {self.high}"
        return f"-1 or {span}" if self.wildcard else span


def limits() -> dict[str, Limit]:
    """The table, keyed by field as README writes it; the caps that follow the cores are read now."""
    cores = available_cores()
    rows = (
        Limit("max_batch_size", 0, MAX_BATCH_SIZE, "rows in one batch; 0 disables batching"),
        Limit("instance_group.count", 0, max_instances(), "instances over all groups (0 means 1); "
              "each is a thread and a session"),
        Limit("instance_group.gpus", 0, MAX_GPU_ID, "CUDA device ids"),
        Limit("parameters.intra_op_thread_count", 0, cores, "threads per instance, at most the cores; 0: server default"),
        Limit("parameters.inter_op_thread_count", 0, cores, "threads per instance, at most the cores; 0: server default"),
        Limit("dims", 1, MAX_DIM, "extent of one dimension", wildcard=True),
        Limit("dims.count", 0, MAX_RANK, "dimensions of one tensor"),
        Limit("version_policy.latest.num_versions", 0, MAX_VERSIONS, "versions served at once (0 means 1)"),
        Limit("version_policy.specific.versions", 1, 2**63 - 1, "version numbers"),
        Limit("version_policy.specific.versions.count", 1, MAX_VERSIONS, "versions served at once"),
        Limit("optimization.graph.level", -1, 1, "Triton's ONNX Runtime levels: -1 basic, 0 all, 1 extended",
              choices=(-1, 0, 1)),
        Limit("dynamic_batching.preferred_batch_size", 1, MAX_BATCH_SIZE, "rows; at most max_batch_size"),
        Limit("dynamic_batching.max_queue_delay_microseconds", 0, MAX_DELAY_US, "the batching window (10 s)"),
        Limit("dynamic_batching.priority_levels", 0, MAX_PRIORITY_LEVELS, "0: no priorities"),
        Limit("dynamic_batching.default_priority_level", 0, MAX_PRIORITY_LEVELS, "at most priority_levels"),
        Limit("dynamic_batching.priority_queue_policy.key", 1, MAX_PRIORITY_LEVELS, "a level in 1..priority_levels"),
        Limit("queue_policy.default_timeout_microseconds", 0, MAX_TIMEOUT_US, "time in the queue (1 h); 0: none"),
        Limit("queue_policy.max_queue_size", 0, MAX_QUEUE_SIZE, "requests; 0: the server's default"),
        Limit("ensemble_scheduling.step.count", 1, MAX_ENSEMBLE_STEPS, "steps of one ensemble, each a request to its model"),
        Limit("ensemble_scheduling.step.model_version", 0, 2**63 - 1,
              "-1 or 0: the version the model routes to; else that version", wildcard=True),
        Limit("sequence_batching.max_sequence_idle_microseconds", 0, MAX_TIMEOUT_US,
              "idle time before a sequence is released (1 h); 0: Triton's default, 1 s"),
        Limit("sequence_batching.max_queue_delay_microseconds", 0, MAX_DELAY_US,
              "direct and oldest: the batching window (10 s)"),
        Limit("sequence_batching.direct.minimum_slot_utilization", 0, 1,
              "fraction of an instance's slots ready before the window ends (a float)"),
        Limit("sequence_batching.oldest.max_candidate_sequences", 0, MAX_SEQUENCES,
              "sequences batched from at once; 0: max_batch_size"),
        Limit("sequence_batching.oldest.preferred_batch_size", 1, MAX_BATCH_SIZE, "rows; at most max_batch_size"),
        Limit("sequence_batching.state.count", 0, MAX_STATES, "implicit states"),
        Limit("sequence_batching.state.initial_state.elements", 1, MAX_STATE_ELEMENTS,
              "elements of one initial state, held by every live sequence"),
        Limit("model_warmup.batch_size", 0, MAX_BATCH_SIZE, "rows; at most max_batch_size (1 without batching)"),
        Limit("model_warmup.count", 0, MAX_WARMUP_COUNT, "runs of the sample (0 means 1)"),
        Limit("model_warmup.inputs.dims", 1, MAX_DIM, "a warm-up sample has a concrete shape"),
        Limit("model_warmup.inputs.elements", 1, MAX_WARMUP_ELEMENTS, "elements of one sample, batch included"),
    )
    return {row.field: row for row in rows}


LIMITS = limits()


def check(config: mc.ModelConfig, where: str) -> None:
    """ModelLoadError for the first field out of range, or an enumeration value Triton does not define."""
    table = limits()
    _Checker(table, where).run(config)


class _Checker:
    def __init__(self, table: dict[str, Limit], where: str) -> None:
        self.table = table
        self.where = where

    def within(self, key: str, label: str, value: int, high: int | None = None) -> None:
        limit = self.table[key] if high is None else replace(self.table[key], high=high)
        if not limit.allows(int(value)):
            raise ModelLoadError(
                f"{self.where}: {label} is {value}; it must be {limit.describe()} ({limit.why})"
            )

    def run(self, config: mc.ModelConfig) -> None:
        _check_enums(config, self.where, "")
        self.within("max_batch_size", "max_batch_size", config.max_batch_size)
        batch_cap = config.max_batch_size if config.max_batch_size > 0 else MAX_BATCH_SIZE
        total = 0
        for i, group in enumerate(config.instance_group):
            self.within("instance_group.count", f"instance_group[{i}].count", group.count)
            total += group.count or 1
            for j, gpu in enumerate(group.gpus):
                self.within("instance_group.gpus", f"instance_group[{i}].gpus[{j}]", gpu)
        if config.instance_group:
            self.within("instance_group.count", "instance_group count (all groups together)", total)
        for key in ("intra_op_thread_count", "inter_op_thread_count"):
            if key in config.parameters:
                text = config.parameters[key].string_value
                try:
                    threads = int(text.strip())
                except ValueError:
                    raise ModelLoadError(
                        f"{self.where}: parameters.{key} must be an integer, got {quoted(text)}"
                    ) from None
                self.within(f"parameters.{key}", f"parameters.{key}", threads)
        for kind, tensors in (("input", config.input), ("output", config.output)):
            for tensor in tensors:
                label = f"{kind} {quoted(tensor.name)}"
                self.dims(f"{label} dims", tensor.dims)
                if tensor.HasField("reshape"):
                    self.dims(f"{label} reshape.shape", tensor.reshape.shape)
        self.versions(config.version_policy)
        if config.optimization.HasField("graph"):
            self.within("optimization.graph.level", "optimization.graph.level", config.optimization.graph.level)
        if config.HasField("dynamic_batching"):
            self.batching(config.dynamic_batching, batch_cap)
        if config.HasField("sequence_batching"):
            self.sequences(config.sequence_batching, batch_cap)
        if config.HasField("ensemble_scheduling"):
            steps = config.ensemble_scheduling.step
            self.within("ensemble_scheduling.step.count", "ensemble_scheduling step count", len(steps))
            for i, step in enumerate(steps):
                self.within("ensemble_scheduling.step.model_version", f"ensemble_scheduling.step[{i}].model_version",
                            step.model_version)
        self.warmups(config, batch_cap)

    def dims(self, label: str, dims: Iterable[int]) -> None:
        values = list(dims)
        self.within("dims.count", f"{label} count", len(values))
        for position, dim in enumerate(values):
            self.within("dims", f"{label}[{position}]", dim)

    def versions(self, policy: mc.ModelVersionPolicy) -> None:
        choice = policy.WhichOneof("policy_choice")
        if choice == "latest":
            self.within("version_policy.latest.num_versions", "version_policy.latest.num_versions",
                        policy.latest.num_versions)
        elif choice == "specific":
            versions = list(policy.specific.versions)
            self.within("version_policy.specific.versions.count", "version_policy.specific.versions count",
                        len(versions))
            for i, version in enumerate(versions):
                self.within("version_policy.specific.versions", f"version_policy.specific.versions[{i}]", version)

    def batching(self, batching: mc.ModelDynamicBatching, batch_cap: int) -> None:
        for i, size in enumerate(batching.preferred_batch_size):
            self.within("dynamic_batching.preferred_batch_size", f"dynamic_batching.preferred_batch_size[{i}]",
                        size, high=batch_cap)
        self.within("dynamic_batching.max_queue_delay_microseconds", "dynamic_batching.max_queue_delay_microseconds",
                    batching.max_queue_delay_microseconds)
        self.within("dynamic_batching.priority_levels", "dynamic_batching.priority_levels", batching.priority_levels)
        levels = int(batching.priority_levels)
        self.within("dynamic_batching.default_priority_level", "dynamic_batching.default_priority_level",
                    batching.default_priority_level, high=levels)
        self.queue_policy("dynamic_batching.default_queue_policy", batching.default_queue_policy)
        for level in sorted(batching.priority_queue_policy):
            self.within("dynamic_batching.priority_queue_policy.key", "dynamic_batching.priority_queue_policy key",
                        level, high=levels)
            self.queue_policy(f"dynamic_batching.priority_queue_policy[{level}]", batching.priority_queue_policy[level])

    def sequences(self, block: mc.ModelSequenceBatching, batch_cap: int) -> None:
        label = "sequence_batching"
        self.within(f"{label}.max_sequence_idle_microseconds", f"{label}.max_sequence_idle_microseconds",
                    block.max_sequence_idle_microseconds)
        delay = f"{label}.max_queue_delay_microseconds"
        self.within(delay, f"{label}.direct.max_queue_delay_microseconds", block.direct.max_queue_delay_microseconds)
        self.within(delay, f"{label}.oldest.max_queue_delay_microseconds", block.oldest.max_queue_delay_microseconds)
        utilization = float(block.direct.minimum_slot_utilization)
        if not 0.0 <= utilization <= 1.0:  # a float: Limit.allows takes integers
            limit = self.table[f"{label}.direct.minimum_slot_utilization"]
            raise ModelLoadError(
                f"{self.where}: {limit.field} is {utilization:g}; it must be {limit.describe()} ({limit.why})"
            )
        self.within(f"{label}.oldest.max_candidate_sequences", f"{label}.oldest.max_candidate_sequences",
                    block.oldest.max_candidate_sequences)
        for i, size in enumerate(block.oldest.preferred_batch_size):
            self.within(f"{label}.oldest.preferred_batch_size", f"{label}.oldest.preferred_batch_size[{i}]",
                        size, high=batch_cap)
        self.within(f"{label}.state.count", f"{label}.state count", len(block.state))
        for i, state in enumerate(block.state):
            self.dims(f"{label}.state[{i}] dims", state.dims)
            for j, initial in enumerate(state.initial_state):
                where = f"{label}.state[{i}].initial_state[{j}]"
                self.dims(f"{where} dims", initial.dims)
                elements = 1
                for dim in initial.dims:
                    elements *= max(1, int(dim))
                self.within(f"{label}.state.initial_state.elements", f"{where} elements", elements)

    def queue_policy(self, label: str, policy: mc.ModelQueuePolicy) -> None:
        self.within("queue_policy.default_timeout_microseconds", f"{label}.default_timeout_microseconds",
                    policy.default_timeout_microseconds)
        self.within("queue_policy.max_queue_size", f"{label}.max_queue_size", policy.max_queue_size)

    def warmups(self, config: mc.ModelConfig, batch_cap: int) -> None:
        warm_cap = config.max_batch_size if config.max_batch_size > 0 else 1
        for i, warmup in enumerate(config.model_warmup):
            label = f"model_warmup[{i}]"
            self.within("model_warmup.batch_size", f"{label}.batch_size", warmup.batch_size, high=warm_cap)
            self.within("model_warmup.count", f"{label}.count", warmup.count)
            rows = max(1, warmup.batch_size) if config.max_batch_size > 0 else 1
            for name in sorted(warmup.inputs):
                spec = warmup.inputs[name]
                where = f"{label}.inputs[{quoted(name)}].dims"
                self.within("dims.count", f"{where} count", len(spec.dims))
                elements = rows
                for position, dim in enumerate(spec.dims):
                    self.within("model_warmup.inputs.dims", f"{where}[{position}]", dim)
                    elements *= int(dim)
                self.within("model_warmup.inputs.elements", f"{label}.inputs[{quoted(name)}] elements", elements)


def _check_enums(message: Message, where: str, prefix: str) -> None:
    """proto3 enums are open: text and JSON parsing keep numbers no value names (`kind: 7`)."""
    for field, value in message.ListFields():
        label = f"{prefix}{field.name}"
        if field.enum_type is not None:
            values = value if field.is_repeated else [value]
            for number in values:
                if number not in field.enum_type.values_by_number:
                    known = ", ".join(v.name for v in field.enum_type.values)
                    raise ModelLoadError(f"{where}: {label} is {number}; it must be one of {known}")
        elif field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.message_type is not None:
                    for key in value:
                        _check_enums(value[key], where, f"{label}[{quoted(key)}].")
            elif field.is_repeated:
                for i, item in enumerate(value):
                    _check_enums(item, where, f"{label}[{i}].")
            else:
                _check_enums(value, where, f"{label}.")
