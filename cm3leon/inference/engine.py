"""Engine: a model directory loaded once, running domain requests (see `requests.py`) with progress, a
cancellation check between decode steps and progressive previews of images.

What a model can run is what it declares: `DIR/capabilities.json` (`{"tasks": ["text_to_image", ...]}`, written
by the stage that taught the tasks) or, without it, what pretraining teaches (text->image and captioning). A kind
runs only when the model declares it and `handlers.HANDLERS` has a function for it; anything else raises
`UnsupportedJobKind` naming the kind, which the serving side reports as UNIMPLEMENTED.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from cm3leon.checkpoint import load_checkpoint
from cm3leon.decoding import GenerationCancelled, LikelihoodScorer, Scorer
from cm3leon.decoding.defaults import load_decoding_defaults
from cm3leon.inference.capabilities import (  # noqa: F401 (CAPABILITIES_FILE, PRETRAINED_KINDS re-exported)
    CAPABILITIES_FILE,
    PRETRAINED_KINDS,
    declared_kinds,
)
from cm3leon.inference.requests import (
    EngineResult,
    JobCancelled,
    JobRequest,
    Progress,
    UnsupportedJobKind,
    kind_of,
)
from cm3leon.tasks.checkpoint import answers_worked

if TYPE_CHECKING:
    from cm3leon.retrieval.memory import Memory
    from cm3leon.retrieval.retriever import Retriever

ProgressSink = Callable[[Progress], None]
CancelCheck = Callable[[], bool]
# A stage hook opens a span (or anything) around "retrieval", "decoding", ...: (stage name, attributes).
StageHook = Callable[[str, Mapping[str, Any]], contextlib.AbstractContextManager]


def no_stage(name: str, attributes: Mapping[str, Any]) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class EngineConfig:
    device: str = "cpu"  # "auto": cuda when present
    previews_per_image: int = 4  # a preview at each 1/N of the image block (0: none)
    max_num_images: int = 4
    # Candidates sampled for a short caption; the shortest complete one wins (see handlers.caption).
    short_caption_candidates: int = 4
    # Documents retrieved for a text->image job that does not say (the paper's k = 2; it retrieves for t2i).
    default_t2i_retrieved_k: int = 2

    @classmethod
    def preset(cls, name: str) -> EngineConfig:
        presets = {"default": cls(), "tiny": cls(previews_per_image=4, max_num_images=2)}
        if name not in presets:
            raise ValueError(f"unknown engine preset {name!r}; choose from {sorted(presets)}")
        return presets[name]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_id_of(directory: Path) -> str:
    """Directory name and the first 12 hex digits of the weights' sha256: names exactly what ran."""
    digest = hashlib.sha256()
    with open(directory / "model.safetensors", "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"{directory.resolve().name}@{digest.hexdigest()[:12]}"


class Engine:
    """Not thread-safe: one request at a time (the decoder's KV cache lives in the model)."""

    def __init__(
        self,
        model_dir: Path | str,
        config: EngineConfig = EngineConfig(),
        memory: Memory | None = None,
        retriever: Retriever | None = None,
    ) -> None:
        self.directory = Path(model_dir)
        self.config = config
        self.device = resolve_device(config.device)
        self.model, self.vocab, self.image_tokenizer = load_checkpoint(self.directory, device=self.device)
        self.model.eval()
        self.defaults = load_decoding_defaults(self.directory)
        self.answers_worked = answers_worked(self.directory)  # VQA decodes in two steps (cm3leon.tasks.worked)
        self.declared = declared_kinds(self.directory)
        self.model_id = model_id_of(self.directory)
        self.memory = memory
        self.retriever = retriever
        self.image_reranker = self._image_reranker()
        self._memories: dict[str, Memory] = {}  # other collections requests named, opened on first use
        if memory is not None and self.image_tokenizer is not None:
            stored = memory.codes_fingerprint()
            if stored is not None and stored != self.image_tokenizer.fingerprint():
                raise ValueError(
                    f"retrieval memory {memory.collection!r} holds image codes of another VQ tokenizer than "
                    f"{self.directory}'s: rebuild it (`cm3leon corpus build --memory {memory.collection} --vq "
                    f"{self.directory / 'vq'}`) or use another memory name"
                )

    def _image_reranker(self) -> Scorer | None:
        """What chooses among several image candidates of a prompt that describes the image (text->image,
        structure-guided), as the evaluations do: the retriever's text-image similarity with the prompt's words
        (CM3Leon reranks with CLIP), or None (the model's own likelihood) without a retriever. On the shapes model's
        validation split, choosing among 8 candidates this way draws an exact scene from a segmentation map 0.875 of
        the time (one candidate: 0.58; models/shapes/sweep_val.json). Edits, rendered words and grounded scenes are
        scored against the scene they should show instead (`cm3leon.inference.task_handlers`)."""
        if self.retriever is None or self.image_tokenizer is None:
            return None
        from cm3leon.retrieval.rerank import RetrieverScorer

        fallback = LikelihoodScorer(self.model, self.vocab)  # candidates of a prompt without a caption
        return RetrieverScorer(self.retriever, self.vocab, self.image_tokenizer, fallback)

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
        from cm3leon.inference.handlers import HANDLERS

        return tuple(kind for kind in self.declared if kind in HANDLERS)

    @property
    def image_size(self) -> int:
        if self.image_tokenizer is None:
            raise UnsupportedJobKind("image", f"{self.directory} has no vq/ image tokenizer")
        return self.image_tokenizer.config.image_size

    def check_supported(self, kind: str) -> None:
        from cm3leon.inference.handlers import HANDLERS

        if kind not in self.declared:
            raise UnsupportedJobKind(
                kind, f"model {self.model_id} does not declare it (it runs: {', '.join(self.supported_kinds)})"
            )
        if kind not in HANDLERS:
            raise UnsupportedJobKind(kind, "the engine has no handler for it yet")

    def run(
        self,
        request: JobRequest,
        progress: ProgressSink | None = None,
        should_cancel: CancelCheck | None = None,
        stage: StageHook = no_stage,
    ) -> EngineResult:
        """Run one request; raises UnsupportedJobKind, JobCancelled, or ValueError for inputs it cannot use."""
        from cm3leon.inference.handlers import HANDLERS, RunContext

        kind = kind_of(request)
        self.check_supported(kind)
        context = RunContext(self, progress or (lambda _: None), should_cancel or (lambda: False), stage)
        start = time.perf_counter()
        try:
            result = HANDLERS[kind](context, request)
        except GenerationCancelled as error:
            raise JobCancelled(str(error)) from error
        result.seconds = time.perf_counter() - start
        return result

    def warm_up(self) -> None:
        """One small generation of every supported kind that needs no input image: first-call costs paid here."""
        from cm3leon.inference.requests import Sampling, TextToImage

        if "text_to_image" in self.supported_kinds:
            self.run(TextToImage("warm up", sampling=Sampling(seed=0)))

    # ----- image helpers shared by the handlers -----

    def fit_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) resized to the VQ tokenizer's square input (bicubic), as the model saw images."""
        size = self.image_size
        if image.shape[:2] == (size, size):
            return image
        return np.array(Image.fromarray(image).convert("RGB").resize((size, size), Image.Resampling.BICUBIC))

    def encode_image(self, image: np.ndarray) -> list[int]:
        assert self.image_tokenizer is not None
        with torch.inference_mode():
            return self.image_tokenizer.encode(self.fit_image(image)[None]).reshape(-1).tolist()

    def decode_codes(self, codes: torch.Tensor) -> np.ndarray:
        assert self.image_tokenizer is not None
        with torch.inference_mode():
            return np.asarray(self.image_tokenizer.decode(codes))

    @contextlib.contextmanager
    def hooked(self, hook: Any) -> Iterator[None]:
        handle = hook.attach(self.model) if hook is not None else None
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()
