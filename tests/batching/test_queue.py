"""The batcher through its public API, with run_batch gated by asyncio events."""
from __future__ import annotations

import asyncio
from typing import Callable, Sequence

import pytest

from runtime.batching.queue import (
    PEAK_MEMORY_S,
    BatchPolicy,
    BatchQueue,
    LevelPolicy,
    Pending,
    TimeoutAction,
    Window,
    window_of,
)
from runtime.errors import ModelLoadError, QueueFull, RequestTimeout, Unavailable


class Recorder:
    """A run_batch that records each batch's payloads and can be held shut."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.fail_next = False
        self.running = 0
        self.max_running = 0

    async def __call__(self, instance: int, items: Sequence[Pending[str, str]]) -> list[str]:
        self.batches.append([item.payload for item in items])
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.started.set()
        try:
            await self.gate.wait()
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("batch exploded")
            return [f"done:{item.payload}" for item in items]
        finally:
            self.running -= 1


async def until(condition: Callable[[], bool], turns: int = 100) -> None:
    """Let the loop run, one turn at a time, until condition() holds; fail after `turns` turns."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"condition not met after {turns} loop turns")


def policy(**overrides: object) -> BatchPolicy:
    values: dict[str, object] = dict(max_batch_rows=8, max_delay_s=0.05, concurrency=1)
    values.update(overrides)
    return BatchPolicy(**values)  # type: ignore[arg-type]


async def test_concurrent_requests_share_one_batch() -> None:
    recorder = Recorder()
    queue: BatchQueue[str, str] = BatchQueue("m", policy(), recorder)
    results = await asyncio.gather(*(queue.submit(f"r{i}", 1) for i in range(5)))
    assert results == [f"done:r{i}" for i in range(5)]
    assert recorder.batches == [["r0", "r1", "r2", "r3", "r4"]]


async def test_batch_never_exceeds_max_rows() -> None:
    recorder = Recorder()
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_batch_rows=4), recorder)
    await asyncio.gather(*(queue.submit(f"r{i}", 2) for i in range(5)))
    assert [len(batch) for batch in recorder.batches] == [2, 2, 1]


async def test_fixed_window_keeps_a_lone_request_for_the_whole_window() -> None:
    recorder = Recorder()
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_delay_s=0.05, window=Window.FIXED), recorder)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await queue.submit("only", 1) == "done:only"
    assert loop.time() - started >= 0.045


async def test_preferred_size_dispatches_before_the_window() -> None:
    recorder = Recorder()
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_delay_s=5.0, preferred_rows=(2,)), recorder)
    results = await asyncio.wait_for(asyncio.gather(queue.submit("a", 1), queue.submit("b", 1)), 2.0)
    assert results == ["done:a", "done:b"]


async def test_different_groups_are_never_merged() -> None:
    recorder = Recorder()
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_delay_s=0.02), recorder)
    await asyncio.gather(
        queue.submit("a1", 1, group=(4,)), queue.submit("b1", 1, group=(8,)), queue.submit("a2", 1, group=(4,))
    )
    assert sorted(map(sorted, recorder.batches)) == [["a1", "a2"], ["b1"]]


async def test_without_batching_each_request_runs_alone() -> None:
    recorder = Recorder()
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_batch_rows=0, concurrency=2), recorder)
    await asyncio.gather(*(queue.submit(f"r{i}", 3) for i in range(4)))
    assert sorted(recorder.batches) == [["r0"], ["r1"], ["r2"], ["r3"]]
    assert recorder.max_running <= 2


async def test_full_queue_rejects_at_once() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    queue: BatchQueue[str, str] = BatchQueue(
        "m", policy(max_batch_rows=0, levels=(LevelPolicy(max_queue_size=2),)), recorder
    )
    running = asyncio.ensure_future(queue.submit("running", 1))
    await recorder.started.wait()
    waiting = [asyncio.ensure_future(queue.submit(f"w{i}", 1)) for i in range(2)]
    await until(lambda: queue.stats.queued == 2)
    with pytest.raises(QueueFull, match="queue is full"):
        await queue.submit("one too many", 1)
    recorder.gate.set()
    assert await running == "done:running"
    assert await asyncio.gather(*waiting) == ["done:w0", "done:w1"]


async def test_timeout_while_queued_rejects_and_never_runs() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_batch_rows=0), recorder)
    running = asyncio.ensure_future(queue.submit("running", 1))
    await recorder.started.wait()
    with pytest.raises(RequestTimeout, match="timed out"):
        await queue.submit("late", 1, timeout_s=0.02)
    recorder.gate.set()
    await running
    await queue.drain()
    assert ["late"] not in recorder.batches


async def test_delay_action_keeps_timed_out_requests_after_the_rest() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    level = LevelPolicy(max_queue_size=10, timeout_action=TimeoutAction.DELAY)
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_batch_rows=0, levels=(level,)), recorder)
    running = asyncio.ensure_future(queue.submit("running", 1))
    await recorder.started.wait()
    delayed = asyncio.ensure_future(queue.submit("delayed", 1, timeout_s=0.01))
    await asyncio.sleep(0.05)  # the scenario: its 10 ms timeout passes while it waits
    fresh = asyncio.ensure_future(queue.submit("fresh", 1))
    await until(lambda: queue.stats.queued == 2)
    recorder.gate.set()
    assert await delayed == "done:delayed"
    await asyncio.gather(running, fresh)
    assert recorder.batches.index(["fresh"]) < recorder.batches.index(["delayed"])


async def test_cancelled_request_leaves_the_queue_unexecuted() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_batch_rows=0), recorder)
    running = asyncio.ensure_future(queue.submit("running", 1))
    await recorder.started.wait()
    abandoned = asyncio.ensure_future(queue.submit("abandoned", 1))
    await until(lambda: queue.stats.queued == 1)
    abandoned.cancel()
    await until(lambda: queue.stats.queued == 0)
    assert abandoned.cancelled()
    recorder.gate.set()
    await running
    await queue.drain()
    assert recorder.batches == [["running"]]


async def test_higher_priority_goes_first() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    levels = (LevelPolicy(max_queue_size=10), LevelPolicy(max_queue_size=10))
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_batch_rows=0, levels=levels, default_level=1), recorder)
    running = asyncio.ensure_future(queue.submit("running", 1))
    await recorder.started.wait()
    low = asyncio.ensure_future(queue.submit("low", 1))
    await until(lambda: queue.stats.queued == 1)
    high = asyncio.ensure_future(queue.submit("high", 1, priority=1))
    await until(lambda: queue.stats.queued == 2)
    recorder.gate.set()
    await asyncio.gather(running, low, high)
    assert recorder.batches == [["running"], ["high"], ["low"]]


async def test_failing_batch_fails_its_requests_and_the_next_batch_runs() -> None:
    recorder = Recorder()
    recorder.fail_next = True
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_delay_s=0.01), recorder)
    outcomes = await asyncio.gather(queue.submit("a", 1), queue.submit("b", 1), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert await queue.submit("c", 1) == "done:c"


async def test_concurrency_is_capped_by_instances() -> None:
    recorder = Recorder()
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_batch_rows=0, concurrency=3), recorder)
    recorder.gate.clear()
    tasks = [asyncio.ensure_future(queue.submit(f"r{i}", 1)) for i in range(10)]
    await until(lambda: recorder.running == 3 and queue.stats.queued == 7)
    for _ in range(20):  # the dispatcher has every chance to start a fourth
        await asyncio.sleep(0)
    assert recorder.running == 3
    recorder.gate.set()
    await asyncio.gather(*tasks)
    assert recorder.max_running == 3


async def test_close_drains_then_refuses() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_batch_rows=0), recorder)
    tasks = [asyncio.ensure_future(queue.submit(f"r{i}", 1)) for i in range(3)]
    await recorder.started.wait()
    closing = asyncio.ensure_future(queue.close())
    await until(lambda: queue.closing)
    for _ in range(20):  # close() has every chance to return early
        await asyncio.sleep(0)
    assert not closing.done()
    recorder.gate.set()
    await closing
    assert [t.result() for t in tasks] == ["done:r0", "done:r1", "done:r2"]
    with pytest.raises(Unavailable, match="shutting down"):
        await queue.submit("after", 1)


# ---- the adaptive window ------------------------------------------------------------------------


class Clock:
    """A clock the test moves by hand (the batcher's `clock`); timers still run on the loop's."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def finishes_at_once(submitted: "asyncio.Future[str]") -> str:
    """The request's result, which must come within a few loop turns (no window waited out)."""
    await until(submitted.done, turns=20)
    return submitted.result()


async def test_lone_requests_never_wait() -> None:
    recorder = Recorder()
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_delay_s=60.0), recorder)
    for i in range(5):  # one closed-loop client: each request is alone in flight
        assert await finishes_at_once(asyncio.ensure_future(queue.submit(f"r{i}", 1))) == f"done:r{i}"
    assert recorder.batches == [[f"r{i}"] for i in range(5)]


async def test_fixed_window_holds_a_lone_request_that_adaptive_runs() -> None:
    recorder = Recorder()
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_delay_s=60.0, window=Window.FIXED), recorder)
    lone = asyncio.ensure_future(queue.submit("lone", 1))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not lone.done() and queue.stats.queued == 1  # Triton's wait: company may still come
    rest = [asyncio.ensure_future(queue.submit(f"r{i}", 1)) for i in range(7)]  # max_batch_rows 8
    await finishes_at_once(lone)
    await asyncio.gather(*rest)
    assert recorder.batches == [["lone", *(f"r{i}" for i in range(7))]]


async def turns_until_done(submitted: "asyncio.Future[str]") -> int:
    """Loop turns until the request's result is there (run_batch here never suspends)."""
    turns = 0
    while not submitted.done():
        await asyncio.sleep(0)
        turns += 1
        assert turns < 50, "the request waited"
    return turns


async def test_a_lone_request_takes_no_more_loop_turns_than_without_batching() -> None:
    # Not only no window: no extra hop either (a loop turn under load is a whole round of other
    # connections' work). Executions that leave the loop start in a task of their own, one turn
    # later, batching or not; a burst of the same turn joins the batch there.
    adaptive: BatchQueue[str, str] = BatchQueue("m", policy(max_delay_s=60.0), Recorder())
    unbatched: BatchQueue[str, str] = BatchQueue("n", policy(max_batch_rows=0, max_delay_s=0.0), Recorder())
    for queue in (adaptive, unbatched):
        await queue.submit("warm", 1)  # the dispatcher started
    turns = {
        name: [await turns_until_done(asyncio.ensure_future(queue.submit(f"r{i}", 1))) for i in range(3)]
        for name, queue in (("adaptive", adaptive), ("unbatched", unbatched))
    }
    assert turns["adaptive"] == turns["unbatched"]


@pytest.mark.parametrize("inline", [False, True], ids=["thread", "inline"])
async def test_a_burst_forms_one_full_batch(inline: bool) -> None:
    recorder = Recorder()
    queue: BatchQueue[str, str] = BatchQueue(
        "m", policy(max_delay_s=60.0, max_batch_rows=4), recorder, runs_inline=lambda: inline
    )
    results = await asyncio.wait_for(asyncio.gather(*(queue.submit(f"r{i}", 1) for i in range(8))), 5.0)
    assert results == [f"done:r{i}" for i in range(8)]
    assert recorder.batches == [["r0", "r1", "r2", "r3"], ["r4", "r5", "r6", "r7"]]


async def test_closed_loop_clients_wait_for_each_other_then_close_the_batch_at_once() -> None:
    recorder = Recorder()
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_delay_s=60.0), recorder)
    await asyncio.gather(*(queue.submit(f"a{i}", 1) for i in range(4)))  # four clients in flight
    # They come back one by one: the first three wait for the fourth, which closes the batch.
    second = []
    for i in range(3):
        second.append(asyncio.ensure_future(queue.submit(f"b{i}", 1)))
        await until(lambda: queue.stats.queued == len(second))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not any(task.done() for task in second)
    second.append(asyncio.ensure_future(queue.submit("b3", 1)))
    for task in second:
        await finishes_at_once(task)
    assert recorder.batches == [["a0", "a1", "a2", "a3"], ["b0", "b1", "b2", "b3"]]


async def test_the_peak_is_forgotten_when_the_load_stops() -> None:
    recorder = Recorder()
    clock = Clock()
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_delay_s=60.0), recorder, clock=clock)
    await asyncio.gather(*(queue.submit(f"a{i}", 1) for i in range(4)))
    clock.now += PEAK_MEMORY_S / 2  # still remembered: a lone request waits for the others
    waiting = asyncio.ensure_future(queue.submit("b0", 1))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not waiting.done()
    others = [asyncio.ensure_future(queue.submit(f"b{i}", 1)) for i in range(1, 4)]
    await asyncio.gather(waiting, *others)
    clock.now += 2.5 * PEAK_MEMORY_S  # a quiet spell: the peak is forgotten
    assert await finishes_at_once(asyncio.ensure_future(queue.submit("c0", 1))) == "done:c0"
    assert recorder.batches[-1] == ["c0"]


@pytest.mark.parametrize("window_s, closes_at_once", [(0.05, True), (0.1, False)], ids=["rate-low", "rate-high"])
async def test_company_not_due_within_the_window_is_not_waited_for(window_s: float, closes_at_once: bool) -> None:
    recorder = Recorder()
    clock = Clock()
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_delay_s=window_s), recorder, clock=clock)
    assert await finishes_at_once(asyncio.ensure_future(queue.submit("a0", 1))) == "done:a0"  # alone
    clock.now += 0.09  # then two together: the peak is 2, the average gap (90 ms, 0) about 79 ms
    await asyncio.gather(queue.submit("b0", 1), queue.submit("b1", 1))
    clock.now += 0.09  # c0 alone, 90 ms later, while the peak of 2 is still remembered
    c0 = asyncio.ensure_future(queue.submit("c0", 1))
    if closes_at_once:
        # An 80 ms average gap against a 50 ms window: fewer than one arrival per window, so c0
        # runs now, although the peak says a second may come.
        assert await finishes_at_once(c0) == "done:c0"
        assert recorder.batches[-1] == ["c0"]
    else:
        for _ in range(50):  # against a 100 ms window, company is due in time: c0 waits for it
            await asyncio.sleep(0)
        assert not c0.done()
        await asyncio.gather(c0, queue.submit("c1", 1))
        assert recorder.batches[-1] == ["c0", "c1"]


async def test_one_stall_does_not_make_a_busy_version_stop_waiting() -> None:
    recorder = Recorder()
    clock = Clock()
    queue: BatchQueue[str, str] = BatchQueue("m", policy(max_delay_s=0.01), recorder, clock=clock)
    await asyncio.gather(*(queue.submit(f"a{i}", 1) for i in range(4)))  # the peak is 4, the gaps 0
    clock.now += 0.09  # a 90 ms stall: counted as 20 ms (2 windows), the average gap is 2.5 ms
    second = [asyncio.ensure_future(queue.submit("b0", 1))]
    for _ in range(50):
        await asyncio.sleep(0)
    assert not second[0].done()  # still below one window: wait for the other three
    second += [asyncio.ensure_future(queue.submit(f"b{i}", 1)) for i in range(1, 4)]
    await asyncio.gather(*second)
    assert recorder.batches[-1] == ["b0", "b1", "b2", "b3"]


async def stream(queue: BatchQueue[str, str], clock: Clock, count: int, gap_s: float = 0.0003) -> None:
    """One request every gap_s (by `clock`), each let into the queue before the next comes."""
    submitted = []
    for i in range(count):
        clock.now += gap_s
        submitted.append(asyncio.ensure_future(queue.submit(f"r{i}", 1)))
        for _ in range(5):
            await asyncio.sleep(0)
    clock.now += 1.0  # the last window ends (its timer, on the loop's clock, comes within 2 ms)
    await asyncio.wait_for(asyncio.gather(*submitted), 5.0)


def windowed(window: Window = Window.ADAPTIVE) -> BatchPolicy:
    return policy(max_batch_rows=32, max_delay_s=0.002, preferred_rows=(8, 16, 32), window=window)


async def test_a_stream_that_outpaces_the_rows_in_flight_forms_batches_as_large_as_the_fixed_windows() -> None:
    # 64 closed-loop clients behind a saturated transport that hands the queue one request every
    # 0.3 ms, to a model that answers at once: never more than a few are in flight at the batcher,
    # so "everyone seen recently is here" holds at every arrival, while a 2 ms window would fill.
    average: dict[Window, float] = {}
    for window in Window:
        recorder = Recorder()
        clock = Clock()
        await stream(BatchQueue("m", windowed(window), recorder, clock=clock), clock, 600)
        steady = recorder.batches[len(recorder.batches) // 2 :]  # once the window has learnt
        average[window] = sum(map(len, steady)) / len(steady)
    assert average[Window.FIXED] == pytest.approx(8, abs=0.5)  # Triton's: a preferred size, or the window
    assert average[Window.ADAPTIVE] >= 0.9 * average[Window.FIXED]


async def test_after_a_stream_a_lone_client_waits_once_then_never() -> None:
    recorder = Recorder()
    clock = Clock()
    queue: BatchQueue[str, str] = BatchQueue("m", windowed(), recorder, clock=clock)
    await stream(queue, clock, 600)
    first = asyncio.ensure_future(queue.submit("lone0", 1))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not first.done()  # the stream may go on: held while it would be due, up to the window
    clock.now += 0.002
    assert await asyncio.wait_for(first, 5.0) == "done:lone0"  # nobody came: "everyone is here" again
    for i in range(1, 20):  # one closed-loop client
        clock.now += 0.0008
        assert await finishes_at_once(asyncio.ensure_future(queue.submit(f"lone{i}", 1))) == f"done:lone{i}"
    assert recorder.batches[-19:] == [[f"lone{i}"] for i in range(1, 20)]


async def test_closed_loop_clients_are_held_for_the_peak_rules_test_rarely_and_only_briefly() -> None:
    recorder = Recorder()
    clock = Clock()
    queue: BatchQueue[str, str] = BatchQueue("m", windowed(), recorder, clock=clock)
    held = 0
    for round_ in range(2000):  # four closed-loop clients, back 1 ms after their answers
        clock.now += 0.001
        batch = [asyncio.ensure_future(queue.submit(f"{round_}.{i}", 1)) for i in range(4)]
        for _ in range(20):
            await asyncio.sleep(0)
        if not all(task.done() for task in batch):
            held += 1  # everyone was here: the rule's test, which nobody else can answer
            clock.now += 0.002  # past its window (the timer on the loop's clock comes within 2 ms)
            await asyncio.wait_for(asyncio.gather(*batch), 5.0)
    assert all(len(batch) == 4 for batch in recorder.batches)
    # Once in 64 early closes, then 128, 256, ...: about 2 x 2000 decisions hold 5 batches.
    assert 1 <= held <= 8


def test_the_window_parameter() -> None:
    assert window_of({}, "model 'm'") is Window.ADAPTIVE
    assert window_of({"batch_window": " Fixed "}, "model 'm'") is Window.FIXED
    assert window_of({"batch_window": "adaptive"}, "model 'm'") is Window.ADAPTIVE
    with pytest.raises(ModelLoadError, match="model 'm': parameter batch_window must be 'adaptive' or 'fixed', got 'soon'"):
        window_of({"batch_window": "soon"}, "model 'm'")
