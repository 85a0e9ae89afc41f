"""Work off the event loop in daemon threads, so a shutdown never waits for it.

asyncio.to_thread and ThreadPoolExecutor threads are joined when the process exits: a prefill
chunk on a large model, or a tokenization someone else gave up on, would hold SIGTERM for as long
as it runs. Daemon threads are not joined; the daemon decides how long it waits for them.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

from engine.tokenizer import cancel_encoding_on

T = TypeVar("T")


def _run_into(future: Future[Any], fn: Callable[[], Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except BaseException as exc:  # handed to whoever awaits the future
        future.set_exception(exc)


def in_daemon_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run `fn` in a new daemon thread; the returned future settles on the running loop."""
    future: Future[T] = Future()
    threading.Thread(target=_run_into, args=(future, fn), name=name, daemon=True).start()
    return asyncio.wrap_future(future)


async def cancellable(fn: Callable[[], T]) -> T:
    """Run `fn` (tokenizing work) in a daemon thread; when the awaiting task is cancelled (the client
    left, the server stops), tokenization inside `fn` stops at its next slice (engine.tokenizer)."""
    cancel = threading.Event()

    def run() -> T:
        with cancel_encoding_on(cancel):
            return fn()

    try:
        return await in_daemon_thread(run, "agentd-tokenize")
    finally:
        cancel.set()


class DaemonWorker:
    """One daemon thread that runs submitted calls in order (the model's single worker)."""

    def __init__(self, name: str):
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        future: Future[T] = Future()
        self._calls.put((future, fn))
        return asyncio.wrap_future(future)

    def stop(self) -> None:
        """End the thread after the calls already submitted."""
        self._calls.put(None)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            _run_into(*call)
