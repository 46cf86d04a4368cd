"""Per-model-version request queue and dynamic batcher, with Triton's scheduling semantics.

Requests wait in one FIFO per priority level. A batch is formed when an instance is free and
either the preferred size is reached or the oldest request has waited max_delay; only requests
whose group key matches (same non-batch shapes) are merged. The batcher knows nothing of
numpy or transports: it hands payloads to an injected `run_batch`.

The window (Window.ADAPTIVE, the default) also closes early when waiting cannot pay:
- everyone recently seen is already here: the rows in flight (queued plus running) reach the
  most that were in flight at once over the last PEAK_MEMORY_S to 2 x PEAK_MEMORY_S. A lone
  closed-loop client therefore does not wait, and N closed-loop clients wait only until all N are
  back (never longer than max_delay), but for the rule's rare tests (below). Like Clipper's adaptive batching this learns from what the
  traffic did, but it adapts the wait rather than the batch size: the size cap stays Triton's.
  The rule is a guess that can be wrong: the rows in flight are the clients at the batcher, not
  those still in the transport (undecoded, or waiting for the event loop), nor open-loop ones.
  Where requests reach the queue one by one and each batch ends before the next arrives (a fast
  model behind a saturated loop), the peak stays at what the early closes let in, and the batches
  stay that small while Triton's window would fill. So the rule is tested: once in PROBE_EVERY of
  its early closes (a number that doubles, to PROBE_EVERY_MAX, each time the rule proves right),
  a batch that has "everyone" waits instead, while the arrival rate says the next is due, for up
  to DRY_GAPS average gaps after the last arrival (and never past the window). If company comes,
  the rule is off (a stream): batches close on Triton's terms (and the rate rule below) until a
  batch held past "everyone" sees no arrival for DRY_GAPS gaps (or to its window's end), which
  turns the rule back on. Closed-loop clients pay one such wait now and then, on one batch.
- the next request is not due within the window: the moving average of the gaps between arrivals is
  at least max_delay (fewer than one arrival per window; each gap counts at most 2 x max_delay, so
  one stall does not flip it), so the next one, counted from the last
  arrival, comes after the oldest request's window ends. Only a low arrival rate makes this true:
  under load the average gap is a fraction of the window (bursts of closed-loop clients included,
  whose long gap between bursts is averaged with the short ones), and the peak rule decides.
A request that finds nothing to wait for and an instance idle skips the dispatcher, and waits no
loop turn more than without batching: its execution task (which starts one turn later, as any
task) takes the batch when it first runs, so a burst read in that same turn joins it. A model run
on the event loop itself (tiny ones) yields once for the same reason, a few microseconds.
Window.FIXED is Triton's: wait for the preferred size or the full max_delay.
"""
from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine, Generic, Hashable, Sequence, TypeVar

from runtime.errors import ModelLoadError, QueueFull, RequestTimeout, Unavailable

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


class TimeoutAction(enum.Enum):
    REJECT = "reject"
    DELAY = "delay"


class Window(enum.Enum):
    """How long a batch waits for company: ADAPTIVE closes early when waiting cannot pay (module
    docstring), FIXED is Triton's (the preferred size or the full max_delay)."""

    ADAPTIVE = "adaptive"
    FIXED = "fixed"


WINDOW_PARAMETER = "batch_window"  # the model config parameter that chooses the Window
# How long the peak of rows in flight is remembered: a burst makes lone requests wait (up to the
# window) for at most 2x this after it ends; long enough to span the gaps of steady closed-loop load.
PEAK_MEMORY_S = 0.1
_GAP_WEIGHT = 1 / 8  # of each new inter-arrival gap in the moving average
# A batch held past "everyone is here" waits for company at most this many average gaps after the
# last arrival: for a stream of independent arrivals, nobody in 4 mean gaps happens 1.8% of the time.
DRY_GAPS = 4
# How often the peak rule is tested: once in this many batches it closes early, doubling (up to the
# maximum) each time it proves right.
PROBE_EVERY = 64
PROBE_EVERY_MAX = 4096


def window_of(parameters: dict[str, str], where: str) -> Window:
    """The Window a model config's `batch_window` parameter names (absent or empty: ADAPTIVE)."""
    text = parameters.get(WINDOW_PARAMETER, "").strip().lower()
    if not text:
        return Window.ADAPTIVE
    try:
        return Window(text)
    except ValueError:
        choices = " or ".join(repr(w.value) for w in Window)
        raise ModelLoadError(
            f"{where}: parameter {WINDOW_PARAMETER} must be {choices}, got {parameters[WINDOW_PARAMETER]!r}"
        ) from None


@dataclass(frozen=True, slots=True)
class LevelPolicy:
    """Triton's ModelQueuePolicy for one priority level."""

    max_queue_size: int  # 0: unbounded (the registry always gives a bound)
    default_timeout_s: float | None = None
    allow_timeout_override: bool = True
    timeout_action: TimeoutAction = TimeoutAction.REJECT


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_rows: int  # 0: no dynamic batching, each request runs alone
    max_delay_s: float = 0.0
    preferred_rows: tuple[int, ...] = ()
    concurrency: int = 1
    levels: tuple[LevelPolicy, ...] = (LevelPolicy(max_queue_size=1024),)
    default_level: int = 0  # index into levels
    window: Window = Window.ADAPTIVE

    @property
    def batching(self) -> bool:
        return self.max_batch_rows > 0

    @property
    def waits(self) -> bool:
        """Whether a batch may wait for company at all (batching with a window)."""
        return self.max_batch_rows > 0 and self.max_delay_s > 0


class _State(enum.Enum):
    QUEUED = 0
    TAKEN = 1
    WITHDRAWN = 2


@dataclass(eq=False, slots=True)
class Pending(Generic[P, R]):
    payload: P
    rows: int
    group: Hashable
    level: int
    enqueued_at: float
    future: asyncio.Future[R]
    deadline: float | None = None
    delay_on_timeout: bool = False
    state: _State = _State.QUEUED
    taken_at: float = 0.0
    timer: asyncio.TimerHandle | None = None


RunBatch = Callable[[int, Sequence[Pending[P, R]]], Awaitable[Sequence[R]]]


@dataclass(slots=True)
class QueueStats:
    """What is waiting now (the queue-depth gauge reads `queued`). Batch and request counters are the
    model's (runtime.model.ModelStats, fed once per batch), not the queue's."""

    queued: int = 0
    level_queued: list[int] = field(default_factory=list)  # per priority level


class BatchQueue(Generic[P, R]):
    def __init__(
        self,
        name: str,
        policy: BatchPolicy,
        run_batch: RunBatch[P, R],
        runs_inline: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._clock = clock  # seconds; injected by tests. Timers still run on the loop's clock.
        self.policy = policy
        self._run_batch = run_batch
        # True when run_batch will finish without suspending (execution on the event loop itself):
        # then the fast path runs it in the caller's task, with no task of its own.
        self._runs_inline = runs_inline
        self._levels: list[collections.deque[Pending[P, R]]] = [collections.deque() for _ in policy.levels]
        self._delayed: collections.deque[Pending[P, R]] = collections.deque()  # timed out under DELAY: served last
        # Levels in the order they are served, then the delayed ones: built once, scanned per batch.
        self._queues: tuple[collections.deque[Pending[P, R]], ...] = (*self._levels, self._delayed)
        # Rows queued per group key, so a batch's size is known without walking the queues.
        self._group_rows: dict[Hashable, int] = {}
        self.stats = QueueStats(level_queued=[0] * len(policy.levels))
        # What the adaptive window learns from (see the module docstring).
        self._adaptive = policy.waits and policy.window is Window.ADAPTIVE
        self._queued_rows = 0
        self._running_rows = 0
        self._peak_rows = 0  # most rows in flight at once since _peak_until - PEAK_MEMORY_S
        self._previous_peak_rows = 0  # the same over the PEAK_MEMORY_S before that
        self._peak_until = 0.0
        self._last_arrival: float | None = None
        self._gap_s: float | None = None  # moving average of inter-arrival gaps
        self._last_gap_s = 0.0  # the latest gap itself
        # The peak rule's test (module docstring): while _stream, arrivals kept coming to a batch that
        # had "everyone" and the rule is off; else it is tested again at _probe_at.
        self._stream = False
        self._holding = False  # a batch is waiting although everyone seen recently is here
        self._probe_every = PROBE_EVERY
        self._until_probe = PROBE_EVERY  # early closes by the peak rule before it is tested again
        self._closing = False
        # Made lazily inside the running loop (a queue may be built before the loop starts).
        self._wakeup: asyncio.Event | None = None
        self._free_instances: asyncio.Queue[int] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._idle: asyncio.Event | None = None

    # ---- public API -------------------------------------------------------------------------

    async def submit(
        self,
        payload: P,
        rows: int,
        group: Hashable = None,
        priority: int = 0,
        timeout_s: float | None = None,
    ) -> R:
        """Queue one request and wait for its result. `priority` is Triton's 1-based level (0: default)."""
        if self._closing:
            raise Unavailable(f"model {self.name}: shutting down, not accepting requests")
        self._ensure_started()
        level = self._level_index(priority)
        policy = self.policy.levels[level]
        if policy.max_queue_size and self.stats.level_queued[level] >= policy.max_queue_size:
            raise QueueFull(
                f"model {self.name}: queue is full ({policy.max_queue_size} requests waiting); retry later"
            )
        loop = asyncio.get_running_loop()
        now = self._clock()
        if timeout_s is None or not policy.allow_timeout_override:
            timeout_s = policy.default_timeout_s if policy.default_timeout_s else timeout_s
        item: Pending[P, R] = Pending(payload, rows, group, level, now, loop.create_future())
        if timeout_s is not None and timeout_s > 0:
            item.deadline = now + timeout_s
            item.delay_on_timeout = policy.timeout_action is TimeoutAction.DELAY
            item.timer = loop.call_at(loop.time() + timeout_s, self._expire, item)
        self._levels[level].append(item)
        self.stats.queued += 1
        self.stats.level_queued[level] += 1
        self._group_rows[group] = self._group_rows.get(group, 0) + rows
        self._queued_rows += rows
        if self._adaptive:
            self._note_arrival(now)
        assert self._wakeup is not None and self._free_instances is not None
        try:
            if self.stats.queued == 1 and not self._free_instances.empty() and (
                not self.policy.waits or not self._waiting_pays(item)
            ):
                # Nothing to wait for and an instance idle: no trip through the dispatcher.
                if self._runs_inline is not None and self._runs_inline():
                    await self._run_inline(item)
                    if item.future.done():
                        return item.future.result()
                elif not self.policy.waits:
                    instance = self._free_instances.get_nowait()
                    self._start(instance, self._take(group, self.policy.max_batch_rows or rows))
                else:
                    self._spawn(self._take_then_execute(self._free_instances.get_nowait()))
            else:
                self._wakeup.set()
            return await item.future
        except asyncio.CancelledError:
            if item.state is _State.QUEUED:
                self._withdraw(item)
            raise

    async def _run_inline(self, item: Pending[P, R]) -> None:
        """The lone request's batch on the event loop, in the caller's task. With a window, one
        yield first: requests that reached the queue in this same loop turn (a burst read from
        several connections at once) join it; if company is due after all, the dispatcher decides."""
        assert self._free_instances is not None and self._wakeup is not None
        if self.policy.waits:
            await asyncio.sleep(0)
            if item.state is not _State.QUEUED or self._free_instances.empty() or self._waiting_pays(item):
                self._wakeup.set()
                return
        instance = self._free_instances.get_nowait()
        batch = self._take(item.group, self.policy.max_batch_rows or item.rows)
        if self.stats.queued:
            self._wakeup.set()  # what arrived meanwhile and did not fit
        await self._execute(instance, batch)

    async def _take_then_execute(self, instance: int) -> None:
        """The lone request's batch, taken when this task first runs: one loop turn after submit, as
        any task starts (also without a window), so requests that reached the queue in that same turn
        (a burst read from several connections at once) join it, and a request that stays alone waits
        no extra turn. If company is due after all, or the request left, the dispatcher decides."""
        assert self._free_instances is not None and self._wakeup is not None
        first = self._first_queued()
        if first is None or self._waiting_pays(first):
            self._free_instances.put_nowait(instance)
            self._wakeup.set()
            task = asyncio.current_task()
            if task is not None:
                self._running.discard(task)
            self._signal_if_idle()
            return
        batch = self._take(first.group, self.policy.max_batch_rows)
        if self.stats.queued:
            self._wakeup.set()  # what arrived meanwhile and did not fit
        await self._execute(instance, batch)

    async def drain(self) -> None:
        """Wait until nothing is queued or running."""
        while self.stats.queued or self._running:
            self._ensure_idle_event().clear()
            await self._ensure_idle_event().wait()

    async def close(self) -> None:
        """Stop accepting, finish everything queued and running, then stop the dispatcher."""
        self._closing = True
        await self.drain()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            try:
                await self._dispatcher
            except asyncio.CancelledError:
                pass
            self._dispatcher = None

    @property
    def closing(self) -> bool:
        return self._closing

    # ---- queue bookkeeping ------------------------------------------------------------------

    def _level_index(self, priority: int) -> int:
        if priority <= 0:
            return self.policy.default_level
        return min(priority, len(self.policy.levels)) - 1

    def _withdraw(self, item: Pending[P, R]) -> None:
        if item.state is not _State.QUEUED:
            return
        item.state = _State.WITHDRAWN
        if item.timer is not None:
            item.timer.cancel()
        self._dequeued(item)
        if not self.stats.queued:
            self._holding = False  # nobody left to hold: what comes next is no company
        self._signal_if_idle()

    def _dequeued(self, item: Pending[P, R]) -> None:
        """Counts for an item that leaves the queued state (taken or withdrawn; it may stay in a deque,
        skipped as stale, until a scan reaches it)."""
        self.stats.queued -= 1
        self.stats.level_queued[item.level] -= 1
        self._queued_rows -= item.rows
        left = self._group_rows[item.group] - item.rows
        if left:
            self._group_rows[item.group] = left
        else:
            del self._group_rows[item.group]

    def _expire(self, item: Pending[P, R]) -> None:
        if item.state is not _State.QUEUED:
            return
        if item.delay_on_timeout:
            # DELAY: it stays queued, behind every request that has not timed out.
            if item in self._levels[item.level]:
                self._levels[item.level].remove(item)
                self._delayed.append(item)
            return
        self._withdraw(item)
        if not item.future.done():
            waited_us = (self._clock() - item.enqueued_at) * 1e6
            item.future.set_exception(
                RequestTimeout(f"model {self.name}: request timed out in the queue after {waited_us:.0f} us")
            )

    def _first_queued(self) -> Pending[P, R] | None:
        for queue in self._queues:
            while queue and queue[0].state is not _State.QUEUED:
                queue.popleft()  # taken or withdrawn earlier
            if queue:
                return queue[0]
        return None

    def _rows_available(self, group: Hashable) -> int:
        return self._group_rows.get(group, 0)

    def _target_rows(self, available: int) -> int | None:
        """Rows to dispatch now, or None to keep waiting for the window."""
        policy = self.policy
        if not policy.batching:
            return 0  # one request, whatever its rows
        if available >= policy.max_batch_rows:
            return policy.max_batch_rows
        fitting = [size for size in policy.preferred_rows if size <= available]
        return max(fitting) if fitting else None

    def _note_arrival(self, now: float) -> None:
        """Learn from one arrival (already counted in _queued_rows): the peak of rows in flight and
        the gap since the previous arrival."""
        if now >= self._peak_until:
            # A new memory period; the last one is remembered only if it ended just now.
            recent = now < self._peak_until + PEAK_MEMORY_S
            self._previous_peak_rows = self._peak_rows if recent else 0
            self._peak_rows = 0
            self._peak_until = now + PEAK_MEMORY_S
        self._peak_rows = max(self._peak_rows, self._queued_rows + self._running_rows)
        if self._holding:
            # Company came to a batch that had everyone seen recently: more clients than the rows in
            # flight show (the rest are in the transport, or arrive open-loop). The peak rule is off.
            self._holding = False
            self._stream = True
            self._probe_every = PROBE_EVERY
        if self._last_arrival is not None:
            # Capped at twice the window: below one arrival per window is still seen as such, while
            # one stall (the loop or the client starved of CPU) moves the average by a quarter window.
            gap = min(now - self._last_arrival, 2 * self.policy.max_delay_s)
            self._last_gap_s = gap
            self._gap_s = gap if self._gap_s is None else self._gap_s + (gap - self._gap_s) * _GAP_WEIGHT
        self._last_arrival = now

    def _waiting_pays(self, first: Pending[P, R]) -> bool:
        """Whether the batch of `first` may still gain company within its window (FIXED: always)."""
        return self._wait_deadline(first) > self._clock()

    def _wait_deadline(self, first: Pending[P, R]) -> float:
        """Until when the batch of `first` may wait for company (at or before now: close it now)."""
        deadline = first.enqueued_at + self.policy.max_delay_s
        if not self._adaptive:
            return deadline
        now = self._clock()
        gap = self._gap_s
        if gap is not None and gap >= self.policy.max_delay_s:
            # Fewer than one arrival per window on average: the next one is not due before this
            # window ends (the last arrival is at or after the oldest request's).
            return now
        if self._queued_rows + self._running_rows < max(self._peak_rows, self._previous_peak_rows):
            return deadline  # some seen recently are not back yet
        # Everyone seen recently is here. Closed-loop clients: nobody else can come, close now.
        # Unless that proved wrong (_stream), or it is time to test it again: then wait while
        # arrivals keep their pace, up to DRY_GAPS average gaps after the last one.
        if gap is None or self._last_arrival is None:
            return now
        if not self._stream and (self._until_probe > 0 or self._last_gap_s > 2 * gap):
            # (a request after a pause is not the stream the average describes)
            self._until_probe -= 1  # per decision: about one or two per batch
            return now
        dry = self._last_arrival + DRY_GAPS * gap
        if dry <= now:
            self._peak_rule_held()
            return now
        self._holding = True
        return min(deadline, dry)

    def _peak_rule_held(self) -> None:
        """Nobody came to a batch held past "everyone is here": the peak rule is right (again)."""
        if self._stream:
            self._stream = False
            self._probe_every = PROBE_EVERY
        else:
            self._probe_every = min(2 * self._probe_every, PROBE_EVERY_MAX)
        self._until_probe = self._probe_every
        self._holding = False

    def _take(self, group: Hashable, target_rows: int) -> list[Pending[P, R]]:
        """Requests of `group` in serving order, up to `target_rows` rows (at least one request). Each
        queue is walked from its head only until the batch is full; what is passed over keeps its place."""
        batch: list[Pending[P, R]] = []
        rows = 0
        limit = max(target_rows, 1)
        batching = self.policy.batching
        for queue in self._queues:
            if rows >= limit:
                break
            kept: list[Pending[P, R]] = []
            while queue and rows < limit:
                item = queue.popleft()
                if item.state is not _State.QUEUED:
                    continue  # stale: taken or withdrawn earlier
                if item.group == group and (not batch or (batching and rows + item.rows <= limit)):
                    batch.append(item)
                    rows += item.rows
                else:
                    kept.append(item)
            queue.extendleft(reversed(kept))
        now = self._clock()
        if self._holding:  # held past "everyone is here" to its window's end, and nobody came
            self._peak_rule_held()
        for item in batch:
            item.state = _State.TAKEN
            item.taken_at = now
            if item.timer is not None:
                item.timer.cancel()
            self._dequeued(item)
        return batch

    # ---- dispatcher -------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._dispatcher is not None:
            return
        self._wakeup = asyncio.Event()
        self._free_instances = asyncio.Queue()
        for instance in range(self.policy.concurrency):
            self._free_instances.put_nowait(instance)
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch_forever(), name=f"batcher:{self.name}")
        self._dispatcher.add_done_callback(self._log_crash)

    def _ensure_idle_event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
        return self._idle

    def _signal_if_idle(self) -> None:
        if self._idle is not None and not self.stats.queued and not self._running:
            self._idle.set()

    def _log_crash(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("batcher for %s stopped", self.name, exc_info=task.exception())

    async def _dispatch_forever(self) -> None:
        assert self._wakeup is not None and self._free_instances is not None
        while True:
            first = self._first_queued()
            if first is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            instance = await self._free_instances.get()
            batch = await self._form_batch()
            if not batch:
                self._free_instances.put_nowait(instance)
                continue
            self._start(instance, batch)

    def _start(self, instance: int, batch: list[Pending[P, R]]) -> None:
        self._spawn(self._execute(instance, batch))

    def _spawn(self, execution: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(execution)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        task.add_done_callback(self._log_crash)

    async def _form_batch(self) -> list[Pending[P, R]]:
        assert self._wakeup is not None
        while True:
            first = self._first_queued()
            if first is None:
                return []
            limit = self.policy.max_batch_rows or first.rows
            target = self._target_rows(self._rows_available(first.group))
            remaining = first.enqueued_at + self.policy.max_delay_s - self._clock()
            if target is None and remaining > 0:
                remaining = self._wait_deadline(first) - self._clock()
            if target is not None or remaining <= 0:
                return self._take(first.group, target or limit)
            # A timer that sets the event is much cheaper than wait_for's task and cancellation.
            self._wakeup.clear()
            timer = asyncio.get_running_loop().call_later(remaining, self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                timer.cancel()

    async def _execute(self, instance: int, batch: list[Pending[P, R]]) -> None:
        assert self._free_instances is not None
        live = [item for item in batch if not item.future.done()]
        rows = sum(item.rows for item in batch)
        self._running_rows += rows
        try:
            if live:
                results = await self._run_batch(instance, live)
                if len(results) != len(live):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} requests")
                for item, result in zip(live, results):
                    if not item.future.done():
                        item.future.set_result(result)
        except Exception as exc:
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
        finally:
            self._running_rows -= rows
            self._free_instances.put_nowait(instance)
            task = asyncio.current_task()
            if task is not None:
                self._running.discard(task)
            self._signal_if_idle()
