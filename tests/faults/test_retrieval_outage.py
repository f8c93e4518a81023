"""The retrieval memory failing during a job: retried until its deadline, then the configured behaviour, "fail"
(UNAVAILABLE, a clean message) or "skip" (generated without retrieval, recorded on the job).

The worker runs in this process (real engine with the tiny model, real Redis and S3); the memory is the real
Qdrant local-mode one with its search failing as a Qdrant server's would when it is down (there is no server
binary to stop here)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.convert import record_to_proto
from services.jobstore import AsyncJobStore
from services.objectstore import ObjectStore
from services.records import JobState
from services.settings import WorkerSettings
from services.stack import Stack
from services.telemetry import Metrics
from tests.faults.helpers import job_store
from tests.faults.test_recovery import _record
from worker.execute import run_job
from worker.runtime import Runtime, open_memory

pytestmark = pytest.mark.slow
NAMESPACE = "qdrant-down"


@pytest.fixture(scope="module")
def engine_parts(stack: Stack, artifacts: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    from cm3leon.inference.engine import Engine, EngineConfig

    memory_path = tmp_path_factory.mktemp("qdrant-down") / "qdrant"
    shutil.copytree(artifacts["CM3LEON_MEMORY_PATH"], memory_path)
    settings = WorkerSettings(
        **{**stack.settings().model_dump(), "namespace": NAMESPACE},
        model_dir=artifacts["CM3LEON_MODEL_DIR"],
        retriever_dir=artifacts["CM3LEON_RETRIEVER_DIR"],
        memory_path=str(memory_path),
        memory_name=artifacts["CM3LEON_MEMORY_NAME"],
        memory_diversity_threshold=1.01,
        device="cpu",
        retrieval_retry_deadline_s=0.5,
    )
    memory, retriever = open_memory(settings)
    engine = Engine.load(Path(settings.model_dir), EngineConfig(device="cpu", previews_per_image=0), memory, retriever)

    def down(*_: object, **__: object) -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    memory.search = down  # type: ignore[method-assign]
    yield settings, engine, memory, retriever
    memory.close()


@pytest.mark.parametrize("behaviour", ["fail", "skip"])
def test_retrieval_outage_follows_the_setting(stack: Stack, engine_parts: tuple, behaviour: str) -> None:
    settings, engine, memory, retriever = engine_parts
    settings = settings.model_copy(update={"retrieval_outage": behaviour})
    store = job_store(stack, NAMESPACE)
    runtime = Runtime(settings, store, ObjectStore.from_settings(settings), engine, memory, retriever, Metrics(), "t")
    record = _record(stack, "a job whose memory is down")
    record.queue = f"{NAMESPACE}.image"

    async def create() -> None:
        client = aioredis.Redis(port=stack.redis_port)
        try:
            await AsyncJobStore(client, NAMESPACE, 3600).create(record)
        finally:
            await client.aclose()

    asyncio.run(create())
    run_job(runtime, record.job_id, None)
    final = store.get(record.job_id)
    if behaviour == "fail":
        assert final.state == JobState.FAILED and final.error_code == "UNAVAILABLE"
        assert final.error_message == "the retrieval memory was unavailable for 0.5 s; retry the job"
    else:
        assert final.state == JobState.SUCCEEDED and final.retrieval_skipped and final.retrieved == []
        assert len(final.images) == 1
    assert record_to_proto(final, url=lambda key: key).retrieval_skipped is (behaviour == "skip"), "clients see it"
