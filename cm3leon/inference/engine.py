"""Engine: runs domain requests (`cm3leon.requests`) on one ModelBundle with progress, a cancellation check between
decode steps and progressive previews of images.

What a model can run is what it declares (`cm3leon.kinds.Capabilities`): a kind runs only when the model declares
it and `handlers.HANDLERS` has a function for it; anything else raises `UnsupportedJobKind` naming the kind, which
the serving side reports as UNIMPLEMENTED.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cm3leon.bundle import ModelBundle
from cm3leon.decoding import GenerationCancelled, LikelihoodScorer, Scorer
from cm3leon.decoding.scheduler import SchedulerConfig
from cm3leon.inference.handlers import HANDLERS
from cm3leon.inference.policies import resolve
from cm3leon.inference.running import CancelCheck, ProgressSink, RunContext, StageHook, no_stage
from cm3leon.kinds import JobRequest, TextToImage, check_sampling_rules, kind_of
from cm3leon.presets import Presets
from cm3leon.requests import EngineResult, JobCancelled, Sampling, UnsupportedJobKind
from cm3leon.retrieval.rerank import RetrieverScorer
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tasks.formats import TaskFormatter

if TYPE_CHECKING:  # qdrant-client (hence grpc) only where a memory is given
    from cm3leon.retrieval.memory import Memory


@dataclass(frozen=True)
class EngineConfig(Presets):
    device: str = "cpu"  # "auto": cuda when present
    previews_per_image: int = 4  # a preview at each 1/N of the image block (0: none)
    max_num_images: int = 4
    # Candidates sampled for a short caption; the shortest complete one wins (see handlers.caption).
    short_caption_candidates: int = 4
    # Documents retrieved for a text->image job that does not say (the paper's k = 2; it retrieves for t2i).
    default_t2i_retrieved_k: int = 2
    # The scheduler's row pool and admission limits (rows shared by every job the engine runs at once).
    decoder: SchedulerConfig = SchedulerConfig()

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"default": {}, "tiny": dict(previews_per_image=4, max_num_images=2)}


class Engine:
    """Runs domain requests on one ModelBundle. Thread-safe: a worker's job threads call `run` at once, and their
    decodes share the steps of the bundle's one scheduler (continuous batching across jobs)."""

    def __init__(
        self, bundle: ModelBundle, config: EngineConfig = EngineConfig(), memory: Memory | None = None
    ) -> None:
        self.bundle = bundle
        self.config = config
        self.memory = memory
        self.image_reranker = self._image_reranker()
        self.policies = {
            kind: resolve(name, kind) for kind, name in bundle.capabilities.policies.items()
        }  # named in capabilities.json: an unknown name fails here, at load
        self._memories: dict[str, Memory] = {}  # other collections requests named, opened on first use
        if memory is not None and bundle.image_tokenizer is not None:
            stored = memory.codes_fingerprint()
            if stored is not None and stored != bundle.image_tokenizer.fingerprint():
                raise ValueError(
                    f"retrieval memory {memory.collection!r} holds image codes of another VQ tokenizer than "
                    f"{bundle.directory}'s: rebuild it (`cm3leon corpus build --memory {memory.collection} --vq "
                    f"{bundle.directory / 'vq'}`) or use another memory name"
                )

    @classmethod
    def load(
        cls,
        model_dir: Path | str,
        config: EngineConfig = EngineConfig(),
        memory: Memory | None = None,
        retriever: Retriever | None = None,
    ) -> Engine:
        """An engine on the model directory loaded once (on `config.device`)."""
        bundle = ModelBundle.load(model_dir, device=config.device, retriever=retriever, decoder_config=config.decoder)
        return cls(bundle, config, memory)

    @cached_property
    def formatter(self) -> TaskFormatter:
        """The training formats of the model (and of its world, if any): the instruction-tuned kinds' prompts."""
        return TaskFormatter(self.bundle.vocab, self.bundle.world, self.bundle.image_size)

    def _image_reranker(self) -> Scorer | None:
        """What chooses among several image candidates of a prompt that describes the image (text->image,
        structure-guided), as the evaluations do: the retriever's text-image similarity with the prompt's words
        (CM3Leon reranks with CLIP), or None (the model's own likelihood) without a retriever."""
        bundle = self.bundle
        if bundle.retriever is None or bundle.image_tokenizer is None:
            return None
        fallback = LikelihoodScorer(bundle.model, bundle.vocab)  # candidates of a prompt without a caption
        return RetrieverScorer(bundle.retriever, bundle.vocab, bundle.image_tokenizer, fallback)

    def memory_for(self, name: str | None) -> Memory | None:
        """The memory a request names (None: the default one); another collection beside the default, opened
        on the same client once. A name that no collection has is the request's error, not a new empty memory."""
        if name is None or self.memory is None or name == self.memory.collection:
            return self.memory
        if name not in self._memories:
            if not self.memory.client.collection_exists(name):
                raise ValueError(f"sampling.memory: no retrieval memory named {name!r}")
            config = dataclasses.replace(self.memory.config, name=name)
            self._memories[name] = type(self.memory).open(
                config, self.memory.vector_size, self.memory.distance, self.memory.client
            )
        return self._memories[name]

    @property
    def supported_kinds(self) -> tuple[str, ...]:
        return tuple(kind for kind in self.bundle.capabilities.kinds if kind in HANDLERS)

    def check_supported(self, kind: str) -> None:
        if kind not in self.bundle.capabilities.kinds:
            raise UnsupportedJobKind(
                kind, f"model {self.bundle.model_id} does not declare it (it runs: {', '.join(self.supported_kinds)})"
            )
        if kind not in HANDLERS:
            raise UnsupportedJobKind(kind, "the engine has no handler for it yet")

    def run(
        self,
        request: JobRequest,
        progress: ProgressSink | None = None,
        should_cancel: CancelCheck | None = None,
        stage: StageHook = no_stage,
        plain: bool = False,
    ) -> EngineResult:
        """Run one request with the model's policy for its kind, or the generic path when `plain` (or the model
        names none); raises UnsupportedJobKind, JobCancelled, or ValueError for inputs it cannot use."""
        kind = kind_of(request)
        self.check_supported(kind.name)
        check_sampling_rules(kind, getattr(request, "sampling", None))
        context = RunContext(self, progress or (lambda _: None), should_cancel or (lambda: False), stage)
        chosen = self.policies.get(kind.name) if not plain else None
        handler = chosen.run if chosen is not None else HANDLERS[kind.name]
        start = time.perf_counter()
        try:
            result = handler(context, request)
        except GenerationCancelled as error:
            raise JobCancelled(str(error)) from error
        result.seconds = time.perf_counter() - start
        return result

    def warm_up(self) -> None:
        """One small generation of every supported kind that needs no input image: first-call costs paid here."""
        if "text_to_image" in self.supported_kinds:
            self.run(TextToImage("warm up", sampling=Sampling(seed=0)))
