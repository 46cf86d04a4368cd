"""Triton's sequence batcher for one model version: the sequence table, its two strategies, idle release.

Every request names a sequence (runtime.sequence.request). A start opens the sequence in the table
(bounded by --max-sequences); its requests then queue in the sequence's own FIFO and execute in
order, one at a time: the next one becomes ready only when the previous one has answered, because
it takes the state that one produced. Ready requests of several sequences are batched:

- `direct`: each sequence holds one batch slot of one instance for its life (max_batch_size slots per
  instance; more sequences wait in a backlog for a free slot). An instance runs the ready requests of
  its slots; with minimum_slot_utilization set, it waits up to max_queue_delay for that share of its
  slots to be ready.
- `oldest`: up to max_candidate_sequences sequences are candidates (more wait in a backlog); a batch
  is the oldest ready requests across candidates, on any free instance, formed with the dynamic
  batcher's rule (max_batch_size, preferred_batch_size, max_queue_delay).

Rows are only ready requests: READY is always true and no slot is padded (the backend is stateless;
what a sequence carries is its implicit state, kept here). A sequence with no queued or running
request is released after max_sequence_idle. Scheduling is synchronous, driven by arrivals, batch
ends and one timer, so there is no dispatcher task. Batches execute through `run_rows` (the model's
one batch path: collate, instance threads, split, statistics).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Hashable, Sequence

from runtime.errors import Code, InvalidInput, RequestTimeout, RuntimeServingError, Unavailable
from runtime.sequence.directory import SequenceDirectory
from runtime.sequence.request import SequenceTag
from runtime.sequence.tensors import Feeds
from runtime.spec import SequenceBatchingConfig
from runtime.types import Array

log = logging.getLogger(__name__)

Outputs = dict[str, Array]
# (instance, one input dict per request, rows per request, seconds each waited) -> one output dict per request
RunRows = Callable[[int, list[dict[str, Array]], list[int], list[float]], Awaitable[Sequence[Outputs]]]


class SequenceLimit(RuntimeServingError):
    """As many sequences are live as --max-sequences allows: overload, not the client's mistake."""

    code = Code.RESOURCE_EXHAUSTED


@dataclass(eq=False, slots=True)
class _Request:
    tag: SequenceTag
    inputs: dict[str, Array]
    group: Hashable
    future: asyncio.Future[Outputs]
    enqueued_at: float
    taken: bool = False
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False, slots=True)
class _Sequence:
    key: int | str
    pending: collections.deque[_Request] = field(default_factory=collections.deque)
    state: dict[str, Array] | None = None  # None: the initial state
    running: bool = False
    executed: int = 0
    end_queued: bool = False
    placed: bool = False  # holds a slot (direct) or is a candidate (oldest); else in the backlog
    instance: int = -1  # direct: the slot's instance
    slot: int = -1
    released: bool = False
    idle: asyncio.TimerHandle | None = None

    @property
    def ready(self) -> bool:
        return self.placed and not self.running and bool(self.pending)


@dataclass(slots=True)
class SequenceStats:
    """Counters for /metrics (live is the table's size when read)."""

    starts: int = 0
    ends: int = 0
    idle_releases: int = 0


class SequenceBatcher:
    def __init__(
        self,
        label: str,
        config: SequenceBatchingConfig,
        max_batch_size: int,
        instances: int,
        max_sequences: int,
        feeds: Feeds,
        run_rows: RunRows,
        owner: Callable[[], Any],
    ) -> None:
        self.label = label
        self.config = config
        self.strategy = config.strategy
        self.batched = max_batch_size > 0
        self.max_rows = max(1, max_batch_size)
        self.max_sequences = max_sequences
        self.idle_s = config.max_sequence_idle_us / 1e6
        self.delay_s = config.max_queue_delay_us / 1e6
        self.feeds = feeds
        self._run_rows = run_rows
        self._owner = owner  # the ServedModel (a weak reference): what the directory routes to
        self.directory: SequenceDirectory[Any] = SequenceDirectory()  # the registry shares one per model
        self.stats = SequenceStats()
        self._table: dict[int | str, _Sequence] = {}
        self._backlog: collections.deque[_Sequence] = collections.deque()
        self._free = list(range(instances))  # idle instances
        # direct: slots[instance][slot] -> the sequence holding it
        self._slots: list[list[_Sequence | None]] = [[None] * self.max_rows for _ in range(instances)]
        # oldest: the candidates, in start order (a dict as an ordered set)
        self._candidates: dict[int | str, _Sequence] = {}
        self._max_candidates = config.max_candidate_sequences or self.max_rows
        self._preferred = tuple(size for size in config.preferred_batch_size if size <= self.max_rows)
        self._needed_slots = math.ceil(config.minimum_slot_utilization * self.max_rows)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = math.inf
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False
        self._stopping = False  # release_all: what finishes now is released, not kept for a next request
        self._empty: asyncio.Event | None = None

    # ---- public API -------------------------------------------------------------------------

    @property
    def live(self) -> int:
        return len(self._table)

    @property
    def backlog(self) -> int:
        return sum(1 for seq in self._backlog if not seq.released)

    @property
    def queued(self) -> int:
        """Requests waiting (not yet executing), for the queue-depth gauge."""
        return sum(len(seq.pending) for seq in self._table.values())

    async def submit(
        self, tag: SequenceTag | None, inputs: dict[str, Array], rows: int, group: Hashable, timeout_s: float | None = None
    ) -> Outputs:
        """Queue one request of its sequence and wait for its outputs (state outputs removed)."""
        if tag is None:
            raise InvalidInput(
                f"{self.label} uses sequence batching: every request needs parameter sequence_id "
                "(a non-zero uint64 or a non-empty string), and its sequence's first request sequence_start"
            )
        if self.batched and rows != 1:
            raise InvalidInput(
                f"{self.label}: a sequence batcher takes one row per request (batch size 1), got {rows} rows"
            )
        sequence = self._table.get(tag.key)
        if tag.start:
            sequence = self._open(tag)
        elif sequence is None:
            raise InvalidInput(
                f"inference request for {tag.describe()} to {self.label} must specify the START flag on the "
                f"first request of the sequence: it is not live (never started, already ended, or released "
                f"after {self.config.max_sequence_idle_us} us idle)"
            )
        elif sequence.end_queued:
            raise InvalidInput(f"{self.label}: {tag.describe()} has already received its end request")
        loop = asyncio.get_running_loop()
        request = _Request(tag, inputs, group, loop.create_future(), time.monotonic())
        if tag.end:
            sequence.end_queued = True
        if sequence.idle is not None:
            sequence.idle.cancel()
            sequence.idle = None
        sequence.pending.append(request)
        if timeout_s is not None and timeout_s > 0:
            request.timer = loop.call_later(timeout_s, self._expire, sequence, request)
        if sequence.ready:
            self._schedule()
        try:
            return await request.future
        except asyncio.CancelledError:
            if not request.taken:
                self._withdraw(sequence, request)
            raise

    async def close(self) -> None:
        """Take no new sequences; wait until every live one has ended or been released as idle."""
        self._closing = True
        while self._table or self._running:
            if self._empty is None:
                self._empty = asyncio.Event()
            self._empty.clear()
            await self._empty.wait()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def release_all(self, why: str) -> None:
        """Release every live sequence now (the server stops: no later request can continue one)."""
        self._closing = self._stopping = True
        for sequence in list(self._table.values()):
            for request in sequence.pending:
                if not request.taken and not request.future.done():
                    request.future.set_exception(Unavailable(f"{self.label}: {sequence.key!r} released: {why}"))
            sequence.pending.clear()
            if not sequence.running:
                self._release(sequence, "shutdown")

    # ---- the table --------------------------------------------------------------------------

    def _open(self, tag: SequenceTag) -> _Sequence:
        if self.directory.holder(tag.key) is not None or tag.key in self._table:
            raise InvalidInput(
                f"{self.label}: {tag.describe()} is already live; a start for it is refused until it ends "
                f"(sequence_end) or is released after {self.config.max_sequence_idle_us} us idle"
            )
        if self._closing:
            raise Unavailable(f"{self.label} is being unloaded; start new sequences on the version that serves")
        if len(self._table) >= self.max_sequences:
            raise SequenceLimit(
                f"{self.label}: {len(self._table)} sequences are live, the most one version holds "
                f"(--max-sequences {self.max_sequences}); end sequences or retry later"
            )
        self.feeds.controls(tag, True)  # refuses an id the CORRID control cannot carry, before it counts
        sequence = _Sequence(tag.key)
        self._table[tag.key] = sequence
        owner = self._owner()
        if owner is not None:
            self.directory.claim(tag.key, owner)
        self.stats.starts += 1
        if not self._place(sequence):
            self._backlog.append(sequence)
        return sequence

    def _place(self, sequence: _Sequence) -> bool:
        """A slot (direct) or a candidate's place (oldest) for the sequence, if one is free."""
        if self.strategy == "oldest":
            if len(self._candidates) >= self._max_candidates:
                return False
            self._candidates[sequence.key] = sequence
            sequence.placed = True
            return True
        best = -1
        best_free = 0
        for instance, slots in enumerate(self._slots):  # the instance with the most free slots
            free = slots.count(None)
            if free > best_free:
                best, best_free = instance, free
        if best < 0:
            return False
        slot = self._slots[best].index(None)
        self._slots[best][slot] = sequence
        sequence.instance, sequence.slot, sequence.placed = best, slot, True
        return True

    def _release(self, sequence: _Sequence, why: str) -> None:
        if sequence.released:
            return
        sequence.released = True
        sequence.state = None
        if sequence.idle is not None:
            sequence.idle.cancel()
            sequence.idle = None
        self._table.pop(sequence.key, None)
        owner = self._owner()
        if owner is not None:
            self.directory.release(sequence.key, owner)
        if why == "end":
            self.stats.ends += 1
        elif why == "idle":
            self.stats.idle_releases += 1
            log.info("%s: %s released after %.3fs idle", self.label, sequence.key, self.idle_s)
        if sequence.placed:
            sequence.placed = False
            if self.strategy == "oldest":
                self._candidates.pop(sequence.key, None)
            else:
                self._slots[sequence.instance][sequence.slot] = None
            while self._backlog:  # the longest-waiting sequence takes the place
                waiting = self._backlog.popleft()
                if not waiting.released and self._place(waiting):
                    break
        if not self._table and not self._running and self._empty is not None:
            self._empty.set()

    def _idle_release(self, sequence: _Sequence) -> None:
        sequence.idle = None
        if not sequence.pending and not sequence.running:
            self._release(sequence, "idle")
            self._schedule()  # a backlog sequence may have its place now

    def _arm_idle(self, sequence: _Sequence) -> None:
        if sequence.released or sequence.pending or sequence.running:
            return
        if sequence.idle is not None:
            sequence.idle.cancel()
        sequence.idle = asyncio.get_running_loop().call_later(self.idle_s, self._idle_release, sequence)

    def _withdraw(self, sequence: _Sequence, request: _Request) -> None:
        """A request that leaves before it ran (cancelled by its client, or timed out)."""
        if request.timer is not None:
            request.timer.cancel()
        try:
            sequence.pending.remove(request)
        except ValueError:
            return
        if request.tag.end:
            sequence.end_queued = False
        self._arm_idle(sequence)

    def _expire(self, sequence: _Sequence, request: _Request) -> None:
        if request.taken or request.future.done():
            return
        waited_us = (time.monotonic() - request.enqueued_at) * 1e6
        self._withdraw(sequence, request)
        request.future.set_exception(
            RequestTimeout(f"{self.label}: {sequence.key!r}: request timed out in the queue after {waited_us:.0f} us")
        )

    # ---- scheduling -------------------------------------------------------------------------

    def _group(self, sequence: _Sequence) -> Hashable:
        """What rows must share to stack: the request's shapes, and the state's where it may change size."""
        head = sequence.pending[0]
        if not self.feeds.variable_state:
            return head.group
        state = sequence.state or self.feeds.initial
        return head.group, tuple(state[s.input_name].shape for s in self.feeds.states)

    def _schedule(self) -> None:
        """Start every batch that is due now; arm the timer for the next one that waits on a window."""
        if not self._free:
            return
        now = time.monotonic()
        due = self._schedule_oldest(now) if self.strategy == "oldest" else self._schedule_direct(now)
        if due is not None and due < self._timer_due:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_due = due
            self._timer = asyncio.get_running_loop().call_later(max(0.0, due - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_due = math.inf
        self._schedule()

    def _schedule_direct(self, now: float) -> float | None:
        due: float | None = None
        for instance in list(self._free):
            ready = [seq for seq in self._slots[instance] if seq is not None and seq.ready]
            if not ready:
                continue
            oldest = min(ready, key=lambda seq: seq.pending[0].enqueued_at)
            if len(ready) < self._needed_slots:
                window_ends = oldest.pending[0].enqueued_at + self.delay_s
                if now < window_ends:
                    due = window_ends if due is None else min(due, window_ends)
                    continue
            group = self._group(oldest)
            self._start(instance, [seq for seq in ready if self._group(seq) == group])
        return due

    def _schedule_oldest(self, now: float) -> float | None:
        while self._free:
            ready = sorted(
                (seq for seq in self._candidates.values() if seq.ready), key=lambda seq: seq.pending[0].enqueued_at
            )
            if not ready:
                return None
            group = self._group(ready[0])
            same = [seq for seq in ready if self._group(seq) == group]
            available = len(same)
            if available >= self.max_rows:
                take = self.max_rows
            else:
                fitting = [size for size in self._preferred if size <= available]
                window_ends = ready[0].pending[0].enqueued_at + self.delay_s
                if fitting:
                    take = max(fitting)
                elif now >= window_ends:
                    take = available
                else:
                    return window_ends
            self._start(self._free.pop(0), same[:take])
        return None

    def _start(self, instance: int, batch: list[_Sequence]) -> None:
        if instance in self._free:
            self._free.remove(instance)
        taken = []
        now = time.monotonic()
        for sequence in batch:
            request = sequence.pending.popleft()
            request.taken = True
            if request.timer is not None:
                request.timer.cancel()
            sequence.running = True
            taken.append((sequence, request))
        task = asyncio.get_running_loop().create_task(self._execute(instance, taken, now))
        self._running.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sequence batch for %s failed", self.label, exc_info=task.exception())
        if not self._table and not self._running and self._empty is not None:
            self._empty.set()

    async def _execute(self, instance: int, taken: list[tuple[_Sequence, _Request]], taken_at: float) -> None:
        feeds = self.feeds
        try:
            rows = []
            for sequence, request in taken:
                row = dict(request.inputs)
                row.update(feeds.controls(request.tag, sequence.executed == 0))
                row.update(sequence.state or feeds.initial)
                rows.append(row)
            waited = [taken_at - request.enqueued_at for _, request in taken]
            results = await self._run_rows(instance, rows, [1] * len(rows), waited)
            if len(results) != len(taken):
                raise RuntimeError(f"run_rows returned {len(results)} results for {len(taken)} requests")
        except Exception as exc:
            # The state stays as it was: the failed request did not advance its sequence.
            for _, request in taken:
                if not request.future.done():
                    request.future.set_exception(exc)
        else:
            for (sequence, request), outputs in zip(taken, results):
                # A copy: a row view would keep the whole batch's output alive for the sequence's life.
                sequence.state = {
                    state.input_name: outputs[state.output_name].copy() for state in feeds.states
                }
                sequence.executed += 1
                if not request.future.done():
                    request.future.set_result(
                        {name: array for name, array in outputs.items() if name not in feeds.state_outputs}
                    )
        finally:
            self._free.append(instance)
            for sequence, request in taken:
                sequence.running = False
                if request.tag.end:
                    self._release(sequence, "end")
                elif self._stopping:
                    self._release(sequence, "shutdown")
                else:
                    self._arm_idle(sequence)
            self._schedule()

