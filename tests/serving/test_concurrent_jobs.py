"""Several jobs at once on one engine (a worker's job threads): they share the decode steps of the model's one
scheduler, each gets exactly the output it gets alone (same seed, same bits), and a cancelled job leaves the
others untouched and frees its cache rows."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

from cm3leon.data.render import render
from cm3leon.data.world import Split, World
from cm3leon.inference.engine import Engine, EngineConfig
from cm3leon.kinds import Caption, Edit, JobRequest, StructureGuided, TextToImage, VisualQuestion
from cm3leon.requests import EngineResult, JobCancelled, Progress, Sampling
from tests.serving.sft_fixtures import build_tiny_sft_model_dir


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine.load(build_tiny_sft_model_dir(tmp_path_factory.mktemp("sft")), EngineConfig.preset("tiny"))


@pytest.fixture(scope="module")
def requests(engine: Engine) -> list[JobRequest]:
    world = engine.formatter.world
    rendered = render(World(world).scenes(0, Split.TEST, 1, text=False)[0], world)
    image = rendered.image
    return [
        TextToImage("a red circle", num_images=2, sampling=Sampling(seed=1)),
        Caption(image, sampling=Sampling(seed=2)),
        TextToImage("a blue square", sampling=Sampling(seed=3, num_candidates=3)),
        VisualQuestion(image, "what colour is the circle?", sampling=Sampling(seed=4)),
        Edit(image, "make it blue", sampling=Sampling(seed=5)),
        StructureGuided(rendered.segmentation_image, "a red circle", sampling=Sampling(seed=6)),
    ]


def same_output(first: EngineResult, second: EngineResult) -> bool:
    images_equal = len(first.images) == len(second.images) and all(
        np.array_equal(a, b) for a, b in zip(first.images, second.images, strict=True)
    )
    return images_equal and first.text == second.text and first.generated_tokens == second.generated_tokens


def run_in_threads(jobs: list[Callable[[], EngineResult]]) -> list[EngineResult | BaseException]:
    results: list[EngineResult | BaseException] = [RuntimeError("did not run")] * len(jobs)
    start = threading.Barrier(len(jobs))

    def work(index: int) -> None:
        start.wait()
        try:
            results[index] = jobs[index]()
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            results[index] = error

    threads = [threading.Thread(target=work, args=(index,)) for index in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return results


def test_concurrent_jobs_give_the_outputs_they_give_alone(engine: Engine, requests: list[JobRequest]) -> None:
    alone = [engine.run(request) for request in requests]
    together = run_in_threads([lambda request=request: engine.run(request) for request in requests])
    for request, single, shared in zip(requests, alone, together, strict=True):
        assert isinstance(shared, EngineResult), shared
        assert same_output(single, shared), type(request).__name__
    assert engine.bundle.decoder.stats["rows_in_use"] == 0


def test_jobs_share_decode_steps(engine: Engine, requests: list[JobRequest]) -> None:
    """While one job decodes, another one's rows are in the same pool: the scheduler ran them side by side."""
    peak_running = 0
    decoder = engine.bundle.decoder

    def watch(_: Progress) -> None:
        nonlocal peak_running
        peak_running = max(peak_running, decoder.stats["running"])

    jobs = [lambda seed=seed: engine.run(TextToImage("a red circle", sampling=Sampling(seed=seed)), watch)
            for seed in range(4)]
    results = run_in_threads(jobs)
    assert all(isinstance(result, EngineResult) for result in results)
    assert peak_running >= 2


def test_a_cancelled_job_leaves_the_others_alone(engine: Engine, requests: list[JobRequest]) -> None:
    keep = requests[0]
    alone = engine.run(keep)
    cancel = threading.Event()

    def cancelled_job() -> EngineResult:
        steps = 0

        def progress(event: Progress) -> None:
            nonlocal steps
            steps += 1
            if steps == 3:
                cancel.set()

        return engine.run(TextToImage("a green triangle", sampling=Sampling(seed=9)), progress, cancel.is_set)

    kept, cancelled = run_in_threads([lambda: engine.run(keep), cancelled_job])
    assert isinstance(cancelled, JobCancelled)
    assert isinstance(kept, EngineResult) and same_output(alone, kept)
    assert engine.bundle.decoder.stats["rows_in_use"] == 0
