"""The server's background jobs of one kind (ablations, RL runs): at most one per user, and at most
`max_running` at once. A subclass names its busy error and the two messages it raises."""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

Job = TypeVar("Job")  # a studio.training_jobs.BackgroundJob with a start() that returns it


class JobRegistry(Generic[Job]):
    """The user's latest job by user id; `_start` refuses a second one of a user or one past the cap.
    Subclasses set `busy` (a ValueError class) and the messages `mine_running` (formatted with `job`, the
    user's running one) and `server_full` (with `running` and `cap`)."""

    busy: type[ValueError] = ValueError
    mine_running = "your job is still running; press Stop first, or wait for it to finish"
    server_full = "the server is running {running} job(s) already (its cap is {cap}); try again when one has finished"

    def __init__(self, max_running: int = 1):
        self.max_running = max(1, int(max_running))
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    def get(self, user: str) -> Job | None:
        return self.jobs.get(user)

    def _start(self, user: str, make: Callable[[], Job]) -> Job:
        """Start `make()` (called only once the user and the server are free) as the user's job."""
        with self.lock:
            mine = self.jobs.get(user)
            if mine is not None and mine.running:
                raise self.busy(self.mine_running.format(job=mine))
            running = sum(job.running for job in self.jobs.values())
            if running >= self.max_running:
                raise self.busy(self.server_full.format(running=running, cap=self.max_running))
            job = make()
            self.jobs[user] = job.start()
            return job
