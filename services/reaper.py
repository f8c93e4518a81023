"""The reaper: publishes jobs left in the outbox and takes back jobs whose lease expired.

Every gateway and every worker runs one in a thread; a short Redis lock lets one of them work per interval.
    outbox: a job written but not known to be published (its gateway died or lost the broker between the two)
            for `outbox_age_s` is published again; the job id is the task id and a worker claims a job once, so
            a double publish only costs a skipped message.
    leases: a RUNNING job whose worker stopped renewing its lease (SIGKILL, a hung process, a lost machine) is
            requeued and published, or failed `DEAD_LETTER` once it has had `max_deliveries` deliveries.
    stale:  a job still QUEUED `republish_after_s` after its last publish is published again (its message may
            have been reserved by a worker that died before claiming it).
    dispatch: the tenants' backlogs are dispatched (`services.dispatch`), so a job waits for no particular event
            (a submit, a job's end) that a dead process may never send.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import redis

from services.dispatch import Publish, dispatch
from services.jobstore import JobStore
from services.records import JobRecord, JobState
from services.settings import StackSettings

log = logging.getLogger(__name__)
BATCH = 100  # jobs looked at per pass and kind (the next pass takes the rest)


@dataclass
class ReapReport:
    published: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    dispatched: list[str] = field(default_factory=list)


class Reaper:
    def __init__(self, store: JobStore, settings: StackSettings, publish: Publish) -> None:
        self.store, self.settings, self.publish = store, settings, publish

    def run_once(self, now: float | None = None) -> ReapReport | None:
        """One pass, unless another process's reaper holds the lock for this interval (then None)."""
        lock_ms = max(1, int(self.settings.reaper_interval_s * 1000 * 0.8))
        if not self.store.client.set(self.store.keys.reaper_lock, "1", nx=True, px=lock_ms):
            return None
        now = time.time() if now is None else now
        report = ReapReport()
        self.sweep_outbox(now, report)
        self.reap_leases(now, report)
        self.republish_stale(now, report)
        report.dispatched = dispatch(self.store, self.settings, self.publish)
        return report

    def sweep_outbox(self, now: float, report: ReapReport) -> None:
        client, keys = self.store.client, self.store.keys
        for raw in client.zrangebyscore(keys.outbox, "-inf", now - self.settings.outbox_age_s, start=0, num=BATCH):
            job_id = raw.decode()
            record = self.store.get(job_id)
            if record is not None and record.state == JobState.QUEUED:
                waited = now - record.created_at
                log.warning("job %s: still in the outbox after %.1f s, published again", job_id, waited)
                self.publish(job_id, record.queue)
                report.published.append(job_id)
                self.store.mark_published(job_id, record.queue)
            client.zrem(keys.outbox, job_id)

    def republish_stale(self, now: float, report: ReapReport) -> None:
        """Publish again every job still QUEUED `republish_after_s` after its last publish: its message may have
        gone with a worker that reserved it and died before claiming it (the broker would restore it only after
        its visibility timeout)."""
        client, keys = self.store.client, self.store.keys
        cutoff = now - self.settings.republish_after_s
        for raw in client.zrangebyscore(keys.published, "-inf", cutoff, start=0, num=BATCH):
            job_id = raw.decode()
            record = self.store.get(job_id)
            if record is None or record.state != JobState.QUEUED:
                client.zrem(keys.published, job_id)
                continue
            log.warning("job %s: still queued %.0f s after its last publish, published again", job_id, now - cutoff)
            self.publish(job_id, record.queue)
            self.store.mark_published(job_id, record.queue)
            report.republished.append(job_id)

    def reap_leases(self, now: float, report: ReapReport) -> None:
        client, keys = self.store.client, self.store.keys
        for raw in client.zrangebyscore(keys.leases, "-inf", now, start=0, num=BATCH):
            self.take_back(raw.decode(), report)

    def take_back(self, job_id: str, report: ReapReport) -> None:
        """Requeue (or fail) one job whose lease expired, unless its worker renewed it meanwhile."""
        keys, limit = self.store.keys, self.settings.max_deliveries
        changed: list[bool] = []

        def expire(record: JobRecord) -> bool:
            if record.state != JobState.RUNNING:
                return False
            expiry = self.store.lease_expiry(job_id)
            if expiry is not None and expiry > time.time():
                return False
            if record.deliveries >= limit:
                message = f"its worker stopped responding on each of {record.deliveries} deliveries"
                record.finish(JobState.FAILED, "DEAD_LETTER", message)
            else:
                record.state = JobState.QUEUED
            changed.append(True)
            return True

        def mark_outbox(pipe: redis.client.Pipeline, record: JobRecord) -> None:
            if record.state == JobState.QUEUED:
                pipe.zadd(keys.outbox, {job_id: time.time()})

        record = self.store.update(job_id, expire, also=mark_outbox)
        if record is None or record.state != JobState.QUEUED:
            self.store.client.zrem(keys.leases, job_id)  # a lease left by a finished or vanished job
        if record is None or not changed:
            return
        if record.state == JobState.QUEUED:
            log.warning("job %s: its worker's lease expired; requeued (delivery %d)", job_id, record.deliveries)
            self.publish(job_id, record.queue)
            self.store.mark_published(job_id, record.queue)
            report.requeued.append(job_id)
        else:
            self.store.dead_letter(job_id)
            report.failed.append(job_id)

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # a Redis or broker outage: the next pass tries again
                log.warning("reaper pass failed", exc_info=True)
            stop.wait(self.settings.reaper_interval_s)


def start_reaper(store: JobStore, settings: StackSettings, publish: Publish) -> threading.Event:
    """The reaper in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    reaper = Reaper(store, settings, publish)
    threading.Thread(target=reaper.run_forever, args=(stop,), daemon=True, name="cm3leon-reaper").start()
    return stop


def celery_publisher(celery: object, task_name: str) -> Publish:
    """Publish a job's message as SubmitJob does (task id = job id)."""

    def publish(job_id: str, queue: str) -> None:
        celery.send_task(  # type: ignore[attr-defined]
            task_name, args=[job_id, None], queue=queue, task_id=job_id, ignore_result=True
        )

    return publish
