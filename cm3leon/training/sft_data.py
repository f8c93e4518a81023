"""Instruction-tuning (SFT) data: task documents drawn by a mixture, packed into rows like pretraining.

`SFTBatches.batch(index)` is a pure function of (seed, index) and the object holds only plain data, numpy
arrays and the vocabulary, so it pickles into DataLoader worker processes. A mixture entry `pretrain` draws
pretraining-style documents (both directions, CM3-masked, retrieval-augmented when a hook is given) so the
abilities of the first stage are not forgotten; every other entry is a task of `cm3leon.tasks`.

Guidance dropout: the decoder's classifier-free guidance replaces prompt text runs by `<mask>` (and, for the
editing's third stream, image runs too; see `cm3leon.decoding.prompts`). Image-output tasks show those exact
masked prompts at a small rate, so every unconditional stream the decoder builds is a prompt seen in training.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cm3leon.data.language import detailed_caption
from cm3leon.data.questions import QA, qa_pairs, reasoning_pairs, worked_answer
from cm3leon.data.tasks import INFILL_EMPTY_CELL_PROBABILITY, grounded_spec_of_scene
from cm3leon.data.world import Scene, WorldConfig
from cm3leon.decoding.prompts import CONTENT_KINDS, TEXT_KINDS, mask_runs
from cm3leon.tasks.formats import IMAGE_TASKS, TASKS, SceneDocument, TaskExample, TaskFormatter
from cm3leon.tokenizers.vocab import Vocabulary
from cm3leon.training.packing import PackedBatches, PackUnit
from cm3leon.training.pretrain_data import PretrainBatches, PretrainDataConfig, RetrievalHook, scene_caption
from cm3leon.training.task_corpus import TaskCorpus, TaskCorpusConfig

PRETRAIN = "pretrain"
MIXTURE_ENTRIES: tuple[str, ...] = (PRETRAIN, *TASKS)
# Tasks whose prompt holds an input image, so the "everything masked" stream (editing guidance) exists.
IMAGE_INPUT_TASKS = frozenset({"edit", "seg2img"})


@dataclass(frozen=True)
class TaskMixture:
    """Sampling weight per entry (normalised); entries absent from the file get weight 0."""

    weights: tuple[tuple[str, float], ...]

    def __post_init__(self) -> None:
        unknown = {name for name, _ in self.weights} - set(MIXTURE_ENTRIES)
        if unknown:
            raise ValueError(f"unknown mixture entries {sorted(unknown)}; choose from {MIXTURE_ENTRIES}")
        if any(w < 0 for _, w in self.weights) or sum(w for _, w in self.weights) <= 0:
            raise ValueError("mixture weights must be >= 0 and not all zero")

    @classmethod
    def from_mapping(cls, weights: Mapping[str, float]) -> TaskMixture:
        # Known entries in canonical order, unknown ones kept so that a misspelt task fails loudly.
        order = [*[n for n in MIXTURE_ENTRIES if n in weights], *sorted(set(weights) - set(MIXTURE_ENTRIES))]
        return cls(tuple((name, float(weights[name])) for name in order))

    @classmethod
    def load(cls, path: Path) -> TaskMixture:
        """A JSON object {"weights": {"pretrain": 0.2, "t2i": 0.1, ...}} (other keys are comments)."""
        return cls.from_mapping(json.loads(Path(path).read_text())["weights"])

    @classmethod
    def uniform(cls) -> TaskMixture:
        return cls.from_mapping({name: 1.0 for name in MIXTURE_ENTRIES})

    def probabilities(self) -> dict[str, float]:
        total = sum(w for _, w in self.weights)
        return {name: w / total for name, w in self.weights}


@dataclass(frozen=True)
class SFTDataConfig:
    """Presets: `tiny` (tests: 32px world, small pools) and `shapes` (the demo)."""

    seq_len: int
    pretrain: PretrainDataConfig
    corpus: TaskCorpusConfig = field(default_factory=TaskCorpusConfig)
    # Image-output prompts with text masked (CFG's unconditional / editing's image-only stream).
    text_dropout: float = 0.1
    # Edit / structure prompts with text and images masked (editing's unconditional stream).
    all_dropout: float = 0.05
    # Infill examples that also give the scene's caption ("optional text").
    infill_caption_fraction: float = 0.5
    # Questions per VQA document (a "session" about one image, see `TaskFormatter.vqa_session`); 1: one each.
    vqa_questions_per_image: int = 1
    # VQA answers worked out: the image's canonical detailed caption, then "so the answer is X" (`worked_answer`).
    vqa_worked_answers: bool = False
    # Of the worked VQA documents, those with the image masked out and only the final answer as target
    # (`TaskFormatter.vqa_read`): they teach reading the answer from the description.
    vqa_read_fraction: float = 0.0
    # Caption examples drawn from the word pool instead ("the word \"AB\" in red on ..."): reading, the inverse of
    # text rendering, so a rendered word can be checked by the model's own reading (`policies.shapes.caption_check`).
    caption_word_fraction: float = 0.0
    seed: int = 0

    @classmethod
    def preset(cls, name: str, seq_len: int, world_preset: str | None = None, **overrides: Any) -> SFTDataConfig:
        world_override = {"world_preset": world_preset} if world_preset else {}
        pretrain = PretrainDataConfig.preset(name, seq_len=seq_len, **world_override)
        return cls(**{"seq_len": seq_len, "pretrain": pretrain, "corpus": TaskCorpusConfig.preset(name), **overrides})

    def __post_init__(self) -> None:
        if self.vqa_questions_per_image < 1:
            raise ValueError(f"vqa_questions_per_image must be >= 1, got {self.vqa_questions_per_image}")
        if not 0.0 <= self.vqa_read_fraction <= 1.0:
            raise ValueError(f"vqa_read_fraction must be in [0, 1], got {self.vqa_read_fraction}")
        if self.vqa_read_fraction and not self.vqa_worked_answers:
            raise ValueError("vqa_read_fraction needs vqa_worked_answers: only a worked answer can be read")
        if not 0.0 <= self.caption_word_fraction <= 1.0:
            raise ValueError(f"caption_word_fraction must be in [0, 1], got {self.caption_word_fraction}")

    def world(self) -> WorldConfig:
        return self.pretrain.world()


class SFTBatches(PackedBatches):
    """The SFT `BatchSource`: micro-batch `index` -> `batch_size` packed rows of `config.seq_len` tokens."""

    def __init__(
        self,
        config: SFTDataConfig,
        vocab: Vocabulary,
        corpus: TaskCorpus,
        mixture: TaskMixture,
        batch_size: int,
        retrieval_hook: RetrievalHook | None = None,
        seed_salt: str = "sft",
    ) -> None:
        super().__init__(vocab.pad_id, batch_size, config.seq_len, config.seed, seed_salt)
        self.config, self.vocab, self.corpus, self.retrieval_hook = config, vocab, corpus, retrieval_hook
        self.world = config.world()
        self.formatter = TaskFormatter(vocab, self.world)
        probabilities = mixture.probabilities()
        self.entries = tuple(probabilities)
        self.weights = tuple(probabilities.values())
        # The pretraining slice samples the scene pool exactly as pretraining samples its corpus.
        pretrain_config = replace(config.pretrain, seq_len=config.seq_len, retrieved=0)
        self.pretrain = PretrainBatches(pretrain_config, vocab, corpus.scenes, batch_size, retrieval_hook)

    # --- one example per task ---------------------------------------------------------------------------------
    def _caption(self, index: int, rng: random.Random) -> str:
        scene = self.corpus.scenes.scenes[index]
        return scene_caption(scene, self.world, rng, self.config.pretrain.detailed_caption_fraction)

    def t2i_query(self, rng: random.Random) -> SceneDocument:
        """A text->image query document (the form a retrieval hook reads) from the scene pool."""
        index = rng.randrange(len(self.corpus.scenes))
        scenes = self.corpus.scenes
        return SceneDocument(scenes.scenes[index], index, self._caption(index, rng), scenes.image_codes(index), False)

    def example(self, task: str, rng: random.Random) -> TaskExample:
        """A random training example of `task` (everything drawn from `rng`)."""
        fmt, corpus, world = self.formatter, self.corpus, self.world
        if task == "t2i":
            query = self.t2i_query(rng)
            return fmt.t2i(query.scene, query.caption, query.image)
        if task == "text_render":
            index = rng.randrange(len(corpus.words))
            return fmt.text_render(corpus.words.scenes[index], corpus.words.image_codes(index))
        if task == "edit":
            index = rng.randrange(len(corpus.edits))
            return fmt.edit(corpus.edits[index], *corpus.edit_images(index))
        # The fraction is tested first only when set, so runs without it draw exactly the documents they did.
        if task == "caption" and self.config.caption_word_fraction and rng.random() < self.config.caption_word_fraction:
            index = rng.randrange(len(corpus.words))
            # Always a full description: the short form leaves out the background, which the check compares.
            word = corpus.words.scenes[index]
            return fmt.caption(corpus.words.image_codes(index), detailed_caption(word, world, rng))
        index = rng.randrange(len(corpus.scenes))
        scene, image = corpus.scenes.scenes[index], corpus.scenes.image_codes(index)
        if task == "caption":
            return fmt.caption(image, self._caption(index, rng))
        if task == "vqa":
            if self.config.vqa_read_fraction and rng.random() < self.config.vqa_read_fraction:
                qa = rng.choice(qa_pairs(scene, world, rng))
                return fmt.vqa_read(image, worked_answer(qa, detailed_caption(scene, world)), qa.answer)
            questions = self._vqa_questions(scene, rng)
            if self.config.vqa_questions_per_image > 1:
                return fmt.vqa_session(image, questions[: self.config.vqa_questions_per_image])
            return fmt.vqa(image, questions[0])
        if task == "reasoning":
            return fmt.vqa(image, rng.choice(reasoning_pairs(scene, world, rng)))
        if task == "segmentation":
            return fmt.segmentation(image, corpus.segmentation(index))
        if task == "seg2img":
            return fmt.seg2img(corpus.segmentation(index), detailed_caption(scene, world, rng), image)
        if task == "grounded":
            return fmt.grounded(grounded_spec_of_scene(scene, world), image)
        if task == "infill":
            empty = scene.empty_cells(world)
            use_empty = bool(empty) and rng.random() < INFILL_EMPTY_CELL_PROBABILITY
            cell = rng.choice(empty) if use_empty else rng.choice(scene.objects).cell
            with_caption = rng.random() < self.config.infill_caption_fraction
            caption = detailed_caption(scene, world, rng) if with_caption else None
            return fmt.infill(image, world.cell_box(cell), caption)
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")

    def _vqa_questions(self, scene: Scene, rng: random.Random) -> list[QA]:
        """The scene's questions in random order, answers worked out when the config asks for it."""
        questions = qa_pairs(scene, self.world, rng)
        rng.shuffle(questions)
        if self.config.vqa_worked_answers:
            description = detailed_caption(scene, self.world)  # canonical: one description per image to learn
            questions = [worked_answer(qa, description) for qa in questions]
        return questions

    def guidance_dropout(self, example: TaskExample, rng: random.Random) -> TaskExample:
        """Maybe replace the prompt by one of the decoder's unconditional streams (same output)."""
        if example.task not in IMAGE_TASKS:
            return example
        draw = rng.random()
        if example.task in IMAGE_INPUT_TASKS and draw < self.config.all_dropout:
            return replace(example, prompt=mask_runs(self.vocab, example.prompt, CONTENT_KINDS))
        if draw < self.config.all_dropout + self.config.text_dropout:
            return replace(example, prompt=mask_runs(self.vocab, example.prompt, TEXT_KINDS))
        return example

    # --- units and batches ------------------------------------------------------------------------------------
    def task_unit(self, task: str, rng: random.Random) -> PackUnit:
        if task != "t2i" or self.retrieval_hook is None:
            example = self.guidance_dropout(self.example(task, rng), rng)
            return example.ids, example.loss_mask
        query = self.t2i_query(rng)
        example = self.guidance_dropout(self.formatter.t2i(query.scene, query.caption, query.image), rng)
        # Retrieved documents are context, never targets: the output is the query's image.
        retrieved = [self.vocab.encode_document(d) for d in self.retrieval_hook(query, rng)]
        prefix = [token for document in retrieved for token in document]
        return prefix + example.ids, [False] * len(prefix) + example.loss_mask

    def draw_entry(self, rng: random.Random) -> str:
        return rng.choices(self.entries, weights=self.weights)[0]

    def units(self, rng: random.Random) -> Iterator[PackUnit]:
        while True:
            entry = self.draw_entry(rng)
            if entry == PRETRAIN:
                yield self.pretrain.encode_unit(self.pretrain.sample_document(rng), rng)
            else:
                yield self.task_unit(entry, rng)
