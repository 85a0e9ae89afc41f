"""The one owner of the model: admits requests, batches them step by step, streams tokens back.

Handlers never touch the model. They `submit` a `GenerationRequest`, read the `Job`'s events
(`Token`... then `Finished` or `Failed`) and `cancel` it when they leave early. Up to `max_active`
jobs are admitted; the rest wait in FIFO order. Every step, in the runner's single worker thread,
one forward pass carries the next token of every generating job (one weight read for all of
them) plus a chunk of one prompt being processed (prompts take turns), sized by
`agentd.pace.StepPace` so running streams are not stalled by a long prompt. The event loop stays
free while the model works, and a cancelled job leaves the batch at the next step. A sequence's
logits do not depend on the batch (see `engine.Model.forward_segments`), so greedy output is the
same as when requests run one by one. A pass that raises fails the requests in it.

Per-request counting follows one vocabulary: `num_tokens` (prompt), `num_cached_tokens` (restored
from a cache, a head start), `num_computed_tokens` (consumed by the model so far).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

from agentd.loader import LoadedModel
from agentd.metrics import Metrics
from agentd.pace import StepPace
from agentd.threads import DaemonWorker, in_daemon_thread
from engine.sampling import TokenLogprob

log = logging.getLogger("agentd")

STEP_GRACE_SECONDS = 0.5  # how long a shutdown waits for the model step in progress


class QueueFull(Exception):
    """More requests than `max_queue` are admitted; the caller should retry later."""


class NotReady(Exception):
    """The model is still loading, or failed to load."""


@dataclass(kw_only=True)
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    max_tokens: int  # >= 1, already bounded by the context
    sampler: Any  # engine.sampling.Sampler: sample(logits, history, mask), logprobs(logits, id, n)
    constraint: Any = None  # engine.constraint.Constraint: mask(), advance(id), is_done()
    num_top_logprobs: int | None = None  # None: no logprobs; 0: only the chosen token's


@dataclass(frozen=True, slots=True)
class Token:
    token_id: int
    logprobs: TokenLogprob | None = None  # when the request asked for them


@dataclass(slots=True)
class JobStats:
    num_tokens: int
    num_cached_tokens: int = 0
    num_matched_tokens: int = 0  # prompt agreement with the cache: the first differing token on a miss
    num_generated_tokens: int = 0
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # first step
    first_token_at: float | None = None
    finished_at: float | None = None

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.submitted_at

    @property
    def prompt_tokens_per_second(self) -> float | None:
        if self.first_token_at is None or self.started_at is None:
            return None
        computed = self.num_tokens - self.num_cached_tokens
        return computed / max(self.first_token_at - self.started_at, 1e-9)

    @property
    def generation_tokens_per_second(self) -> float | None:
        if self.first_token_at is None or self.finished_at is None or self.num_generated_tokens < 2:
            return None
        return (self.num_generated_tokens - 1) / max(self.finished_at - self.first_token_at, 1e-9)


@dataclass(frozen=True, slots=True)
class Finished:
    reason: Literal["stop", "length"]  # stop: end-of-generation token or the grammar completed


@dataclass(frozen=True, slots=True)
class Failed:
    message: str


Event = Token | Finished | Failed


class Job:
    """One admitted request: its model state, progress, and the queue its events arrive on."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self.stats = JobStats(num_tokens=len(request.prompt_ids))
        self.cancelled = False
        self.done = False
        self.state: Any = None  # engine State, created on the first step
        self.num_computed_tokens = 0
        self.checkpoints: collections.deque[int] = collections.deque()  # positions still to store
        self.stored_position = 0  # the state's deepest position the session cache holds
        self.generated: list[int] = []
        self.last_token_at: float | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()

    async def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, or None when `timeout` seconds pass first (time for a keep-alive)."""
        try:
            return await asyncio.wait_for(self._events.get(), timeout)
        except TimeoutError:
            return None


class Runner:
    def __init__(
        self,
        load: Callable[[], LoadedModel],
        *,
        max_queue: int,
        max_active: int,
        prefill_chunk: int,
        metrics: Metrics | None = None,
    ):
        self._load = load
        self.max_queue = max_queue
        self.max_active = max_active
        self.prefill_chunk = prefill_chunk
        self.metrics = metrics or Metrics()
        self.loaded: LoadedModel | None = None
        self.load_error: str | None = None
        self._worker = DaemonWorker("agentd-model")
        self._step_running: asyncio.Future[list[Event]] | None = None
        self.stopping = False  # set on shutdown: steps still running store nothing more
        self._waiting: collections.deque[Job] = collections.deque()
        self._active: collections.deque[Job] = collections.deque()
        self._jobs: set[Job] = set()
        self._wakeup = asyncio.Event()
        self._settled = asyncio.Event()  # loading ended, either way
        self._task: asyncio.Task[None] | None = None
        self.pace = StepPace()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin loading the model in the background; requests get `NotReady` until it is in."""
        self._task = asyncio.create_task(self._main(), name="agentd-runner")

    async def stop(self, grace: float = STEP_GRACE_SECONDS) -> None:
        """Fail every job, wait up to `grace` seconds for the model step in progress (a prefill chunk
        of a large model can take much longer; its thread does not hold the exit), flush the cache."""
        self.stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.fail_all("server shutting down")
        self._worker.stop()
        if self._step_running is not None and not self._step_running.done():
            await asyncio.wait({self._step_running}, timeout=grace)
            if not self._step_running.done():
                log.warning("a model step is still running after %.1f s; not waiting for it", grace)
        if self.loaded is not None and self.loaded.cache is not None:
            self.loaded.cache.close()  # flushes pending disk writes

    def fail_all(self, message: str) -> None:
        """End every admitted job with `Failed(message)`, so their handlers can answer and return."""
        for job in list(self._jobs):
            self._finish(job, Failed(message))

    async def wait_loaded(self) -> bool:
        """Wait for loading to end; True when the model is ready."""
        await self._settled.wait()
        return self.loaded is not None

    def require_ready(self) -> LoadedModel:
        if self.loaded is None:
            raise NotReady(self.load_error or "Loading model")
        return self.loaded

    @property
    def num_jobs(self) -> int:
        return len(self._jobs)

    async def _load_model(self) -> LoadedModel:
        """Load in a daemon thread: a Ctrl-C during a long load ends the process at once."""
        return await in_daemon_thread(self._load, "agentd-load")

    async def _main(self) -> None:
        try:
            self.loaded = await self._load_model()
        except Exception as exc:
            self.load_error = f"model failed to load: {exc}"
            log.error("%s", self.load_error)
            return
        finally:
            self._settled.set()
        self.metrics.model_loaded.set(1)
        while True:
            jobs = await self._next_batch()
            try:
                self._step_running = self._worker.submit(functools.partial(self._step, jobs))
                events = await asyncio.shield(self._step_running)
            except Exception as exc:
                log.exception("requests %s failed in the model", ", ".join(j.request.request_id for j in jobs))
                for job in jobs:
                    if not job.done:
                        self._finish(job, Failed(f"generation failed: {type(exc).__name__}: {exc}"))
                continue
            for job in jobs:
                self._deliver(job, events.get(job, []))

    # -- admission --------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> Job:
        self.require_ready()
        if len(self._jobs) >= self.max_queue:
            raise QueueFull(f"{len(self._jobs)} requests in progress (--max-queue {self.max_queue})")
        job = Job(request)
        self._jobs.add(job)
        self._waiting.append(job)
        self._update_gauges()
        self._wakeup.set()
        return job

    def cancel(self, job: Job) -> None:
        """Stop a job (no-op once finished); its state is dropped before the next step."""
        if job.done:
            return
        job.cancelled = True
        if job in self._waiting:
            self._waiting.remove(job)
            self._release(job)
        self._wakeup.set()

    async def _next_batch(self) -> list[Job]:
        """The jobs of the next step: every generating one, one whose prompt is being processed
        (taking turns), and cancelled ones with prompt processing to store (see `_step`)."""
        while True:
            while self._waiting and len(self._active) < self.max_active:
                self._active.append(self._waiting.popleft())
            for job in [j for j in self._active if j.cancelled and not self._has_unstored_prefill(j)]:
                self._release(job)
            self._update_gauges()
            if self._active:
                break
            self._wakeup.clear()
            await self._wakeup.wait()
        storing = [j for j in self._active if j.cancelled]
        prompting = [j for j in self._active if not j.cancelled and not self._prompt_done(j)]
        if prompting:  # its turn is taken: the next prompt goes first next time
            self._active.remove(prompting[0])
            self._active.append(prompting[0])
        generating = [j for j in self._active if not j.cancelled and self._prompt_done(j)]
        return generating + prompting[:1] + storing

    @staticmethod
    def _prompt_done(job: Job) -> bool:
        return job.state is not None and job.num_computed_tokens >= len(job.request.prompt_ids)

    def _deliver(self, job: Job, events: list[Event]) -> None:
        if job.cancelled and not job.done and self._has_unstored_prefill(job):
            return  # the next step stores its prompt processing (see _step)
        if job.cancelled or job.done:  # cancelled, or failed by fail_all() during its step
            self._release(job)
            return
        for event in events:
            if isinstance(event, Token):
                now = time.monotonic()
                if job.last_token_at is not None:
                    self.metrics.inter_token_seconds.observe(now - job.last_token_at)
                job.last_token_at = now
                job._events.put_nowait(event)
            else:
                self._finish(job, event)
                return

    def _finish(self, job: Job, event: Finished | Failed) -> None:
        stats = job.stats
        stats.finished_at = time.monotonic()
        if isinstance(event, Finished):
            self._record(stats)
        job._events.put_nowait(event)
        self._release(job)

    def _has_unstored_prefill(self, job: Job) -> bool:
        """Prompt processing done but not yet in the session cache (kept when a client gives up
        during a long prefill, so its retry resumes there)."""
        if self.loaded is None or self.loaded.cache is None or job.state is None:
            return False
        return job.stored_position < job.state.position < len(job.request.prompt_ids)

    def _release(self, job: Job) -> None:
        job.done = True
        job.state = None
        self._jobs.discard(job)
        with contextlib.suppress(ValueError):
            self._active.remove(job)
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(len(self._waiting))
        self.metrics.requests_running.set(len(self._jobs) - len(self._waiting))

    def _record(self, stats: JobStats) -> None:
        m = self.metrics
        m.prompt_tokens.inc(stats.num_tokens)
        m.cached_tokens.inc(stats.num_cached_tokens)
        m.prompt_tokens_computed.inc(stats.num_tokens - stats.num_cached_tokens)
        m.generation_tokens.inc(stats.num_generated_tokens)
        if stats.first_token_at is not None and stats.started_at is not None:
            m.prompt_seconds.inc(stats.first_token_at - stats.started_at)
            m.time_to_first_token.observe(stats.time_to_first_token)
            m.prompt_tokens_per_second.set(stats.prompt_tokens_per_second)
            if stats.finished_at is not None:
                m.generation_seconds.inc(stats.finished_at - stats.first_token_at)
        if stats.generation_tokens_per_second is not None:
            m.generation_tokens_per_second.set(stats.generation_tokens_per_second)

    # -- model work (worker thread only) ----------------------------------------------------

    def _begin(self, job: Job) -> None:
        """Create the job's state: restored from the session cache's deepest checkpoint that is a
        proper prefix of the prompt (at least one prompt token is left to compute, for logits),
        or fresh. `_step` computes the rest and stores checkpoints where `_chunk_end` stops."""
        loaded = self.require_ready()
        prompt = job.request.prompt_ids
        job.stats.started_at = time.monotonic()
        if loaded.cache is None:
            job.state = loaded.model.new_state()
            job.num_computed_tokens = job.stats.num_cached_tokens = 0
            return
        restored = loaded.cache.restore(prompt)
        job.state = restored.state
        job.num_computed_tokens = job.stats.num_cached_tokens = job.stored_position = restored.num_cached_tokens
        job.stats.num_matched_tokens = restored.num_matched_tokens
        job.checkpoints = collections.deque(loaded.cache.positions(prompt, restored.num_cached_tokens))
        if restored.tier is not None:
            self.metrics.cache_hits.labels(restored.tier).inc()
        else:
            self.metrics.cache_misses.inc()

    def _chunk_end(self, job: Job, budget: int) -> int:
        """Where this prefill chunk stops: after `budget` tokens, or at the next checkpoint
        position, so the state can be stored exactly there."""
        end = min(job.num_computed_tokens + budget, len(job.request.prompt_ids))
        return min(end, job.checkpoints[0]) if job.checkpoints else end

    def _store_checkpoint(self, job: Job, tokens: list[int]) -> None:
        cache = self.require_ready().cache
        if cache is not None and not self.stopping:  # a closing cache takes no more writes
            cache.save(tokens[: job.state.position], job.state)
            job.stored_position = job.state.position

    def _step(self, jobs: list[Job]) -> dict[Job, list[Event]]:
        """One forward pass: a decode row per generating job, a chunk of each unfinished prompt
        (the runner sends one) within the pace's budget. Cancelled jobs only store their prompt
        processing. Returns the events each job produced."""
        model = self.require_ready().model
        started = time.monotonic()
        budget = self.pace.chunk_budget(sum(self._prompt_done(j) for j in jobs), self.prefill_chunk)
        runs: list[tuple[Job, list[int]]] = []
        num_decoding = 0
        for job in jobs:
            prompt = job.request.prompt_ids
            if job.cancelled:  # cancelled once scheduled: only prompt processing is worth keeping
                if self._has_unstored_prefill(job):
                    self._store_checkpoint(job, prompt)
                continue
            if job.state is None:
                self._begin(job)
            if job.num_computed_tokens < len(prompt):
                runs.append((job, prompt[job.num_computed_tokens : self._chunk_end(job, budget)]))
            else:
                runs.append((job, job.generated[-1:]))
                num_decoding += 1
        if not runs:
            return {}
        segments = [tokens for _, tokens in runs]
        logits = model.forward_segments(segments, [job.state for job, _ in runs])
        events = {job: self._advance(job, tokens, row) for (job, tokens), row in zip(runs, logits)}
        self.pace.record(time.monotonic() - started, num_decoding, sum(map(len, segments)) - num_decoding)
        self.metrics.batch_size.observe(len(runs))
        self.metrics.step_tokens.observe(sum(map(len, segments)))
        return events

    def _advance(self, job: Job, tokens: list[int], logits: np.ndarray) -> list[Event]:
        """Account for `tokens` having run; store a checkpoint that lands here; sample once the
        prompt is done."""
        prompt = job.request.prompt_ids
        prompting = job.num_computed_tokens < len(prompt)
        job.num_computed_tokens += len(tokens)
        if prompting:
            if job.checkpoints and job.num_computed_tokens == job.checkpoints[0]:
                job.checkpoints.popleft()
                self._store_checkpoint(job, prompt)
            if job.num_computed_tokens < len(prompt):
                return []
        events = self._sample(job, np.asarray(logits, dtype=np.float32))
        if events and isinstance(events[-1], Finished):
            self._end(job)
        return events

    def _end(self, job: Job) -> None:
        """Store the end of generation, then hand the state to the cache to keep live: the next
        turn of this conversation restores into it, its KV rows already in place."""
        cache = self.require_ready().cache
        if cache is None or self.stopping:
            return
        tokens = (job.request.prompt_ids + job.generated)[: job.state.position]
        if job.state.position > len(job.request.prompt_ids):
            self._store_checkpoint(job, tokens)
        cache.keep_live(tokens, job.state)
        job.state = None

    def _sample(self, job: Job, logits: np.ndarray) -> list[Event]:
        request = job.request
        constraint = request.constraint
        mask = constraint.mask() if constraint is not None else None
        token_id = int(request.sampler.sample(logits, job.generated, mask))
        if constraint is not None:
            constraint.advance(token_id)
        now = time.monotonic()
        if job.stats.first_token_at is None:
            job.stats.first_token_at = now
        if token_id in self.require_ready().model.tokenizer.eog_ids:
            return [Finished("stop")]
        job.generated.append(token_id)
        job.stats.num_generated_tokens += 1
        token = Token(token_id)
        if request.num_top_logprobs is not None:
            token = Token(token_id, request.sampler.logprobs(logits, token_id, request.num_top_logprobs))
        events: list[Event] = [token]
        if constraint is not None and constraint.is_done():
            events.append(Finished("stop"))
        elif len(job.generated) >= request.max_tokens:
            events.append(Finished("length"))
        return events
