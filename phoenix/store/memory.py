"""A store in memory: the store interface (base.Store) with the SQLite
journal's semantics and none of its files, for in-process tests of the
master's parts (as procrastinate's in-memory connector is for its workers).

It passes the same contract suite as the two real backends (tests/store/),
so a part tested against it behaves the same on them. It keeps nothing
across a process, takes one writer (no locking), and reads time from `now`
(wall-clock seconds; a test hands in its fake clock's), which also serves as
the backoff clock that the SQLite journal keeps in boot time.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any, Callable, Iterable, Iterator, Self, Sequence

from phoenix.linux.untrusted import check_key, storable, storable_or_none, stored_json
from phoenix.rules.outcomes import CANCELLED_REASON
from phoenix.rules.states import KillReason
from phoenix.store import batches as batch_rules
from phoenix.store.base import (
    ENDED_BADLY,
    JOB_STATES,
    WAITING,
    Job,
    JobState,
    OpenAttempt,
    RetryRefused,
    checkpoint_replaces,
    default_key,
    key_conflict,
    noted_ending,
    timing_differences,
)

# The columns of the SQLite journal's rows that the reads return (job_row, job_by_key).
_JOB_COLUMNS = ("id", "key", "target", "params", "state", "attempts", "failures", "not_before", "outcome", "result",
                "error", "created_at", "updated_at", "priority", "due_at", "run_at", "tick", "checkpoint",
                "checkpoint_at", "checkpoint_attempt", "checkpoint_seq", "batch_id")


class MemoryStore:
    shared = False  # one master writes it (see base.Store)

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self.jobs: dict[int, dict[str, Any]] = {}  # by id, in id order
        self.keys: dict[str, int] = {}  # key -> job id
        self.attempts: dict[int, dict[str, Any]] = {}  # by id
        self.callbacks: dict[int, dict[str, Any]] = {}  # by id
        self.events: list[dict[str, Any]] = []
        self._meta: dict[str, str] = {}  # name -> JSON, as the journal keeps it
        self.pools: dict[str, dict[str, int]] = {}  # name -> {"capacity", "used"}
        self.pool_targets: dict[str, str] = {}  # target -> the pool its jobs take a slot of
        self._ids = itertools.count(1)  # one sequence for every row: ids only need to be unique and rising
        self.batch_rows: dict[str, dict[str, Any]] = {}  # by name, in id order
        self._owed_batch_callbacks: list[tuple[int, int, int, str]] = []

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
        self.close()

    # -- submission -----------------------------------------------------------------------

    def submit(self, target: str, params_json: str, key: str | None = None, *, run_at: float | None = None,
               priority: int = 0, tick: float | None = None) -> tuple[int, bool]:
        if key:
            check_key(key)
        return self._insert_job(key or default_key(target, params_json, run_at, priority), target, params_json,
                                run_at, priority, tick)

    def submit_many(self, jobs: Iterable[tuple[str, str, str]]) -> list[tuple[int, bool]]:
        jobs = list(jobs)
        # All refused, or all recorded: each key checked against the jobs stored and the ones before it here.
        seen: dict[str, tuple[int, str, str]] = {}
        for n, (target, params_json, key) in enumerate(jobs):
            check_key(key)
            known = self.keys.get(key)
            earlier = (known, self.jobs[known]["target"], self.jobs[known]["params"]) if known is not None \
                else seen.get(key)
            if earlier is not None:
                conflict = key_conflict(key, earlier[0], earlier[1:], (target, params_json))
                if conflict is not None:
                    raise conflict
            else:
                seen[key] = (-(n + 1), target, params_json)  # not stored yet: no id to name
        return [self._insert_job(key, target, params_json) for target, params_json, key in jobs]

    def _insert_job(self, key: str, target: str, params_json: str, run_at: float | None = None, priority: int = 0,
                    tick: float | None = None) -> tuple[int, bool]:
        known = self.keys.get(key)
        if known is not None:
            job = self.jobs[known]
            conflict = key_conflict(key, known, (job["target"], job["params"]), (target, params_json),
                                    timing_differences((job["run_at"], job["priority"]), (run_at, priority)))
            if conflict is not None:
                raise conflict
            return known, False
        job_id, now = next(self._ids), self.now()
        state = JobState.SCHEDULED if run_at is not None and run_at > now else JobState.PENDING
        self.jobs[job_id] = {"id": job_id, "key": key, "target": target, "params": params_json,
                             "state": state.value, "attempts": 0, "failures": 0, "not_before": 0.0,
                             "outcome": None, "result": None, "error": None, "created_at": now, "updated_at": now,
                             "priority": priority, "due_at": now if run_at is None else run_at, "run_at": run_at,
                             "tick": tick, "checkpoint": None, "checkpoint_at": None, "checkpoint_attempt": None,
                             "checkpoint_seq": None, "batch_id": None}
        self.keys[key] = job_id
        return job_id, True

    # -- the master's writes ----------------------------------------------------------------

    def pending(self, limit: int) -> list[Job]:
        now = self.now()
        due = sorted((-job["priority"], job["due_at"], job["id"]) for job in self._in_state(JobState.PENDING)
                     if job["not_before"] <= now)
        free = {name: pool["capacity"] - pool["used"] for name, pool in self.pools.items()}
        jobs = []
        for _priority, _due, job_id in due:
            pool = self.pool_targets.get(self.jobs[job_id]["target"])
            if pool is not None:
                if free.get(pool, 0) <= 0:
                    continue  # a full pool holds back only its own jobs
                free[pool] -= 1
            jobs.append(self._job(self.jobs[job_id]))
            if len(jobs) == limit:
                break
        return jobs

    def promote_due(self) -> int:
        now = self.now()
        due = [job for job in self._in_state(JobState.SCHEDULED) if job["due_at"] <= now]
        for job in due:
            job.update(state=JobState.PENDING.value, updated_at=now)
        return len(due)

    def next_scheduled_at(self) -> float | None:
        return min((job["due_at"] for job in self._in_state(JobState.SCHEDULED)), default=None)

    def last_tick(self, target: str, before: float | None = None) -> tuple[float, str] | None:
        ticks = [(job["tick"], str(job["state"])) for job in self.jobs.values() if job["target"] == target
                 and job["tick"] is not None and (before is None or job["tick"] < before)]
        return max(ticks, default=None)

    def set_pools(self, capacities: dict[str, int],
                  targets: dict[str, str | None]) -> list[tuple[str, int | None, int]]:
        changes = []
        for name, capacity in sorted(capacities.items()):
            pool = self.pools.get(name)
            if pool is None or pool["capacity"] != capacity:
                changes.append((name, None if pool is None else pool["capacity"], capacity))
            self.pools.setdefault(name, {"capacity": capacity, "used": 0})["capacity"] = capacity
        for target, pool_name in targets.items():
            if pool_name is None:
                self.pool_targets.pop(target, None)
            else:
                self.pool_targets[target] = pool_name
        return changes

    def pools_status(self) -> list[dict[str, Any]]:
        return [{"pool": name, "capacity": pool["capacity"], "used": pool["used"]}
                for name, pool in sorted(self.pools.items())]

    def claim(self, generation: int, pid: int | None, start_time: int | None) -> tuple[Job, int] | None:
        jobs = self.pending(1)
        if not jobs:
            return None
        return jobs[0], self.begin_attempt(jobs[0], generation, pid, start_time)

    def next_due_in(self) -> float | None:
        now = self.now()
        return min((job["not_before"] - now for job in self._in_state(JobState.PENDING)), default=None)

    def begin_attempt(self, job: Job, generation: int, pid: int | None, start_time: int | None) -> int:
        now = self.now()
        row = self.jobs[job.id]
        row.update(state=JobState.RUNNING.value, attempts=row["attempts"] + 1, updated_at=now)
        pool = self.pool_targets.get(row["target"])
        if pool is not None:
            self.pools[pool]["used"] += 1
        attempt_id = next(self._ids)
        self.attempts[attempt_id] = {
            "id": attempt_id, "job_id": job.id, "n": job.attempts + 1, "generation": generation, "pid": pid,
            "start_time": start_time, "started_at": now, "started_boot": now, "ended_at": None, "outcome": None,
            "reason": None, "error": None, "max_rss_kb": None, "final": None, "pool": pool, "progress": None}
        return attempt_id

    def end_attempt(self, attempt_id: int, job_id: int, *, outcome: str, reason: str | None, error: str | None,
                    result_json: str | None, max_rss_kb: int | None, job_state: str, counts_as_failure: bool,
                    retry_delay: float | None = None, callback: str | None, attempt_n: int,
                    durable: bool = False, start_callback: bool = False) -> tuple[bool, int | None]:
        attempt = self.attempts.get(attempt_id)
        if attempt is None or attempt["outcome"] is not None:
            return False, None  # already recorded
        now = self.now()
        reason, error, result_json = storable_or_none(reason), storable_or_none(error), storable_or_none(result_json)
        attempt.update(outcome=outcome, reason=reason, error=error, max_rss_kb=max_rss_kb, ended_at=now, final=None)
        if attempt["pool"] is not None and self.pools[attempt["pool"]]["used"] > 0:
            self.pools[attempt["pool"]]["used"] -= 1  # its slot, freed by the outcome and only by it
        job = self.jobs[job_id]
        before = job["state"]
        job.update(state=job_state, outcome=outcome, result=result_json, error=error, updated_at=now,
                   not_before=0.0 if retry_delay is None else now + retry_delay,
                   failures=job["failures"] + int(counts_as_failure))
        self._count_for_batch(job, before)
        if callback is None:
            return True, None
        return True, self._owe(job_id, attempt_n, callback)

    def hold_finals(self, finals: list[tuple[int, str]],
                    callbacks_done: Sequence[tuple[int, str | None]] = ()) -> list[bool | None]:
        for attempt_id, data in finals:
            attempt = self.attempts.get(attempt_id)
            if attempt is not None and attempt["outcome"] is None:
                attempt["final"] = data
        return self.callbacks_done(callbacks_done)

    def fail_without_attempt(self, job_id: int, error: str) -> int | None:
        job = self.jobs[job_id]
        before = job["state"]
        job.update(state=JobState.FAILED.value, outcome="error", error=storable(error), updated_at=self.now())
        callback_id = self._owe(job_id, 0, "on_failed")
        self._count_for_batch(job, before)
        return callback_id

    def _owe(self, job_id: int, attempt_n: int, kind: str) -> int | None:
        """A callback owed for the job's end; None if one of that kind is owed or ran already."""
        if any(c["job_id"] == job_id and c["kind"] == kind for c in self.callbacks.values()):
            return None
        callback_id = next(self._ids)
        self.callbacks[callback_id] = {"id": callback_id, "job_id": job_id, "attempt": attempt_n, "kind": kind,
                                       "state": "owed", "runs": 0, "error": None, "created_at": self.now(),
                                       "done_at": None}
        return callback_id

    def callback_started(self, callback_id: int) -> None:
        self.callbacks[callback_id]["runs"] += 1

    def start_callback(self, callback_id: int, job_id: int,
                       n: int) -> tuple[dict[str, Any], str | None, int | None] | None:
        row = self.job_row(job_id)
        assert row is not None  # a job owing a callback is never pruned
        reason, max_rss_kb = self.attempt_end(job_id, n)
        self.callback_started(callback_id)
        return row, reason, max_rss_kb

    def callback_done(self, callback_id: int, error: str | None) -> None:
        self.callbacks[callback_id].update(state="done", error=storable_or_none(error), done_at=self.now())

    def callbacks_done(self, done: Sequence[tuple[int, str | None]]) -> list[bool | None]:
        for callback_id, error in done:
            self.callback_done(callback_id, error)
        return [None] * len(done)

    def owed_callbacks(self) -> list[tuple[int, int, int, str]]:
        return [(c["id"], c["job_id"], c["attempt"], c["kind"]) for c in self.callbacks.values()
                if c["state"] == "owed"]

    def open_attempts(self) -> list[OpenAttempt]:
        return [OpenAttempt(a["id"], a["job_id"], self.jobs[a["job_id"]]["key"], self.jobs[a["job_id"]]["target"],
                            a["n"], a["pid"], a["start_time"], a["generation"], a["started_at"], a["started_boot"],
                            a["final"], ending=noted_ending(a["reason"]))
                for a in self.attempts.values() if a["outcome"] is None]

    def targets_in_use(self) -> list[tuple[str, int, int]]:
        in_use: dict[str, list[int]] = {}
        for job in self.jobs.values():
            if job["state"] in (JobState.PENDING, JobState.RUNNING):
                in_use.setdefault(job["target"], [0, 0])[job["state"] == JobState.RUNNING] += 1
        return [(target, pending, running) for target, (pending, running) in sorted(in_use.items())]

    def job_row(self, job_id: int) -> dict[str, Any] | None:
        job = self.jobs.get(job_id)
        return None if job is None else {column: job[column] for column in _JOB_COLUMNS}

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(JOB_STATES, 0)
        for job in self.jobs.values():
            counts[job["state"]] += 1
        return counts

    def pending_count(self) -> int:
        return sum(1 for _job in self._in_state(JobState.PENDING))

    def batch_counts(self, run_started: float) -> dict[str, int]:
        counts = dict.fromkeys(JOB_STATES, 0)
        for job in self.jobs.values():
            if job["state"] in (*WAITING, JobState.RUNNING) or job["updated_at"] >= run_started:
                counts[job["state"]] += 1
        counts["pending"] += counts.pop("scheduled")  # a delayed job is work the batch still has
        return counts

    def record_event(self, kind: str, generation: int | None, pid: int | None, detail: str | None = None) -> None:
        self.events.append({"id": next(self._ids), "at": self.now(), "kind": kind, "generation": generation,
                            "pid": pid, "detail": storable_or_none(detail)})

    def count_events(self, kind: str) -> int:
        return sum(1 for event in self.events if event["kind"] == kind)

    def set_meta(self, **values: Any) -> None:
        self._meta.update((name, json.dumps(value)) for name, value in values.items())

    def meta(self, name: str, default: Any = None, *, counter: bool = False) -> Any:
        value = self._meta.get(name)  # (only set_meta writes it: never damaged)
        return default if value is None else json.loads(value)

    def probe_write(self) -> None:
        """Memory can always be written."""

    # -- reads for status, report and the operator's commands -----------------------------------

    def attempt_end(self, job_id: int, n: int) -> tuple[str | None, int | None]:
        attempt = self._attempt(job_id, n)
        return (None, None) if attempt is None else (attempt["reason"], attempt["max_rss_kb"])

    def recent_failures(self, limit: int) -> list[dict[str, Any]]:
        failed = sorted(self._in_state(JobState.FAILED), key=lambda j: (j["updated_at"], j["id"]), reverse=True)
        rows = []
        for job in failed[:limit]:
            last = self._attempt(job["id"], job["attempts"]) or {}
            rows.append({"key": job["key"], "target": job["target"], "outcome": job["outcome"],
                         "reason": last.get("reason"), "error": job["error"], "max_rss_kb": last.get("max_rss_kb"),
                         "failed_at": job["updated_at"]})
        return rows

    def master_times(self) -> tuple[float | None, float | None]:
        starts = [event for event in self.events if event["kind"] == "master_start"]
        if not starts:
            return None, None
        last = starts[-1]
        reloads = [e["at"] for e in self.events if e["kind"] == "replaced" and e["id"] > last["id"]]
        return last["at"], max(reloads, default=None)

    def status_rows(self, *, state: str | None = None, after: int = 0,
                    limit: int | None = None) -> Iterator[dict[str, Any]]:
        jobs = [job for job in self.jobs.values() if job["id"] > after and (state is None or job["state"] == state)]
        for job in jobs[:limit]:
            running = next((a for a in self.attempts.values() if a["job_id"] == job["id"] and a["outcome"] is None),
                           None)
            last = self._attempt(job["id"], job["attempts"]) or {}
            yield {
                "id": job["id"], "key": job["key"], "target": job["target"], "params": stored_json(job["params"]),
                "state": job["state"], "attempt": job["attempts"],
                "pid": running["pid"] if running is not None and job["state"] == JobState.RUNNING else None,
                "outcome": job["outcome"], "error": job["error"],
                "result": stored_json(job["result"]) if job["result"] is not None else None,
                "reason": last.get("reason"), "max_rss_kb": last.get("max_rss_kb"), "progress": last.get("progress"),
            }

    def timeline_recent(self, limit: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
        shown = [job for job in self.jobs.values() if job["attempts"] > 0 or job["state"] == JobState.FAILED]
        shown = sorted(shown, key=lambda j: (j["updated_at"], j["id"]), reverse=True)[:limit]
        jobs = [{"job_id": j["id"], "key": j["key"], "target": j["target"], "state": j["state"],
                 "attempts": j["attempts"], "error": j["error"], "updated_at": j["updated_at"]}
                for j in sorted(shown, key=lambda j: j["id"])]
        ids = {job["job_id"] for job in jobs}
        attempts = [{"job_id": a["job_id"], "key": self.jobs[a["job_id"]]["key"], "n": a["n"], "pid": a["pid"],
                     "started_at": a["started_at"], "ended_at": a["ended_at"], "outcome": a["outcome"],
                     "reason": a["reason"], "error": a["error"], "progress": a["progress"]}
                    for a in sorted(self.attempts.values(), key=lambda a: (a["job_id"], a["n"])) if a["job_id"] in ids]
        unstarted = sum(1 for job in self._in_state(JobState.PENDING) if job["attempts"] == 0)
        return jobs, attempts, unstarted

    def timeline_events(self) -> list[dict[str, Any]]:
        return [{name: event[name] for name in ("at", "kind", "generation", "pid", "detail")}
                for event in sorted(self.events, key=lambda e: e["at"])]

    def list_jobs(self, *, state: str | None, target: str | None, since: float | None,
                  limit: int, after: tuple[float, int] | None = None,
                  key_prefix: str | None = None, batch_id: int | None = None) -> tuple[list[dict[str, Any]], int]:
        def matches(job: dict[str, Any]) -> bool:
            return ((state is None or job["state"] == state) and (target is None or job["target"] == target)
                    and (since is None or job["updated_at"] >= since)
                    and (key_prefix is None or job["key"].startswith(key_prefix))
                    and (batch_id is None or job["batch_id"] == batch_id)
                    and (after is None or (job["updated_at"], job["id"]) < after))

        found = sorted(filter(matches, self.jobs.values()), key=lambda j: (j["updated_at"], j["id"]), reverse=True)
        rows = []
        for job in found[:limit]:
            last = self._attempt(job["id"], job["attempts"]) or {}
            rows.append({"id": job["id"], "key": job["key"], "target": job["target"], "state": job["state"],
                         "attempts": job["attempts"], "outcome": job["outcome"], "reason": last.get("reason"),
                         "created_at": job["created_at"], "updated_at": job["updated_at"]})
        return rows, len(found)

    def job_by_key(self, key: str) -> dict[str, Any] | None:
        job_id = self.keys.get(key)
        return None if job_id is None else self.job_row(job_id)

    def attempts_of(self, job_id: int) -> list[dict[str, Any]]:
        columns = ("n", "generation", "pid", "started_at", "ended_at", "outcome", "reason", "error", "max_rss_kb",
                   "progress")
        return [{column: a[column] for column in columns}
                for a in sorted(self.attempts.values(), key=lambda a: a["n"]) if a["job_id"] == job_id]

    def retry(self, keys: list[str] | None, target: str | None = None, fresh: bool = False) -> list[str]:
        if keys is None:
            jobs = [job for job in self._in_state(JobState.FAILED) if target is None or job["target"] == target]
        else:
            jobs = []
            for key in dict.fromkeys(keys):
                job_id = self.keys.get(key)
                if job_id is None:
                    raise RetryRefused(f"no job with key {key!r}")
                job = self.jobs[job_id]
                if job["state"] not in ENDED_BADLY:
                    raise RetryRefused(f"job {key!r} is {job['state']}: only failed or cancelled jobs can be retried")
                jobs.append(job)
        for job in jobs:  # all or none: every job is checked before any is changed
            if any(c["job_id"] == job["id"] and c["state"] == "owed" and not self._withdrawn_with_its_cancel(job, c)
                   for c in self.callbacks.values()):
                raise RetryRefused(f"job {job['key']!r} still has a callback owed (it runs when a master runs): "
                                   "retry it once that has run")
            if job["batch_id"] is not None and any(
                    c["kind"] == batch_rules.KIND and c["state"] == "owed"
                    and self.jobs[c["job_id"]]["batch_id"] == job["batch_id"] for c in self.callbacks.values()):
                raise batch_rules.owed_refusal(job["key"])
        now = self.now()
        for job in jobs:
            # The callbacks that ran for its end go, so that its next end calls them again.
            self.callbacks = {i: c for i, c in self.callbacks.items() if c["job_id"] != job["id"]}
            before = job["state"]
            state = JobState.SCHEDULED if job["due_at"] > now else JobState.PENDING  # a delayed job waits again
            job.update(state=state.value, failures=0, not_before=0.0, updated_at=now)
            if fresh:
                job.update(checkpoint=None, checkpoint_at=None)
            self._count_for_batch(job, before)
        return [job["key"] for job in jobs]

    # -- long jobs ------------------------------------------------------------------------

    def save_checkpoints(self, saves: list[tuple[int, int, int, str]]) -> None:
        now = self.now()
        for job_id, n, seq, text in saves:
            job = self.jobs.get(job_id)
            if job is not None and checkpoint_replaces(job, n, seq):
                job.update(checkpoint=text, checkpoint_at=now, checkpoint_attempt=n, checkpoint_seq=seq)

    def checkpoint_of(self, job_id: int) -> str | None:
        job = self.jobs.get(job_id)
        return None if job is None else job["checkpoint"]

    def save_progress(self, reported: list[tuple[int, str]]) -> None:
        for attempt_id, text in reported:
            if attempt_id in self.attempts:
                self.attempts[attempt_id]["progress"] = text

    @staticmethod
    def _withdrawn_with_its_cancel(job: dict[str, Any], callback: dict[str, Any]) -> bool:
        """base.WITHDRAWN_WITH_ITS_CANCEL, for one job and one of its callbacks."""
        return bool(job["state"] == JobState.CANCELLED and callback["kind"] == "on_failed" and callback["runs"] == 0)

    def request_cancel(self, attempt_id: int) -> None:
        self.note_kill(attempt_id, KillReason.CANCELLED)

    def note_kill(self, attempt_id: int, reason: KillReason) -> None:
        attempt = self.attempts.get(attempt_id)
        if attempt is not None and attempt["outcome"] is None:
            attempt["reason"] = str(reason)

    def cancel_pending(self, key: str) -> str | None:
        job_id = self.keys.get(key)
        if job_id is None:
            return None
        job = self.jobs[job_id]
        state = str(job["state"])
        if state in WAITING:
            job.update(state=JobState.CANCELLED.value, outcome="cancelled", error=f"{CANCELLED_REASON} before it ran",
                       updated_at=self.now())
            last_n = max((a["n"] for a in self.attempts.values() if a["job_id"] == job_id), default=0)
            self._owe(job_id, last_n, "on_failed")
            self._count_for_batch(job, state)
        return state

    # -- batches (as the SQLite journal's trigger and statements: batches.py) ----------------------

    def submit_to_batch(self, name: str, jobs: Iterable[tuple[Any, ...]]) -> list[tuple[int, bool]]:
        batch_rules.check_name(name)
        jobs = batch_rules.members(jobs)
        batch = self.batch_rows.get(name)
        if batch is not None and batch["state"] != "open":
            raise batch_rules.closed_refusal(name, batch["state"])
        for target, params_json, key, run_at, priority in jobs:  # all refused, or all recorded
            check_key(key)
            known = self.keys.get(key)
            if known is None:
                continue
            job = self.jobs[known]
            conflict = key_conflict(key, known, (job["target"], job["params"]), (target, params_json),
                                    timing_differences((job["run_at"], job["priority"]), (run_at, priority)))
            if conflict is not None:
                raise conflict
            member_of = self.jobs[known]["batch_id"]
            if batch is None or member_of != batch["id"]:
                other = next((b["name"] for b in self.batch_rows.values() if b["id"] == member_of), None)
                raise batch_rules.not_member_refusal(key, known, name, other)
        if batch is None:
            batch = self.batch_rows[name] = {
                "id": next(self._ids), "name": name, "state": "open", "jobs": 0, "remaining": 0, "completions": 0,
                "created_at": self.now(), "closed_at": None, "completed_at": None}
        submitted = []
        for target, params_json, key, run_at, priority in jobs:
            job_id, created = self._insert_job(key, target, params_json, run_at=run_at, priority=priority)
            if created:
                self.jobs[job_id]["batch_id"] = batch["id"]
                batch["jobs"] += 1
                batch["remaining"] += 1
            submitted.append((job_id, created))
        return submitted

    def close_batch(self, name: str) -> str:
        batch = self.batch_rows.get(name)
        if batch is None:
            raise batch_rules.unknown_refusal(name)
        if batch["state"] != "open":
            return str(batch["state"])
        now = self.now()
        if batch["remaining"]:
            batch.update(state="closed", closed_at=now)
            return "closed"
        batch.update(state="complete", closed_at=now, completed_at=now, completions=1)
        members = [job for job in self.jobs.values() if job["batch_id"] == batch["id"]]
        if members:
            last = max(members, key=lambda job: (job["updated_at"], job["id"]))
            self._owe(last["id"], last["attempts"], batch_rules.KIND)
        return "complete"

    def batches(self, name: str | None = None, batch_id: int | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
        shown: list[dict[str, Any]] = []
        for batch in reversed(self.batch_rows.values()):
            if limit is not None and len(shown) == limit:
                break
            if (name is None or batch["name"] == name) and (batch_id is None or batch["id"] == batch_id):
                counts: dict[str, int] = {}
                for job in self.jobs.values():
                    if job["batch_id"] == batch["id"]:
                        counts[job["state"]] = counts.get(job["state"], 0) + 1
                shown.append({**batch, "counts": dict(sorted(counts.items()))})
        return shown

    def batch_jobs(self, batch_id: int) -> list[dict[str, Any]]:
        return [{"id": job["id"], "key": job["key"], "target": job["target"], "state": job["state"],
                 "attempts": job["attempts"], "outcome": job["outcome"],
                 "reason": (self._attempt(job["id"], job["attempts"]) or {}).get("reason"),
                 "created_at": job["created_at"], "updated_at": job["updated_at"]}
                for job in self.jobs.values() if job["batch_id"] == batch_id]

    def take_owed_batch_callbacks(self) -> list[tuple[int, int, int, str]]:
        owed, self._owed_batch_callbacks = self._owed_batch_callbacks, []
        return owed

    def _count_for_batch(self, job: dict[str, Any], before: str) -> None:
        """What the journal's triggers do when a member's state moves into or
        out of the final states: the remaining count, the completion and its
        callback, or the batch re-opened."""
        batch = next((b for b in self.batch_rows.values() if b["id"] == job["batch_id"]), None)
        if batch is None:
            return
        ended, was_ended = job["state"] in batch_rules.FINAL_STATES, before in batch_rules.FINAL_STATES
        if ended and not was_ended:
            batch["remaining"] -= 1
            if batch["remaining"] == 0 and batch["state"] == "closed":
                batch.update(state="complete", completed_at=job["updated_at"], completions=batch["completions"] + 1)
                callback_id = self._owe(job["id"], job["attempts"], batch_rules.KIND)
                if callback_id is not None:
                    self._owed_batch_callbacks.append((callback_id, job["id"], job["attempts"], batch_rules.KIND))
        elif was_ended and not ended:
            batch["remaining"] += 1
            batch.update(state="closed" if batch["state"] == "complete" else batch["state"], completed_at=None)
            self.callbacks = {i: c for i, c in self.callbacks.items()
                              if not (c["kind"] == batch_rules.KIND and c["state"] == "done"
                                      and self.jobs[c["job_id"]]["batch_id"] == batch["id"])}

    def prune(self, *, finished_before: float, failed_before: float | None, batch: int = 500) -> dict[str, int]:
        owing = {c["job_id"] for c in self.callbacks.values() if c["state"] == "owed"}

        def ended(job: dict[str, Any]) -> bool:
            if job["state"] == JobState.FINISHED:
                return bool(job["updated_at"] < finished_before)
            return failed_before is not None and job["state"] in ENDED_BADLY and job["updated_at"] < failed_before

        batch_owing = {self.jobs[c["job_id"]]["batch_id"] for c in self.callbacks.values()
                       if c["kind"] == batch_rules.KIND and c["state"] == "owed"}
        complete = {b["id"] for b in self.batch_rows.values() if b["state"] == "complete"} - batch_owing
        newest = max(self.jobs, default=None)  # base.NOT_NEWEST
        gone = {job_id for job_id, job in self.jobs.items() if ended(job) and job_id not in owing
                and job_id != newest and (job["batch_id"] is None or job["batch_id"] in complete)}  # batches.PRUNABLE
        removed = {"jobs": len(gone),
                   "attempts": sum(1 for a in self.attempts.values() if a["job_id"] in gone),
                   "callbacks": sum(1 for c in self.callbacks.values() if c["job_id"] in gone)}
        self.attempts = {i: a for i, a in self.attempts.items() if a["job_id"] not in gone}
        self.callbacks = {i: c for i, c in self.callbacks.items() if c["job_id"] not in gone}
        for job_id in gone:
            del self.keys[self.jobs.pop(job_id)["key"]]
        # Never the last master's start nor what followed it (master_times reads them).
        last_start = max((e["id"] for e in self.events if e["kind"] == "master_start"), default=None)
        kept = [e for e in self.events if e["at"] >= finished_before or (last_start is not None
                                                                         and e["id"] >= last_start)]
        removed["events"] = len(self.events) - len(kept)
        self.events = kept
        return removed

    # -- helpers --------------------------------------------------------------------------

    def _in_state(self, state: JobState) -> Iterator[dict[str, Any]]:
        return (job for job in self.jobs.values() if job["state"] == state)

    def _attempt(self, job_id: int, n: int) -> dict[str, Any] | None:
        return next((a for a in self.attempts.values() if a["job_id"] == job_id and a["n"] == n), None)

    @staticmethod
    def _job(row: dict[str, Any]) -> Job:
        return Job(row["id"], row["key"], row["target"], row["params"], row["attempts"], row["failures"],
                   row["checkpoint"])
