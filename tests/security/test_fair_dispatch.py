"""Fair dispatch on a real Redis (`services.dispatch`): the order jobs go to the broker across tenants, the running
cap, the dispatch window, and a dispatcher that dies mid-dispatch (the reaper publishes what it left). The jobs
are created as the gateway creates them; "started" is the worker's claim, "ended" its final write."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

import cm3leon_client as api
from services.cost import job_cost, merged_profile
from services.dispatch import dispatch, take
from services.jobstore import AsyncJobStore, JobStore
from services.keys import queue_for
from services.reaper import Reaper
from services.records import JobRecord, JobState, new_job_id
from services.settings import StackSettings
from services.stack import Stack

PLAIN = 128  # a plain text->image job: 64 codes x 2 streams (the settings' fallback numbers)


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    stack = Stack(tmp_path_factory.mktemp("dispatch-redis"))
    try:
        stack.start_redis()
        yield stack.redis_port
    finally:
        stack.stop()


class Books:
    """One namespace's job store and settings, and the moves of a worker (claim, finish) on its jobs."""

    def __init__(self, port: int, namespace: str, **settings: object) -> None:
        self.store = JobStore(redis.Redis(port=port), namespace, 3600)
        self.settings = StackSettings(redis_url=f"redis://127.0.0.1:{port}/0", namespace=namespace, **settings)
        self.port = port

    def submit(self, tenant: str, cost: int = PLAIN, prompt: str = "a job", kind: str = "text_to_image") -> str:
        record = JobRecord(
            job_id=new_job_id(),
            tenant=tenant,
            kind=kind,
            queue=queue_for(self.settings.namespace, kind),
            request=api.text_to_image(prompt).SerializeToString(),
            cost=cost,
        )

        async def create() -> None:
            client = aioredis.Redis(port=self.port)
            try:
                await AsyncJobStore(client, self.settings.namespace, 3600).create(record)
            finally:
                await client.aclose()

        asyncio.run(create())
        return record.job_id

    def publish_all(self) -> list[str]:
        """One dispatch whose publishes all succeed."""
        return dispatch(self.store, self.settings, lambda job_id, queue: None)

    def start(self, job_id: str) -> None:
        def run(record: JobRecord) -> bool:
            record.state = JobState.RUNNING
            return True

        self.store.update(job_id, run)

    def end(self, job_id: str) -> None:
        def succeed(record: JobRecord) -> bool:
            record.finish(JobState.SUCCEEDED)
            return True

        self.store.update(job_id, succeed)

    def backlog(self, tenant: str) -> int:
        queue = queue_for(self.settings.namespace, "text_to_image")
        return self.store.client.zcard(self.store.keys.backlog(tenant, queue))


def test_cost_weighs_images_candidates_streams_and_tokens() -> None:
    profile = merged_profile(
        [
            {"cost": {"kinds": {"text_to_image": {"candidates": 1, "streams": 2, "tokens": 256}}}},
            {"cost": {"kinds": {"caption": {"candidates": 16, "streams": 1, "tokens": 64}}}},
        ]
    )
    assert job_cost(api.text_to_image("x"), profile) == 1 * 1 * 2 * 256
    assert job_cost(api.text_to_image("x", num_images=4, num_candidates=4), profile) == 4 * 4 * 2 * 256
    assert job_cost(api.text_to_image("x", method="sample"), profile) == 256, "unguided: one stream"
    assert job_cost(api.caption(b"png"), profile) == 16 * 64, "the model's default candidates"
    assert job_cost(api.caption(b"png", num_candidates=2), profile) == 2 * 64
    # No worker has declared its model: the settings' numbers, one candidate, the kind's usual streams.
    assert job_cost(api.text_to_image("x"), None, image_tokens=64) == PLAIN
    assert job_cost(api.caption(b"png"), None, text_tokens=32) == 32


def test_a_tenant_joining_is_served_within_one_round(redis_port: int) -> None:
    """A floods 20 jobs, then B and C submit: each is dispatched before A's next job, and A and C then take turns;
    one job at a time (a window of 1: each dispatched job starts and ends before the next dispatch)."""
    books = Books(redis_port, "rr-join", dispatch_window=1)
    floods = [books.submit("A", prompt=f"flood {i}") for i in range(20)]
    order = []

    def step() -> None:
        [job_id] = books.publish_all()
        order.append(job_id)
        books.start(job_id)
        books.end(job_id)

    step()
    b_job = books.submit("B")
    c_jobs = [books.submit("C", prompt=f"c {i}") for i in range(3)]
    for _ in range(7):
        step()
    assert order[0] == floods[0]
    assert set(order[1:3]) == {b_job, c_jobs[0]}, "both newcomers before A's second job"
    assert order[3:7] == [floods[1], c_jobs[1], floods[2], c_jobs[2]], "then A and C take turns"
    assert order[7] == floods[3] and books.backlog("A") == 16


def test_a_tenant_refilling_its_backlog_gains_no_turn(redis_port: int) -> None:
    """A's backlog empties at each dispatch and A submits again, as B joins: B is served before A's next job."""
    books = Books(redis_port, "rr-refill", dispatch_window=1)
    first = books.submit("A", prompt="first")
    assert books.publish_all() == [first]
    again, b_job = books.submit("A", prompt="again"), books.submit("B")
    books.start(first)
    assert books.publish_all() == [b_job]
    books.start(b_job)
    assert books.publish_all() == [again]


def test_the_window_keeps_the_broker_short(redis_port: int) -> None:
    """Only `dispatch_window` jobs wait at the broker; one more goes out as one starts."""
    books = Books(redis_port, "window", dispatch_window=3)
    jobs = [books.submit("A", prompt=f"w {i}") for i in range(6)]
    assert books.publish_all() == jobs[:3]
    assert books.publish_all() == []
    books.start(jobs[0])
    assert books.publish_all() == [jobs[3]]


def test_each_job_queue_has_its_own_window(redis_port: int) -> None:
    """Image jobs filling the image queue's window do not hold a text job back (split-queue workers)."""
    books = Books(redis_port, "queues", dispatch_window=1)
    images = [books.submit("A", prompt=f"i {i}") for i in range(2)]
    text = books.submit("A", kind="caption")
    assert books.publish_all() == [images[0], text]


def test_the_running_cap_holds_a_tenants_extra_jobs_until_one_ends(redis_port: int) -> None:
    books = Books(redis_port, "cap", dispatch_window=10, tenant_max_running_cost=2 * PLAIN)
    a_jobs = [books.submit("A", prompt=f"a {i}") for i in range(4)]
    b_job = books.submit("B")
    assert books.publish_all() == [a_jobs[0], b_job, a_jobs[1]], "A's third would exceed its cap; B is not held"
    for job_id in (a_jobs[0], a_jobs[1]):
        books.start(job_id)
    assert books.publish_all() == [] and books.backlog("A") == 2, "running counts like dispatched"
    books.end(a_jobs[0])
    assert books.publish_all() == [a_jobs[2]]


def test_a_job_costlier_than_the_cap_runs_alone(redis_port: int) -> None:
    books = Books(redis_port, "costly", dispatch_window=10, tenant_max_running_cost=2 * PLAIN)
    big, small = books.submit("A", cost=8 * PLAIN), books.submit("A", prompt="small")
    assert books.publish_all() == [big], "nothing else of A's runs beside it"
    books.end(big)
    assert books.publish_all() == [small]


def test_a_cancelled_waiting_job_leaves_the_backlog(redis_port: int) -> None:
    books = Books(redis_port, "cancelled", dispatch_window=10)
    first, second = books.submit("A"), books.submit("A", prompt="second")

    def cancel(record: JobRecord) -> bool:
        record.finish(JobState.CANCELLED, "CANCELLED", "cancelled while queued")
        return True

    books.store.update(first, cancel)
    assert books.publish_all() == [second]


def test_concurrent_dispatchers_hand_each_job_out_once(redis_port: int) -> None:
    """Eight dispatchers (threads, own connections) race over 40 jobs of 4 tenants: every job exactly once."""
    from concurrent.futures import ThreadPoolExecutor

    books = Books(redis_port, "racing", dispatch_window=1000, tenant_max_running_cost=10**6)
    jobs = {books.submit(f"T{i % 4}", prompt=f"r {i}") for i in range(40)}

    def dispatcher(_: int) -> list[str]:
        own = JobStore(redis.Redis(port=redis_port), "racing", 3600)
        taken: list[str] = []
        while batch := take(own, books.settings):
            taken += batch
        return taken

    with ThreadPoolExecutor(8) as pool:
        handed = [job_id for batch in pool.map(dispatcher, range(8)) for job_id in batch]
    assert sorted(handed) == sorted(jobs)


def test_a_dispatcher_killed_mid_dispatch_loses_nothing(redis_port: int, tmp_path: Path) -> None:
    """A dispatcher dies after it took jobs (they carry outbox marks, nothing published), and a gateway dies
    after it stored a job but before dispatching: the reaper's pass publishes the first (its outbox sweep) and
    dispatches and publishes the second."""
    books = Books(redis_port, "killed", dispatch_window=10, outbox_age_s=1.0)
    taken_by_the_dead = books.submit("A", prompt="taken")
    assert take(books.store, books.settings) == [taken_by_the_dead]  # ... and the process dies here
    never_dispatched = books.submit("B", prompt="stored only")
    published: list[str] = []
    reaper = Reaper(books.store, books.settings, lambda job_id, queue: published.append(job_id))
    report = reaper.run_once(now=time.time() + 2)
    assert report is not None
    assert report.published == [taken_by_the_dead] and report.dispatched == [never_dispatched]
    assert published == [taken_by_the_dead, never_dispatched]
    keys = books.store.keys
    assert books.store.client.zcard(keys.outbox) == 0 and books.backlog("A") == books.backlog("B") == 0


def test_a_refused_publish_leaves_the_job_in_the_outbox(redis_port: int) -> None:
    books = Books(redis_port, "refused", dispatch_window=10)
    job_id = books.submit("A")

    def refuse(job_id: str, queue: str) -> None:
        raise ConnectionError("the broker is away")

    assert dispatch(books.store, books.settings, refuse) == []
    assert books.store.client.zscore(books.store.keys.outbox, job_id) is not None, "for the reaper's sweep"
