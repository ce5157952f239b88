"""The batcher alone, with a plain function as the model."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import QueueFull
from app.runtime.batcher import BatchLimits, BatchQueue, Foreground
from tests.sync import WAIT_S, settle_loop, until

pytestmark = pytest.mark.anyio


class ClientGoneForTest(Exception):
    """Fails a job the way a client leaving or a deadline does."""


class Recorder:
    """A model that doubles numbers, records every batch and can fail or block on demand:
    `entered` lists the batches that reached the gate, `batches` those that passed it."""

    def __init__(self, fail_on: set[int] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.entered: list[list[int]] = []
        self.fail_on = fail_on or set()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, payloads):
        self.entered.append(list(payloads))
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("the test never opened the gate")
        self.batches.append(list(payloads))
        if self.fail_on & set(payloads):
            raise ValueError("boom")
        return [p * 2 for p in payloads]


DEFAULT_LIMITS = {"max_batch_size": 64, "max_batch_tokens": 8192, "max_delay_ms": 0.0,
                  "max_queue_size": 1024}


def make(model, instances: int = 1, **limits) -> BatchQueue:
    q = BatchQueue(model, BatchLimits(**{**DEFAULT_LIMITS, **limits}), instances=instances)
    q.start()
    return q


async def test_results_come_back_in_input_order():
    model = Recorder()
    q = make(model, max_batch_size=4)
    job = q.submit(list(range(10)), [1] * 10)
    assert await job.future == [i * 2 for i in range(10)]
    assert [len(b) for b in model.batches] == [4, 4, 2]  # split across batches
    await q.close()


async def test_lone_request_runs_at_once_in_a_batch_of_one():
    model = Recorder()
    q = make(model, max_batch_size=64, max_delay_ms=0)
    assert await q.submit([7], [1]).future == [14]
    assert model.batches == [[7]]
    await q.close()


async def test_requests_queued_while_busy_share_the_next_batch():
    model = Recorder()
    model.gate.clear()
    q = make(model, max_batch_size=64)
    first = q.submit([0], [1])
    await until(lambda: model.entered == [[0]], "the worker blocked inside the model on [0]")
    others = [q.submit([i], [1]) for i in range(1, 21)]
    model.gate.set()
    await first.future
    results = await asyncio.gather(*(j.future for j in others))
    assert results == [[i * 2] for i in range(1, 21)]
    assert model.batches == [[0], list(range(1, 21))]
    await q.close()


async def test_token_budget_counts_padded_size():
    model = Recorder()
    model.gate.clear()
    q = make(model, max_batch_size=64, max_batch_tokens=100)
    blocker = q.submit([0], [1])
    await until(lambda: model.entered == [[0]], "the blocker running")
    # lengths 10, 10, 40, 10: [10, 10] fits (2x10); adding 40 makes 3x40 = 120 > 100
    jobs = [q.submit([i], [n]) for i, n in zip((1, 2, 3, 4), (10, 10, 40, 10), strict=True)]
    model.gate.set()
    await blocker.future
    await asyncio.gather(*(j.future for j in jobs))
    assert model.batches[1:] == [[1, 2], [3, 4]]
    await q.close()


async def test_an_item_longer_than_the_budget_still_runs_alone():
    model = Recorder()
    q = make(model, max_batch_tokens=10)
    assert await q.submit([5], [50]).future == [10]
    await q.close()


async def test_cancelled_items_are_dropped_before_they_run():
    model = Recorder()
    model.gate.clear()
    q = make(model)
    blocker = q.submit([0], [1])
    await until(lambda: model.entered == [[0]], "the blocker running")
    gone = q.submit([1, 2, 3], [1, 1, 1])
    kept = q.submit([4], [1])
    gone.fail(ClientGoneForTest())
    with pytest.raises(ClientGoneForTest):
        await gone.future
    model.gate.set()
    await blocker.future
    assert await kept.future == [8]
    assert all(x not in b for b in model.batches for x in (1, 2, 3))
    await q.close()


async def test_an_exception_fails_only_its_batch():
    model = Recorder(fail_on={13})
    model.gate.clear()
    q = make(model, max_batch_size=2)
    blocker = q.submit([0], [1])
    await until(lambda: model.entered == [[0]], "the blocker running")
    a = q.submit([13], [1])
    b = q.submit([1], [1])      # same batch as 13: fails with it
    c = q.submit([2, 3], [1, 1])  # next batch: unaffected
    model.gate.set()
    await blocker.future
    with pytest.raises(ValueError):
        await a.future
    with pytest.raises(ValueError):
        await b.future
    assert await c.future == [4, 6]
    assert await q.submit([5], [1]).future == [10]  # the worker keeps serving
    await q.close()


async def test_full_queue_rejects_at_once():
    model = Recorder()
    model.gate.clear()
    q = make(model, max_queue_size=3)
    blocker = q.submit([0], [1])
    await until(lambda: model.entered == [[0]], "the blocker running")
    queued = q.submit([1, 2], [1, 1])
    with pytest.raises(QueueFull) as err:
        q.submit([3, 4], [1, 1])
    assert err.value.retry_after_s == 1
    model.gate.set()
    await blocker.future
    assert await queued.future == [2, 4]  # what was accepted still runs
    await q.close()


async def test_max_delay_waits_for_company():
    model = Recorder()
    # a full batch goes at once: the delay (far longer than the test) is only ever waited
    # for by a batch that has room left
    q = make(model, max_batch_size=2, max_delay_ms=600_000)
    a = q.submit([1], [1])
    await settle_loop()  # the worker has seen [1] alone, and waits for company
    assert model.entered == []
    b = q.submit([2], [1])
    await asyncio.wait_for(asyncio.gather(a.future, b.future), WAIT_S)
    assert model.batches == [[1, 2]]
    await q.close()


async def test_drain_waits_for_queued_work():
    model = Recorder()
    model.gate.clear()
    q = make(model, max_batch_size=2)
    jobs = [q.submit([i], [1]) for i in range(5)]
    drained = asyncio.ensure_future(q.drain())
    await until(lambda: model.entered == [[0, 1]], "the first batch running")
    await settle_loop()
    assert not drained.done()
    model.gate.set()
    await asyncio.wait_for(drained, WAIT_S)
    assert all(j.future.done() for j in jobs)
    await q.close()


async def test_instances_run_batches_at_the_same_time():
    both_inside = threading.Barrier(2, timeout=5)  # breaks unless two batches overlap

    def model(payloads):
        both_inside.wait()
        return [p * 2 for p in payloads]

    q = make(model, instances=2, max_batch_size=1)
    a, b = q.submit([1], [1]), q.submit([2], [1])
    assert await a.future == [2] and await b.future == [4]
    await q.close()


async def test_a_model_measured_tiny_runs_on_the_event_loop_thread():
    threads = []

    def model(payloads):
        threads.append(threading.current_thread())
        return payloads

    slow, tiny = make(model), make(model)
    tiny.observe_run_time(0.00001)  # what a warm-up run of a tiny model reports
    await slow.submit([1], [1]).future
    await tiny.submit([1], [1]).future
    assert threads[0] is not threading.main_thread()  # unknown cost: a worker thread
    assert threads[1] is threading.main_thread()
    await slow.close()
    await tiny.close()


def _blocking_model(calls: list, release: threading.Event):
    def model(payloads):
        calls.append(list(payloads))
        if payloads[0] == 0:
            release.wait(WAIT_S)
        return [p * 2 for p in payloads]
    return model


async def test_a_free_instance_waits_for_its_share_of_the_queue():
    calls, release = [], threading.Event()
    q = make(_blocking_model(calls, release), instances=2, max_batch_size=64)
    q._recent_run_s = 40.0  # patience (a quarter of it) far longer than this test
    busy = q.submit([0, 0, 0, 0], [1] * 4)  # one instance runs these until released
    await until(lambda: calls == [[0, 0, 0, 0]], "the busy batch running")
    first = q.submit([1], [1])  # 5 in flight: the free instance waits for 2 queued
    await settle_loop()
    assert calls == [[0, 0, 0, 0]]
    second = q.submit([2], [1])
    assert await first.future == [2] and await second.future == [4]
    assert calls == [[0, 0, 0, 0], [1, 2]]
    release.set()
    await busy.future
    await q.close()


async def test_a_free_instance_does_not_wait_forever():
    calls, release = [], threading.Event()
    q = make(_blocking_model(calls, release), instances=2, max_batch_size=64)
    q._recent_run_s = 0.2  # patience 50 ms
    busy = q.submit([0, 0, 0, 0], [1] * 4)
    await until(lambda: calls == [[0, 0, 0, 0]], "the busy batch running")
    alone = q.submit([1], [1])  # its share is 2, but nobody else comes
    assert await asyncio.wait_for(alone.future, WAIT_S) == [2]
    assert not busy.future.done()  # it ran beside the busy instance, not after it
    release.set()
    await busy.future
    await q.close()


request_plan = st.lists(
    st.tuples(st.integers(1, 9),          # inputs in the request
              st.booleans(),              # cancelled while queued
              st.booleans()),             # contains a poisoned value
    min_size=1, max_size=12)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=request_plan, max_batch=st.integers(1, 8), budget=st.integers(1, 40),
       instances=st.integers(1, 3))
def test_any_interleaving_gives_each_survivor_exactly_its_results(plan, max_batch, budget,
                                                                  instances):
    async def scenario():
        model = Recorder(fail_on={-1})
        model.gate.clear()
        q = make(model, instances, max_batch_size=max_batch, max_batch_tokens=budget)
        blocker = q.submit([0], [1])
        await until(lambda: model.entered == [[0]], "the blocker running")
        jobs, base = [], 1000
        for n, cancel, poison in plan:
            values = [base + k for k in range(n)]
            if poison:
                values[n // 2] = -1
            base += 1000
            job = q.submit(values, [1 + v % 7 if v > 0 else 3 for v in values])
            jobs.append((job, values, cancel, poison))
        for job, _, cancel, _ in jobs:
            if cancel:
                job.fail(ClientGoneForTest())
                assert isinstance(job.future.exception(), ClientGoneForTest)
        model.gate.set()
        await blocker.future
        for job, values, cancel, poison in jobs:
            if cancel:
                continue
            try:
                got = await asyncio.wait_for(job.future, WAIT_S)
            except ValueError:
                assert poison or any(-1 in b and set(values) & set(b) for b in model.batches)
                continue
            assert got == [v * 2 for v in values]
        ran = [v for b in model.batches for v in b]
        for _job, values, cancel, _ in jobs:
            if cancel:
                assert not set(values) & set(ran) - {-1}
        await q.close()

    asyncio.run(scenario())


@given(st.lists(st.integers(1, 128), max_size=64), st.integers(0, 64))
def test_length_buckets_partition_and_never_cost_more_than_one_run(lengths, overhead):
    from app.pipelines.text import length_buckets

    lengths = sorted(lengths)
    runs = length_buckets(lengths, overhead)
    assert [i for a, b in runs for i in range(a, b)] == list(range(len(lengths)))

    def cost(parts):
        return sum(overhead + lengths[b - 1] * (b - a) for a, b in parts)

    if lengths:
        assert cost(runs) <= cost([(0, len(lengths))])
        assert cost(runs) <= cost([(i, i + 1) for i in range(len(lengths))])


class Timed(Recorder):
    """A model whose batch takes at least `per_item` seconds per input (slept: real time,
    and never less on a slow host), behind the Recorder's gate."""

    def __init__(self, per_item: float) -> None:
        super().__init__()
        self.per_item = per_item

    def __call__(self, payloads):
        import time

        time.sleep(self.per_item * len(payloads))
        return [p // 2 for p in super().__call__(payloads)]


async def test_admission_refuses_at_once_what_cannot_finish_before_its_deadline():
    import time

    model = Timed(0.002)
    q = make(model, max_batch_size=8)
    await q.warm_up([1] * 8, [1] * 8)  # measured: at least 2 ms per input
    model.gate.clear()
    first = q.submit(list(range(200)), [1] * 200, deadline=time.perf_counter() + 600)
    await until(lambda: len(model.entered) == 2, "the first batch running")  # warm-up, then it
    # 200 queued inputs take at least 0.4 s: a request due in 0.1 s is refused, at once:
    # while the model is held, before any queued input ran
    with pytest.raises(QueueFull) as err:
        q.submit([1], [1], deadline=time.perf_counter() + 0.1)
    assert len(model.batches) == 1 and not first.future.done()  # only the warm-up ran
    assert err.value.retry_after_s >= 1
    assert "deadline" in err.value.message
    # the same request with time to spare is admitted, and answered
    late = q.submit([1], [1], deadline=time.perf_counter() + 600)
    model.gate.set()
    assert await asyncio.wait_for(late.future, WAIT_S) == [1]
    assert await asyncio.wait_for(first.future, WAIT_S) == list(range(200))
    await q.close()


async def test_admission_takes_more_than_the_old_count_bound_when_deadlines_allow():
    """64 requests x 16 inputs (1,024 queued, four times the former default bound of 256)
    that the model answers well inside their deadline: none is refused."""
    import time

    from app.settings import Settings

    q = make(Timed(0.0001), max_batch_size=64, max_queue_size=Settings().max_queue_size)
    await q.warm_up([1] * 64, [1] * 64)
    jobs = [q.submit(list(range(16)), [1] * 16, deadline=time.perf_counter() + 30)
            for _ in range(64)]
    results = await asyncio.gather(*(j.future for j in jobs))
    assert all(r == list(range(16)) for r in results)
    await q.close()


async def test_expected_wait_follows_the_queue():
    q = make(Timed(0.001), max_batch_size=4)
    assert q.expected_wait(1) is None  # nothing measured yet: only the count bound applies
    await q.warm_up([1] * 4, [1] * 4)
    empty = q.expected_wait(1)
    assert q.expected_wait(41) == pytest.approx(41 * empty)  # nothing queued: linear in cost
    job = q.submit(list(range(40)), [1] * 40)
    assert q.expected_wait(1) > 10 * empty
    await job.future
    # drained: linear in cost again (nothing queued, nothing running), whatever the
    # measured cost per input became meanwhile
    assert q.expected_wait(41) == pytest.approx(41 * q.expected_wait(1))
    await q.close()


class Starts(Recorder):
    """A Recorder that also notes each batch as it starts (before the gate), with its
    thread's niceness."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[list[int]] = []
        self.nice: dict[int, int] = {}

    def __call__(self, payloads):
        import os

        self.started.append(list(payloads))
        tid = threading.get_native_id()
        self.nice[payloads[0]] = (os.sched_getscheduler(tid),
                                  os.getpriority(os.PRIO_PROCESS, tid))
        return super().__call__(payloads)


async def test_a_prediction_overtakes_queued_background_work():
    model = Starts()
    model.gate.clear()
    q = BatchQueue(model, BatchLimits(**DEFAULT_LIMITS), instances=1, low_batch_size=4)
    q.start()
    low = q.submit_low(list(range(100, 140)), [1] * 40)
    await until(lambda: model.started == [[100, 101, 102, 103]],
                "the first background batch running (held at the gate)")
    job = q.submit([7], [1])
    model.gate.set()
    assert await job.future == [14]
    assert await low.future == [i * 2 for i in range(100, 140)]
    # only the background batch already running (low_batch_size items) was ahead of it
    assert model.started[:2] == [[100, 101, 102, 103], [7]]
    await q.close()


async def test_background_work_waits_for_running_predictions_and_runs_niced():
    model = Starts()
    model.gate.clear()
    q = BatchQueue(model, BatchLimits(**DEFAULT_LIMITS), instances=2, low_batch_size=4)
    q.start()
    job = q.submit([7], [1])
    await until(lambda: model.started == [[7]], "the prediction running")
    low = q.submit_low(list(range(100, 108)), [1] * 8)
    await settle_loop()
    # a free instance, but a prediction is running
    assert q.low_running == 0 and q.low_queued == 8 and model.started == [[7]]
    model.gate.set()
    await job.future
    await low.future
    assert model.started[1] == [100, 101, 102, 103]
    await q.close()


async def test_background_work_runs_one_batch_at_a_time_and_predictions_start_at_once():
    import os

    model = Starts()
    model.gate.clear()
    q = BatchQueue(model, BatchLimits(**DEFAULT_LIMITS), instances=2, low_batch_size=4)
    q.start()
    low = q.submit_low(list(range(100, 140)), [1] * 40)
    await until(lambda: model.started == [[100, 101, 102, 103]], "a background batch running")
    await settle_loop()
    # one background batch, not one per instance
    assert q.low_running == 1 and q.low_queued == 36
    job = q.submit([7], [1])
    await until(lambda: [7] in model.started, "the first prediction started")
    second = q.submit([8], [1])
    # both instances are the predictions': each starts at once although a background batch
    # is running (and still held)
    await until(lambda: [8] in model.started, "the second prediction started")
    assert sorted(model.started[1:]) == [[7], [8]]
    model.gate.set()
    await job.future
    await second.future
    await low.future
    base = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
    # the background thread runs at the process's own priority: at idle priority it was
    # preempted while holding the GIL and the event loop waited for a free core (up to
    # 0.8 s on a busy host); waiting for idle moments is the lane's gate, not the OS's
    assert model.nice[7] == model.nice[8] == model.nice[100] == base
    await q.close()


async def test_background_work_waits_for_every_models_predictions():
    """Queues of the process share a Foreground: one model's background lane (a rollout's
    shadow copies on the candidate) waits while another model (the stable version) has a
    prediction running."""
    stable, candidate = Starts(), Starts()
    stable.gate.clear()
    foreground = Foreground()
    limits = BatchLimits(**DEFAULT_LIMITS)
    a = BatchQueue(stable, limits, instances=1, foreground=foreground)
    b = BatchQueue(candidate, limits, instances=1, low_batch_size=4, foreground=foreground)
    a.start()
    b.start()
    job = a.submit([7], [1])
    await until(lambda: stable.started == [[7]], "the stable prediction running")
    low = b.submit_low([100, 101], [1, 1])
    await settle_loop()
    assert candidate.started == [] and b.low_queued == 2  # held back by the other model
    stable.gate.set()
    assert await job.future == [14]
    assert await low.future == [200, 202]
    await a.close()
    await b.close()
