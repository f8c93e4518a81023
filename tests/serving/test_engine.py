"""The inference engine in process (no services): the kind registry driven by what the model declares,
progressive previews, reproducibility, retrieval context, cancellation between decode steps, and how a job's
sampling options (from the API's protobuf) override the model's decoding defaults."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import cm3leon_client as api
from cm3leon.decoding import ChannelScorer, SamplingParams
from cm3leon.decoding.defaults import DEFAULTS_FILE, TEXT_TO_IMAGE
from cm3leon.decoding.params import GUIDED_PLAUSIBILITY
from cm3leon.inference.engine import Engine, EngineConfig
from cm3leon.inference.handlers import HANDLERS
from cm3leon.kinds import CAPABILITIES_FILE, Caption, Edit, TextToImage
from cm3leon.requests import JobCancelled, Progress, Sampling, UnsupportedJobKind
from cm3leon.retrieval.config import MemoryConfig
from cm3leon.retrieval.memory import Memory
from cm3leon.retrieval.rerank import RetrieverScorer
from cm3leon.retrieval.retriever import Retriever
from services.convert import request_to_domain
from tests.serving.fixtures import (
    MEMORY_NAME,
    build_tiny_memory,
    build_tiny_model_dir,
    record_decoded_params,
    record_decodes,
)

MODEL_FILES = ("model.safetensors", "model_config.json", "tokenizer.json", "vocab.json", "vq")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("engine")
    model_dir = build_tiny_model_dir(root)
    return (model_dir, *build_tiny_memory(model_dir, root))


@pytest.fixture(scope="module")
def engine(artifacts: tuple[Path, Path, Path]) -> Engine:
    model_dir, retriever_dir, memory_path = artifacts
    retriever = Retriever.from_pretrained(retriever_dir)
    config = MemoryConfig.preset("tiny", name=MEMORY_NAME, path=str(memory_path), diversity_threshold=1.01)
    return Engine.load(model_dir, EngineConfig.preset("tiny"), Memory.for_retriever(config, retriever), retriever)


def test_pretrained_model_runs_text_to_image_and_captioning_only(engine: Engine) -> None:
    assert engine.supported_kinds == ("text_to_image", "caption")
    with pytest.raises(UnsupportedJobKind, match="'edit'.*does not declare it"):
        engine.run(Edit(np.zeros((32, 32, 3), np.uint8), "make it blue"))


def test_declared_kinds_without_a_handler_fail_clearly(
    tmp_path: Path, artifacts: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:


    monkeypatch.delitem(HANDLERS, "edit")  # every kind has a handler now: take one away to see the refusal
    model_dir = artifacts[0]
    for name in MODEL_FILES:
        (tmp_path / name).symlink_to(model_dir / name)
    (tmp_path / CAPABILITIES_FILE).write_text(json.dumps({"tasks": ["caption", "edit"]}))
    engine = Engine.load(tmp_path)
    assert engine.supported_kinds == ("caption",)
    with pytest.raises(UnsupportedJobKind, match="'edit'.*no handler"):
        engine.run(Edit(np.zeros((32, 32, 3), np.uint8), "make it blue"))
    with pytest.raises(UnsupportedJobKind, match="'text_to_image'.*does not declare it"):
        engine.run(TextToImage("a red circle"))


def test_text_to_image_previews_seed_and_retrieval(engine: Engine) -> None:
    events: list[Progress] = []
    request = TextToImage("a large red circle", num_images=2, sampling=Sampling(seed=5, retrieved_k=2))
    result = engine.run(request, progress=events.append)
    assert result.seed == 5 and len(result.images) == 2 and result.images[0].shape == (32, 32, 3)
    previews = [e.preview for e in events if e.preview is not None]
    assert len(previews) == 4, "one per quarter of the image block, the last being the finished images"
    grey_rows = [int((p == 128).all(axis=(1, 2)).sum()) for p in previews]
    assert grey_rows == [24, 16, 8, 0], "each preview shows one more quarter of the rows"
    np.testing.assert_array_equal(previews[-1], np.concatenate(result.images, axis=1))
    assert [d.doc_id for d in result.retrieved] and len(result.retrieved) == 2
    done = [e.tokens_done for e in events if e.preview is None]
    assert done == sorted(done) and done[-1] == events[-1].tokens_total
    again = engine.run(request)
    assert all(np.array_equal(a, b) for a, b in zip(result.images, again.images, strict=True))
    # Unset, text->image retrieves the paper's k = 2; an explicit 0 retrieves nothing.
    default = engine.run(TextToImage("a large red circle", sampling=Sampling(seed=5)))
    without = engine.run(TextToImage("a large red circle", sampling=Sampling(seed=5, retrieved_k=0)))
    assert len(default.retrieved) == 2 and not without.retrieved
    assert default.prompt_tokens > without.prompt_tokens


def test_cancellation_between_decode_steps(engine: Engine) -> None:
    steps: list[int] = []
    with pytest.raises(JobCancelled):
        engine.run(
            TextToImage("a blue star", sampling=Sampling(seed=1)),
            progress=lambda p: steps.append(p.tokens_done),
            should_cancel=lambda: len(steps) >= 3,
        )
    assert max(steps) < engine.bundle.vocab.codes_per_image, "stopped long before the image was done"


def test_short_captions_are_complete_and_shortest(engine: Engine) -> None:
    image = np.full((48, 48, 3), 200, np.uint8)  # not the VQ's size: resized first
    short = engine.run(Caption(image, style="short", sampling=Sampling(seed=3)))
    detailed = engine.run(Caption(image, style="detailed", sampling=Sampling(seed=3)))
    assert short.seed == detailed.seed == 3
    assert short.generated_tokens >= 1 and detailed.generated_tokens >= 1


def test_detailed_captions_from_several_candidates_keep_the_best_explanation_of_the_image(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = record_decodes(monkeypatch)
    image = np.full((48, 48, 3), 90, np.uint8)
    sampling = Sampling(seed=3, method="sample", temperature=1.0, num_candidates=4)
    caption = engine.run(Caption(image, style="detailed", sampling=sampling))
    (request,), (result,) = decoded[-1]
    candidates = [candidate.token_ids for candidate in result.candidates]
    assert len(candidates) == 4 and caption.text == result.text.strip()
    scores = ChannelScorer(engine.bundle.model, engine.bundle.vocab)(request, request.prompt_ids, candidates)
    assert result.best_index == max(range(4), key=lambda index: scores[index])


def test_pooled_images_are_reranked_by_the_retriever_as_evaluated(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(engine.image_reranker, RetrieverScorer)
    decoded = record_decodes(monkeypatch)
    sampling = Sampling(seed=2, method="pooled", num_candidates=4, retrieved_k=0)
    job = engine.run(TextToImage("a large red circle at the top left on a white background", sampling=sampling))
    (request,), (result,) = decoded[-1]
    candidates = [candidate.token_ids for candidate in result.candidates]
    scores = RetrieverScorer(engine.bundle.retriever, engine.bundle.vocab, engine.bundle.image_tokenizer, never_called)(
        request, request.prompt_ids, candidates
    )
    assert result.best_index == max(range(4), key=lambda index: scores[index])
    assert np.array_equal(job.images[0], np.asarray(result.images[0]))


def test_a_memory_with_another_tokenizers_codes_is_refused(artifacts: tuple[Path, Path, Path]) -> None:
    """Inline codes of another VQ would decode as garbage context: the engine refuses them at start."""
    from cm3leon.retrieval.documents import RetrievalDocument

    model_dir, retriever_dir, _ = artifacts
    retriever = Retriever.from_pretrained(retriever_dir)
    memory = Memory.for_retriever(MemoryConfig.preset("tiny", name="stale"), retriever)
    image = np.zeros((retriever.config.image_size,) * 2 + (3,), dtype=np.uint8)
    document = RetrievalDocument("d0", text="a circle", image=image)
    memory.upsert([document], retriever.embed_documents([document]), codes=[[0, 1, 2]], codes_vq="not-this-vq")
    with pytest.raises(ValueError, match="another VQ tokenizer"):
        Engine.load(model_dir, EngineConfig.preset("tiny"), memory, retriever)


def test_a_request_can_name_another_memory(engine: Engine) -> None:
    """Jobs retrieve from the memory they name (another collection beside the default); unknown names fail."""
    from cm3leon.retrieval.corpus import build_memory
    from cm3leon.retrieval.documents import RetrievalDocument

    assert engine.memory is not None and engine.bundle.retriever is not None
    other = Memory.open(
        replace(engine.memory.config, name="other"), engine.memory.vector_size, engine.memory.distance,
        engine.memory.client,
    )
    image = np.zeros((engine.bundle.retriever.config.image_size,) * 2 + (3,), dtype=np.uint8)
    documents = [RetrievalDocument(f"other-{i}", text=f"a red circle {i}", image=image) for i in range(3)]
    bundle = engine.bundle
    build_memory(other, bundle.retriever, documents, image_tokenizer=bundle.image_tokenizer, progress_bar=False)
    result = engine.run(TextToImage("a red circle", sampling=Sampling(seed=1, retrieved_k=2, memory="other")))
    assert {d.doc_id for d in result.retrieved} <= {d.doc_id for d in documents} and result.retrieved
    default = engine.run(TextToImage("a red circle", sampling=Sampling(seed=1, retrieved_k=2)))
    assert not {d.doc_id for d in default.retrieved} & {d.doc_id for d in documents}
    with pytest.raises(ValueError, match="no retrieval memory named 'missing'"):
        engine.run(TextToImage("a red circle", sampling=Sampling(seed=1, memory="missing")))


def decoded_text_to_image_params(engine: Engine, seen: list[SamplingParams], **options: float) -> SamplingParams:
    """The SamplingParams a text->image job submitted with `options` decodes with: the API's protobuf request,
    converted as the worker does, run on the engine."""
    seen.clear()
    request = request_to_domain(api.text_to_image("a red circle", seed=4, retrieved_k=0, **options))
    engine.run(request)
    [params] = seen
    return params


def test_guidance_plausibility_travels_from_the_api_to_the_decoder(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = record_decoded_params(monkeypatch)
    assert request_to_domain(api.text_to_image("x", guidance_plausibility=0.5)).sampling.guidance_plausibility == 0.5
    assert request_to_domain(api.text_to_image("x")).sampling.guidance_plausibility is None, "unset stays unset"
    # No decoding_defaults.json in this model: unset, text->image keeps the guided preset's value.
    unset = decoded_text_to_image_params(engine, seen)
    assert unset.guidance_plausibility == GUIDED_PLAUSIBILITY == 0.1
    assert unset == engine.bundle.defaults[TEXT_TO_IMAGE].replace(seed=4)
    chosen = decoded_text_to_image_params(engine, seen, guidance_plausibility=0.5)
    assert chosen == unset.replace(guidance_plausibility=0.5), "only the field the job set changes"
    off = decoded_text_to_image_params(engine, seen, guidance_plausibility=0.0)
    assert off.guidance_plausibility == 0.0, "an explicit 0 turns the rule off; it is not 'unset'"
    both = decoded_text_to_image_params(engine, seen, guidance_scale=5.0, guidance_plausibility=0.25)
    assert (both.guidance_scale, both.guidance_plausibility) == (5.0, 0.25)


def test_a_jobs_guidance_plausibility_overrides_the_checkpoints_default(
    tmp_path: Path, artifacts: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """decoding_defaults.json (what `cm3leon eval sweep --write-defaults` writes) sets the model's default; a job's
    value still wins, and a job without one gets the checkpoint's, not the preset's."""
    for name in MODEL_FILES:
        (tmp_path / name).symlink_to(artifacts[0] / name)
    (tmp_path / DEFAULTS_FILE).write_text(json.dumps({TEXT_TO_IMAGE: {"guidance_plausibility": 0.25}}))
    engine = Engine.load(tmp_path, EngineConfig.preset("tiny"))
    seen = record_decoded_params(monkeypatch)
    assert decoded_text_to_image_params(engine, seen).guidance_plausibility == 0.25
    assert decoded_text_to_image_params(engine, seen, guidance_plausibility=0.75).guidance_plausibility == 0.75


def never_called(*_: object) -> list[float]:
    raise AssertionError("captioned image candidates are scored by the retriever, never by the fallback")
