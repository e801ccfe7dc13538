"""A job's event log and its live fan-out to watchers.

:meth:`EventHub.publish` (any thread) numbers and stores an event, then hands it to every
live watcher of that job. :meth:`EventHub.watch` (async) replays the stored history from a
sequence number, then follows live events without gaps or duplicates until the job reaches
a terminal state (or returns after the history when ``follow`` is false).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

from swiftmesh.jobkit import states
from swiftmesh.jobkit.store import JobStore
from swiftmesh.jobkit.types import JobEvent

_END = object()


class EventHub:
    """The live watchers of every job of one store, and the publishing of their events."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._subs: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = {}

    def publish(self, event: JobEvent) -> JobEvent:
        """Store ``event`` (assigning its sequence and time) and deliver it to live watchers."""
        with self._lock:
            event = self.store.append_event(event)
        return self.deliver(event)

    def deliver(self, event: JobEvent) -> JobEvent:
        """Hand an event already stored (e.g. by :meth:`JobStore.update`) to the live watchers
        of its job; they drop duplicates and fetch what they missed, by sequence."""
        with self._lock:
            subs = list(self._subs.get(event.job, ()))
        for loop, q in subs:
            try:
                loop.call_soon_threadsafe(q.put_nowait, event)
            except RuntimeError:  # the watcher's loop is closed
                pass
        return event

    def close_job(self, job: str) -> None:
        """Wake the watchers of a deleted job so they end."""
        with self._lock:
            subs = list(self._subs.get(job, ()))
        for loop, q in subs:
            try:
                loop.call_soon_threadsafe(q.put_nowait, _END)
            except RuntimeError:
                pass

    async def watch(
        self,
        job: str,
        *,
        start_sequence: int = 0,
        follow: bool = True,
        is_terminal: Callable[[], bool] = lambda: False,
    ) -> AsyncIterator[JobEvent]:
        """History from ``start_sequence``, then live events until the job ends."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        key = (loop, q)
        with self._lock:
            self._subs.setdefault(job, set()).add(key)
        try:
            last = max(0, start_sequence - 1)
            while True:
                history = await asyncio.to_thread(self.store.events, job, last + 1, 1000)
                for ev in history:
                    last = ev.sequence
                    yield ev
                if len(history) < 1000:
                    break
            if not follow:
                return
            terminal = await asyncio.to_thread(is_terminal)
            if terminal and q.empty():
                return
            while True:
                if terminal and q.empty():
                    return
                try:
                    ev = await asyncio.wait_for(q.get(), timeout=5.0)
                except TimeoutError:
                    # Safety net: a job that ended without us seeing it (e.g. deleted).
                    terminal = await asyncio.to_thread(is_terminal)
                    continue
                if ev is _END:
                    return
                if ev.sequence <= last:
                    continue
                if ev.sequence > last + 1:  # missed some (published before we subscribed)
                    for missed in await asyncio.to_thread(self.store.events, job, last + 1, ev.sequence - last - 1):
                        last = missed.sequence
                        yield missed
                last = ev.sequence
                yield ev
                if ev.state_change is not None and ev.state_change.state in states.TERMINAL:
                    return
        finally:
            with self._lock:
                subs = self._subs.get(job)
                if subs is not None:
                    subs.discard(key)
                    if not subs:
                        self._subs.pop(job, None)
