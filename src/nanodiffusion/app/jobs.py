"""A bounded job queue: a fixed number of jobs run at once (worker threads), a fixed number wait,
and past that a new job is refused at once, so the server answers "busy" instead of piling up
work. Each job streams its events to one asyncio consumer and can be cancelled at any time:
a waiting job never starts, a running one stops at its next sampler step."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from nanodiffusion.app.engine import Cancelled
from nanodiffusion.errors import NanodiffError


class Job:
    """One request's work: its id, its place in line, its events and its cancel flag."""

    def __init__(self, queue: JobQueue, ticket: int, loop: asyncio.AbstractEventLoop):
        self.id = secrets.token_hex(8)  # unguessable: only the client that made it can cancel it
        self.queue, self.ticket, self.loop = queue, ticket, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancel_flag = threading.Event()
        self.started = self.finished = None

    def cancelled(self) -> bool:
        return self.cancel_flag.is_set()

    def cancel(self) -> None:
        self.cancel_flag.set()

    def emit(self, event: dict) -> None:
        """Hand an event to the consumer (from any thread)."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def position(self) -> int:
        """0 while running; k: k jobs run or wait ahead of this one."""
        return self.queue.ahead(self)


class JobQueue:
    """At most ``running`` jobs at once and ``waiting`` in line; ``submit`` returns None past that."""

    def __init__(self, running: int = 1, waiting: int = 4):
        if running < 1 or waiting < 0:
            raise NanodiffError(f"the queue needs running >= 1 and waiting >= 0, got {running}, {waiting}")
        self.running, self.waiting = running, waiting
        self.executor = ThreadPoolExecutor(running, thread_name_prefix="nanodiff-job")
        self.lock = threading.Lock()
        self.jobs: dict[str, Job] = {}  # admitted and not finished, in order of admission
        self.tickets = itertools.count()
        self.durations: list[float] = []  # of finished jobs, for Retry-After

    def submit(self, work: Callable[[Job], None], loop: asyncio.AbstractEventLoop) -> Job | None:
        """Admit `work` (called with its Job in a worker thread), or None when the line is full."""
        with self.lock:
            if len(self.jobs) >= self.running + self.waiting:
                return None
            job = Job(self, next(self.tickets), loop)
            self.jobs[job.id] = job
        self.executor.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work: Callable[[Job], None]) -> None:
        try:
            if job.cancelled():  # cancelled while waiting: never starts
                job.emit({"type": "cancelled"})
                return
            job.started = time.perf_counter()
            job.emit({"type": "start", "job": job.id})
            work(job)
        except Cancelled:
            job.emit({"type": "cancelled"})
        except NanodiffError as e:
            job.emit({"type": "error", "message": str(e)})
        except MemoryError:
            job.emit({"type": "error", "message": "out of memory; try fewer images or a smaller model"})
        except Exception as e:  # a bug: the client gets one line, the server's log the traceback
            traceback.print_exc()
            job.emit({"type": "error", "message": f"internal error: {type(e).__name__}: {e}"})
        finally:
            job.finished = time.perf_counter()
            with self.lock:
                self.jobs.pop(job.id, None)
                if job.started is not None:
                    self.durations = [*self.durations[-19:], job.finished - job.started]
            job.emit({"type": "end"})

    def ahead(self, job: Job) -> int:
        with self.lock:
            if job.started is not None:
                return 0
            return sum(1 for other in self.jobs.values() if other.ticket < job.ticket)

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the line's length times a typical job's time."""
        with self.lock:
            typical = sorted(self.durations)[len(self.durations) // 2] if self.durations else 2.0
            return max(1, round(typical * len(self.jobs) / self.running))

    def shutdown(self) -> None:
        with self.lock:
            for job in self.jobs.values():
                job.cancel()
        self.executor.shutdown(wait=True, cancel_futures=False)
