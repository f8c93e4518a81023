"""Token formats of the instruction-tuning tasks: each task's prompt (what inference decodes from) and output.

Every task is a `TaskExample`: `prompt` ids (starting with `<bos>`, ending exactly where generation starts) and
`output` ids (the continuation, ending with `<eos>`). Training documents are `prompt + output` with loss on the
output only: the prompt is always given at inference (an instruction, a source image, a map), so modelling it
teaches nothing the task needs, and the prompt's 64-code source images would otherwise outweigh a 3-token answer
in the gradient. Prompts of image outputs are built with the decoder's own `document_prompt_ids`, so training and
inference prompts are the same ids by construction.

Formats (instructions are text, images are image blocks, `encode_document` puts `<break>` between modalities):

    t2i           caption <break> IMAGE                          (pretraining's SceneDocument, reused)
    caption       IMAGE <break> caption                          (pretraining's SceneDocument, reused)
    vqa           IMAGE <break> Question: q Answer: | a
    vqa session   IMAGE <break> Question: q1 Answer: | a1 <eos> Question: q2 Answer: a2 <eos> ...  (training only)
    reasoning     IMAGE <break> Question: q Answer: | ... so the answer is N
    edit          EDIT_HEADER <break> IMAGE1 <break> instruction <break> | IMAGE2
    infill        [caption <break>] IMAGE with <mask:i> per code row <infill> <mask:0> | row0 <mask:1> row1 ...
    segmentation  SEGMENT_HEADER <break> IMAGE <break> | SEGMENTATION-MAP IMAGE
    seg2img       STRUCTURE_HEADER <break> MAP <break> caption <break> | IMAGE
    grounded      GROUNDED_HEADER object <loc x0 y0 x1 y1> and ... on a B background <break> | IMAGE
    text_render   draw "AB" in red on a white background <break> | IMAGE
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cm3leon.data.language import text_render_prompt
from cm3leon.data.questions import QA, article
from cm3leon.data.tasks import BinBox, EditCase, GroundedSpec, PixelBox
from cm3leon.data.world import Scene, WorldConfig
from cm3leon.decoding.prompts import document_prompt_ids, mask_runs
from cm3leon.kinds import KINDS
from cm3leon.objectives.cm3 import CM3Masker
from cm3leon.tasks.infill import infill_spans
from cm3leon.tokenizers.vocab import Document, ImageCodes, Locations, Segment, Vocabulary

# Segment kinds `vqa_read` masks: the image alone.
IMAGE_KINDS = frozenset({"image"})

# Every format, in the kind table's order (each job kind names the formats that teach it, `cm3leon.kinds`).
TASKS: tuple[str, ...] = tuple(fmt for kind in KINDS for fmt in kind.sft_formats)
IMAGE_TASKS: frozenset[str] = frozenset({"t2i", "edit", "segmentation", "seg2img", "grounded", "text_render"})
TEXT_TASKS: frozenset[str] = frozenset({"caption", "vqa", "reasoning"})

EDIT_HEADER = "Edit first image following the instruction"
SEGMENT_HEADER = "Segment the image"
STRUCTURE_HEADER = "Make high quality image from segmentation features"
GROUNDED_HEADER = "Make an image with"
QUESTION_PREFIX = "Question:"
ANSWER_PREFIX = "Answer:"

Target = Literal["image", "text", "infill"]


@dataclass(frozen=True)
class SceneDocument:
    """One query document: a scene, its caption and image codes, and which modality comes first."""

    scene: Scene
    corpus_index: int
    caption: str
    image: ImageCodes
    image_first: bool
    # Caption replaced by `<mask>` (only for text->image): the unconditional stream of classifier-free guidance.
    unconditional: bool = False

    def segments(self) -> list[Segment]:
        return [self.image, self.caption] if self.image_first else [self.caption, self.image]

    def token_ids(self, vocab: Vocabulary) -> list[int]:
        """`<bos> caption <break> IMAGE <eos>`, `<bos> IMAGE <break> caption <eos>`, or for the unconditional
        form `<bos> <mask> <break> IMAGE <eos>`."""
        if not self.unconditional:
            return vocab.encode_document(self.segments())
        image_only = vocab.encode_document([self.image])
        return [image_only[0], vocab.mask_id, vocab.break_id, *image_only[1:]]



@dataclass(frozen=True)
class TaskExample:
    task: str
    prompt: list[int]  # starts with <bos>, ends where generation starts
    output: list[int]  # ground-truth continuation, ends with <eos> (empty for a prompt-only example)
    target: Target
    # Which output ids are targets; None: all of them. A VQA session's follow-up questions are given, not learnt.
    output_targets: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        if self.output_targets is not None and len(self.output_targets) != len(self.output):
            raise ValueError(f"{len(self.output_targets)} output_targets for {len(self.output)} output ids")

    @property
    def ids(self) -> list[int]:
        return [*self.prompt, *self.output]

    @property
    def loss_mask(self) -> list[bool]:
        """Loss on the output only (see the module docstring); `<eos>` included: the model must learn to stop."""
        targets = [True] * len(self.output) if self.output_targets is None else list(self.output_targets)
        return [False] * len(self.prompt) + targets


def question_text(qa: QA) -> str:
    return f"{QUESTION_PREFIX} {qa.question} {ANSWER_PREFIX}"


class TaskFormatter:
    """Builds every task's `TaskExample` for one vocabulary and image size; the methods that take the shapes
    world's symbols (`grounded`, `text_render`) need its `world` too. Why: a model trained without a world (e.g. a
    paper-size preset) still serves every format from text, boxes in location bins and image codes."""

    def __init__(self, vocab: Vocabulary, world: WorldConfig | None = None, image_size: int | None = None) -> None:
        if world is not None and vocab.config.location_bins != world.location_bins:
            raise ValueError(f"vocabulary has {vocab.config.location_bins} location bins, world {world.location_bins}")
        size = image_size if image_size is not None else world.image_size if world is not None else None
        if size is None:
            raise ValueError("a task formatter needs the image size (or a world that has one)")
        if world is not None and world.image_size != size:
            raise ValueError(f"world images are {world.image_size}px, the formatter's {size}px")
        self.vocab = vocab
        self._world = world
        self.image_size = size
        self.masker = CM3Masker(vocab)

    @property
    def world(self) -> WorldConfig:
        """The shapes world the formatter's symbolic inputs come from; ValueError for a world-less formatter."""
        if self._world is None:
            raise ValueError("this formatter has no world: give text and location bins, not the world's scenes")
        return self._world

    # --- generic pieces -------------------------------------------------------------------------------------
    def _image_output(self, task: str, document: Document, image: ImageCodes | None) -> TaskExample:
        prompt = document_prompt_ids(self.vocab, document, "image")
        output = [*self.vocab.encode_image(image.codes), self.vocab.eos_id] if image is not None else []
        return TaskExample(task, prompt, output, "image")

    def _text_output(self, task: str, document: Document, answer: str | None) -> TaskExample:
        prompt = document_prompt_ids(self.vocab, document, "text")
        # The answer is encoded apart from the prompt (with its leading space) because inference decodes it
        # after exactly these prompt ids: BPE merges across the boundary would never be seen at inference.
        output = [*self.vocab.encode_text(answer), self.vocab.eos_id] if answer is not None else []
        return TaskExample(task, prompt, output, "text")

    # --- the tasks --------------------------------------------------------------------------------------------
    def t2i(self, scene: Scene, caption: str, image: ImageCodes | None) -> TaskExample:
        """The ids of pretraining's text->image SceneDocument (reused, not re-derived), split at the image."""
        if image is None:
            return self._image_output("t2i", [caption], None)
        ids = SceneDocument(scene, -1, caption, image, image_first=False).token_ids(self.vocab)
        cut = len(ids) - self.vocab.codes_per_image - 1
        return TaskExample("t2i", ids[:cut], ids[cut:], "image")

    def caption(self, image: ImageCodes, caption: str | None) -> TaskExample:
        # Pretraining's image->text document `IMAGE <break> caption`, so the caption is one BPE segment.
        return self._text_output("caption", [image], caption)

    def vqa(self, image: ImageCodes, qa: QA, with_answer: bool = True) -> TaskExample:
        task = "reasoning" if qa.kind == "reasoning" else "vqa"
        return self._text_output(task, [image, question_text(qa)], f" {qa.answer}" if with_answer else None)

    def vqa_session(self, image: ImageCodes, qas: Sequence[QA]) -> TaskExample:
        """Several questions about one image in one training document, each answer closed by `<eos>`.

        Why: a single VQA document spends ~70 ids (the image, the question) of context on 1-3 answer ids, so
        binding questions ("is there a red star?") were seen rarely per token of compute. A session's first
        question is exactly `vqa()`'s document, the form inference decodes; the follow-ups ask about the same
        image and are context (no loss), their answers and `<eos>` are targets. Follow-up questions come after
        `<eos>` as plain text: inference stops at `<eos>`, so it never sees or needs a separator there.
        """
        if not qas or any(qa.kind == "reasoning" for qa in qas):
            raise ValueError("a VQA session needs one or more non-reasoning questions")
        first = self.vqa(image, qas[0])
        output, targets = list(first.output), [True] * len(first.output)
        for qa in qas[1:]:
            question = self.vocab.encode_text(question_text(qa))
            answer = [*self.vocab.encode_text(f" {qa.answer}"), self.vocab.eos_id]
            output += [*question, *answer]
            targets += [False] * len(question) + [True] * len(answer)
        return TaskExample("vqa", first.prompt, output, "text", tuple(targets))

    def vqa_read(self, image: ImageCodes, worked: QA, final: str) -> TaskExample:
        """A worked VQA answer ("<description>, so the answer is X") with the image masked out (`<mask>` in its
        place) and only X and `<eos>` as targets: the answer can then only be read from the description.

        Why: with the image in the prompt, a worked answer's X is predictable from the image as well, and the
        model kept answering from the image (right on ~0.7 of the questions whose description it got exactly
        right). These documents train the reading alone, in the very layout a worked answer is decoded in.
        """
        example = self.vqa(image, worked)
        final_ids = [*self.vocab.encode_text(f" {final}"), self.vocab.eos_id]
        if not worked.answer.endswith(f" {final}") or example.output[-len(final_ids) :] != final_ids:
            raise ValueError(f"{worked.answer!r} does not end with its final answer {final!r} as its own tokens")
        prompt = mask_runs(self.vocab, example.prompt, IMAGE_KINDS)
        targets = (False,) * (len(example.output) - len(final_ids)) + (True,) * len(final_ids)
        return TaskExample("vqa", prompt, example.output, "text", targets)

    def edit(self, case: EditCase, source: ImageCodes, target: ImageCodes | None) -> TaskExample:
        return self.edit_instruction(case.instruction, source, target)

    def edit_instruction(self, instruction: str, source: ImageCodes, target: ImageCodes | None) -> TaskExample:
        """An edit from its instruction text alone (serving has no symbolic EditCase, only the text)."""
        return self._image_output("edit", [EDIT_HEADER, source, instruction], target)

    def segmentation(self, image: ImageCodes, segmentation: ImageCodes | None) -> TaskExample:
        return self._image_output("segmentation", [SEGMENT_HEADER, image], segmentation)

    def seg2img(self, segmentation: ImageCodes, caption: str, image: ImageCodes | None) -> TaskExample:
        return self._image_output("seg2img", [STRUCTURE_HEADER, segmentation, caption], image)

    def grounded_objects(
        self, objects: Sequence[tuple[str, BinBox]], tail: str, image: ImageCodes | None
    ) -> TaskExample:
        """`GROUNDED_HEADER phrase0 <loc..> and phrase1 <loc..>` then `tail` (when not empty): the grounded format
        from each object's phrase and its box in location bins."""
        document: list[str | Locations] = []
        for index, (phrase, box) in enumerate(objects):
            joiner = GROUNDED_HEADER if index == 0 else " and"
            document += [f"{joiner} {phrase}", Locations(box)]
        if tail:
            document.append(tail)
        return self._image_output("grounded", document, image)

    def grounded(self, spec: GroundedSpec, image: ImageCodes | None) -> TaskExample:
        """A world scene's grounded example: `... a large red circle <loc..> and ... on a white background`."""
        return self.grounded_objects(*grounded_parts(spec), image)

    def text_render_instruction(self, instruction: str, image: ImageCodes | None) -> TaskExample:
        return self._image_output("text_render", [instruction], image)

    def text_render(self, scene: Scene, image: ImageCodes | None) -> TaskExample:
        return self.text_render_instruction(text_render_prompt(scene, self.world), image)

    def infill(self, image: ImageCodes, region: PixelBox, caption: str | None) -> TaskExample:
        """CM3's own infilling layout: the region's code rows become `<mask:i>` sentinels, and after `<infill>`
        each sentinel is followed by its codes. Chosen over "instruction + grey-masked image -> whole image"
        because it is exactly what CM3 pretraining taught (image spans re-emitted after `<infill>`), the model
        reads the context on every side of the hole before writing it, pixels outside the region are preserved
        by construction, and it writes 9-16 codes instead of a whole image."""
        document: Document = [image] if caption is None else [caption, image]
        ids = self.vocab.encode_document(document)
        start = len(ids) - 1 - self.vocab.codes_per_image  # first code of the image block (before <eos>)
        spans = [(start + a, start + b) for a, b in infill_spans(region, self.image_size, self.vocab)]
        masked = self.masker.apply(ids, spans).ids
        cut = masked.index(self.vocab.infill_id) + 2  # prompt ends with "<infill> <mask:0>"
        return TaskExample("infill", masked[:cut], masked[cut:], "infill")


def article_phrase(description: str) -> str:
    """'a large red circle': the article of a "size colour shape" description."""
    return f"{article(description)} {description}"


def grounded_parts(spec: GroundedSpec) -> tuple[list[tuple[str, BinBox]], str]:
    """A world scene's objects as (phrase, bins) in the spec's order, and its background as the tail."""
    phrases = [article_phrase(obj.describe()) for obj in spec.scene.objects]
    return list(zip(phrases, spec.boxes, strict=True)), f" on a {spec.scene.background} background"
