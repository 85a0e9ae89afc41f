"""agentd/runner.py: admission, round-robin fairness, chunked prefill, cancellation, failures."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from agentd.loader import prepare
from agentd.prefix_cache import Restored
from agentd.runner import Failed, Finished, GenerationRequest, Job, NotReady, QueueFull, Runner, Token
from engine.sampling import Sampler, SamplingParams
from tests.agentd.fakes import FakeModel, text_reply


def make_runner(model: FakeModel, **kw) -> Runner:
    kw = {"max_queue": 8, "max_active": 4, "prefill_chunk": 4, **kw}
    return Runner(lambda: prepare(model, name="fake"), **kw)


def request(model: FakeModel, prompt: str, max_tokens: int = 50, **kw) -> GenerationRequest:
    return GenerationRequest(
        request_id=prompt,
        prompt_ids=model.tokenizer.encode(prompt),
        max_tokens=max_tokens,
        sampler=Sampler(SamplingParams(temperature=0)),
        **kw,
    )


async def drain(job) -> tuple[str, object]:
    ids = []
    while True:
        event = await job.next_event()
        if isinstance(event, Token):
            ids.append(event.token_id)
        else:
            return ids, event


@pytest.fixture
async def started():
    runners = []

    async def start(model: FakeModel, **kw) -> Runner:
        runner = make_runner(model, **kw)
        runners.append(runner)
        await runner.start()
        assert await runner.wait_loaded()
        return runner

    yield start
    for runner in runners:
        await runner.stop()


async def test_generates_until_eos_and_reports_stats(started):
    model = FakeModel(text_reply("Say: ", "hello"))
    runner = await started(model)
    job = runner.submit(request(model, "Say: "))
    ids, end = await drain(job)
    assert model.tokenizer.decode(ids) == "hello"
    assert end == Finished("stop")
    assert job.stats.num_tokens == 5 and job.stats.num_generated_tokens == 5
    assert job.stats.time_to_first_token is not None
    assert runner.num_jobs == 0


async def test_max_tokens_finishes_with_length(started):
    model = FakeModel(text_reply("p", "abcdefgh"))
    runner = await started(model)
    ids, end = await drain(runner.submit(request(model, "p", max_tokens=3)))
    assert model.tokenizer.decode(ids) == "abc"
    assert end == Finished("length")


async def test_prompt_is_processed_in_chunks(started):
    model = FakeModel(text_reply("0123456789", "x"))
    runner = await started(model, prefill_chunk=4)
    await drain(runner.submit(request(model, "0123456789")))
    # 10 prompt tokens in chunks of 4 -> 3 forward calls, then one decode step for "x" -> EOS
    assert model.forward_calls == 4
    assert model.tokens_consumed == 11


async def test_generating_requests_share_every_step(started):
    model = FakeModel(lambda ctx: "a" * 20 if ctx.startswith("A") else "b" * 20)
    runner = await started(model, max_active=2)
    order: list[str] = []

    async def consume(prompt: str) -> None:
        job = runner.submit(request(model, prompt, max_tokens=10))
        while isinstance(await job.next_event(), Token):
            order.append(prompt)

    await asyncio.gather(consume("A"), consume("B"))
    assert sorted(order) == ["A"] * 10 + ["B"] * 10
    # one pass per step carries both: A's prompt, then A's decode row with B's prompt, ... (11, not 20)
    assert model.forward_calls == 11
    # fair: B trails A by at most the one step A's prompt went first
    assert all(order[:i].count("A") - order[:i].count("B") in (0, 1, 2) for i in range(len(order)))


async def test_prompts_take_turns_beside_generating_requests(started):
    """One prompt chunk per step, prompts in turn, while streams keep getting a token every step."""
    model = FakeModel(lambda ctx: "z" * 50)
    runner = await started(model, max_active=3, prefill_chunk=4)
    stream = runner.submit(request(model, "s", max_tokens=30))
    await stream.next_event()  # generating
    stream_state = id(stream.state)
    first = runner.submit(request(model, "p" * 40, max_tokens=1))
    second = runner.submit(request(model, "q" * 40, max_tokens=1))
    await asyncio.gather(drain(stream), drain(first), drain(second))
    with_stream = [i for i, rows in enumerate(model.batches) if (stream_state, 1) in rows or (stream_state, 2) in rows]
    assert with_stream == list(range(with_stream[0], with_stream[0] + 30))  # its row in every step to the end
    for rows in model.batches[with_stream[0] + 1 : with_stream[-1] + 1]:
        assert sum(n > 1 for _, n in rows) <= 1 and max(n for _, n in rows) <= 4  # one prompt chunk per step
    # beside a stream chunks are at most 4 tokens: the second prompt started before the first was done
    assert second.stats.started_at < first.stats.first_token_at


async def test_requests_beyond_max_active_wait_in_order(started):
    model = FakeModel(lambda ctx: "z" * 50, step_seconds=0.001)
    runner = await started(model, max_active=1)
    first = runner.submit(request(model, "1", max_tokens=5))
    second = runner.submit(request(model, "2", max_tokens=5))
    await asyncio.gather(drain(first), drain(second))
    assert second.stats.started_at >= first.stats.finished_at


async def test_queue_full_and_not_ready():
    model = FakeModel(lambda ctx: "z")
    runner = make_runner(model, max_queue=2)
    with pytest.raises(NotReady):
        runner.submit(request(model, "x"))
    await runner.start()
    await runner.wait_loaded()
    try:
        runner.submit(request(model, "x"))
        runner.submit(request(model, "y"))
        with pytest.raises(QueueFull):
            runner.submit(request(model, "z"))
    finally:
        await runner.stop()


async def test_cancel_frees_the_runner_within_one_step(started):
    model = FakeModel(lambda ctx: "z" * 1000, step_seconds=0.01)
    runner = await started(model)
    job = runner.submit(request(model, "x", max_tokens=1000))
    await job.next_event()
    runner.cancel(job)
    calls = model.forward_calls
    await asyncio.sleep(0.1)
    assert runner.num_jobs == 0
    assert model.forward_calls <= calls + 1  # at most the step already running
    assert job.state is None  # the state was dropped


async def test_cancel_during_prefill(started):
    model = FakeModel(lambda ctx: "z", step_seconds=0.02)
    runner = await started(model, prefill_chunk=2)
    job = runner.submit(request(model, "p" * 100))
    await asyncio.sleep(0.05)
    runner.cancel(job)
    await asyncio.sleep(0.1)
    assert runner.num_jobs == 0
    assert model.tokens_consumed < 100  # stopped long before the 100-token prompt was done


class RecordingCache:
    """The runner's view of the session cache: always a miss, no checkpoint positions; records saves."""

    def __init__(self, model: FakeModel):
        self.model = model
        self.saved: list[tuple[int, int]] = []  # (number of tokens, state position)

    def restore(self, prompt_ids):
        return Restored(self.model.new_state(), 0, 0, None)

    def positions(self, prompt_ids, start):
        return []

    def save(self, tokens, state):
        self.saved.append((len(tokens), state.position))

    def close(self):
        pass


async def test_cancel_during_prefill_keeps_the_work_done_in_the_cache():
    model = FakeModel(lambda ctx: "z", step_seconds=0.02)
    cache = RecordingCache(model)
    runner = Runner(lambda: dataclasses.replace(prepare(model, name="fake"), cache=cache),
                    max_queue=8, max_active=4, prefill_chunk=2)
    await runner.start()
    assert await runner.wait_loaded()
    try:
        job = runner.submit(request(model, "p" * 100))
        await asyncio.sleep(0.1)
        runner.cancel(job)
        await asyncio.sleep(0.1)
        assert runner.num_jobs == 0
        [(num_tokens, position)] = cache.saved  # one checkpoint where prompt processing stopped
        assert num_tokens == position and 0 < position < 100 and position <= model.tokens_consumed
        job = runner.submit(request(model, "q" * 10, max_tokens=3))
        await job.next_event()
        runner.cancel(job)  # cancelled while generating: nothing more to keep
        await asyncio.sleep(0.1)
        assert len(cache.saved) == 1 and runner.num_jobs == 0
    finally:
        await runner.stop()


async def test_a_job_cancelled_after_it_was_scheduled_ends_quietly():
    """A cancel can land between picking a job and its step: before its first step (no state yet)
    or while generating; the step then does nothing and stores nothing."""
    model = FakeModel(lambda ctx: "z")
    cache = RecordingCache(model)
    runner = Runner(lambda: dataclasses.replace(prepare(model, name="fake"), cache=cache),
                    max_queue=8, max_active=4, prefill_chunk=2)
    await runner.start()
    assert await runner.wait_loaded()
    try:
        job = runner.submit(request(model, "p" * 10))
        runner._waiting.remove(job)  # picked, as _next_batch would
        job.cancelled = True
        assert runner._step([job]) == {} and job.state is None
        generating = Job(request(model, "q" * 4))
        runner._step([generating])
        runner._step([generating])  # prompt done, first token sampled
        generating.cancelled = True
        assert runner._step([generating]) == {} and cache.saved == []
    finally:
        await runner.stop()


async def test_a_failing_step_fails_only_that_request(started):
    model = FakeModel(text_reply("ok", "fine"))
    runner = await started(model)
    bad = request(model, "ok")
    bad.prompt_ids = [model.config.n_vocab + 5]  # the fake's tokenizer cannot decode it
    _, end = await drain(runner.submit(bad))
    assert isinstance(end, Failed) and "generation failed" in end.message
    ids, end = await drain(runner.submit(request(model, "ok")))
    assert model.tokenizer.decode(ids) == "fine" and end == Finished("stop")


async def test_load_failure_is_reported():
    def broken():
        raise FileNotFoundError("no such model: /nope.gguf")

    runner = Runner(broken, max_queue=1, max_active=1, prefill_chunk=1)
    await runner.start()
    assert not await runner.wait_loaded()
    assert "no such model" in runner.load_error
    with pytest.raises(NotReady, match="no such model"):
        runner.submit(GenerationRequest(request_id="x", prompt_ids=[1], max_tokens=1, sampler=None))
    await runner.stop()


async def test_logprobs_come_with_tokens_when_asked(started):
    model = FakeModel(text_reply("p", "ab"))
    runner = await started(model)
    job = runner.submit(request(model, "p", num_top_logprobs=2))
    token = await job.next_event()
    assert token.token_id == model.tokenizer.encode("a")[0]
    assert token.logprobs.logprob == pytest.approx(0.0, abs=1e-6)  # the peaked logit dominates
    assert len(token.logprobs.top) == 2 and token.logprobs.top[0][0] == token.token_id
