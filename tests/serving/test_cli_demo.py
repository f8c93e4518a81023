"""The client CLI against the session's stack, the stack demo end to end, settings validation and the
dead-letter rule for poison messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from pydantic import ValidationError
from typer.testing import CliRunner

from cm3leon_cli import app
from services.jobstore import JobStore
from services.records import JobRecord, JobState, new_job_id
from services.settings import GatewaySettings, WorkerSettings
from services.stack import Stack
from worker.execute import claim


@pytest.mark.slow
def test_cli_submit_wait_out_get_list(target: str, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"CM3LEON_TARGET": target, "CM3LEON_API_KEY": "key-a"}
    result = runner.invoke(
        app,
        [
            "jobs",
            "submit",
            "text-to-image",
            "a large red circle at the top left",
            "--seed",
            "1",
            "--wait",
            "--out",
            str(tmp_path),
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert " SUCCEEDED" in result.output
    [png] = list(tmp_path.glob("*.png"))
    job_id = png.stem.rsplit("-", 1)[0]
    record = json.loads((tmp_path / f"{job_id}.json").read_text())
    assert record["state"] == "JOB_STATE_SUCCEEDED" and record["result"]["images"][0]["sizeBytes"] == str(
        png.stat().st_size
    )
    shown = runner.invoke(app, ["jobs", "get", job_id, "--json"], env=env)
    assert shown.exit_code == 0 and json.loads(shown.output)["jobId"] == job_id
    listed = runner.invoke(app, ["jobs", "list", "--state", "SUCCEEDED", "--page-size", "100"], env=env)
    assert listed.exit_code == 0 and job_id in listed.output
    found = runner.invoke(app, ["corpus", "search", "a red circle", "--k", "2"], env=env)
    assert found.exit_code == 0 and len(found.output.strip().splitlines()) == 2, found.output


@pytest.mark.slow
def test_stack_demo_end_to_end(stack: Stack, tmp_path: Path) -> None:
    """`cm3leon stack demo` with the tiny model: its own stack, every supported kind, a grid, clean stop."""
    from cm3leon_stack.demo import DEMO_SCENES, run_stack_demo

    env = stack.worker_env  # type: ignore[attr-defined]
    model_dir = Path(env["CM3LEON_MODEL_DIR"])
    # A copy of the memory: Qdrant local mode allows one client per directory, the session's worker holds it.
    memory = tmp_path / "qdrant"
    shutil.copytree(env["CM3LEON_MEMORY_PATH"], memory, ignore=shutil.ignore_patterns(".lock"))
    out = tmp_path / "demo"
    grid = run_stack_demo(model_dir, out, Path(env["CM3LEON_RETRIEVER_DIR"]), memory, env["CM3LEON_MEMORY_NAME"], 0)
    assert grid.exists() and grid.stat().st_size > 0
    assert len(list(out.glob("text_to_image-*.png"))) == DEMO_SCENES
    assert len(list(out.glob("caption-*.txt"))) == DEMO_SCENES


def test_settings_are_validated_with_clear_errors() -> None:
    with pytest.raises(ValidationError, match="soft_time_limit_s < hard_time_limit_s < visibility_timeout_s"):
        WorkerSettings(soft_time_limit_s=100, hard_time_limit_s=90, visibility_timeout_s=200)
    with pytest.raises(ValidationError, match="otel_exporter"):
        GatewaySettings(otel_exporter="zipkin")
    with pytest.raises(ValidationError, match="api_keys"):
        GatewaySettings(api_keys={})


def test_a_worker_runs_its_jobs_in_threads_sized_by_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """One process, `worker_jobs` job threads sharing its model, and as many prefetched messages (multiplier 1)."""
    from worker.app import worker_app
    from worker.runtime import DEFAULT_JOBS, job_threads

    monkeypatch.setenv("CM3LEON_WORKER_JOBS", "6")
    conf = worker_app().conf
    assert (conf.worker_pool, conf.worker_concurrency, conf.worker_prefetch_multiplier) == ("threads", 6, 1)
    assert job_threads(WorkerSettings(device="cpu", worker_jobs=0)) == DEFAULT_JOBS["cpu"]
    assert job_threads(WorkerSettings(device="cuda", worker_jobs=0)) == DEFAULT_JOBS["cuda"]
    with pytest.raises(ValidationError, match="worker_jobs"):
        WorkerSettings(worker_jobs=-1)


@pytest.mark.slow
def test_a_poison_message_is_dead_lettered(stack: Stack) -> None:
    """A job whose worker died on every delivery is failed with DEAD_LETTER instead of being run again."""
    client = redis.Redis(port=stack.redis_port)
    store = JobStore(client, "dl-test", ttl_s=600)
    record = JobRecord(job_id=new_job_id(), tenant="t", kind="text_to_image", queue="q", request=b"", deliveries=3)
    client.set(store.keys.job(record.job_id), record.model_dump_json())
    runtime = SimpleNamespace(
        store=store, settings=WorkerSettings(max_deliveries=3), engine=SimpleNamespace(model_id="m")
    )
    assert claim(runtime, record.job_id) is None  # type: ignore[arg-type]
    final = store.get(record.job_id)
    assert final is not None and final.state == JobState.FAILED and final.error_code == "DEAD_LETTER"
    assert client.lrange(store.keys.dead_letter, 0, -1) == [record.job_id.encode()]
