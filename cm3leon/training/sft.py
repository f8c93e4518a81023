"""`cm3leon train sft`: multi-task instruction tuning from a pretrained model directory, wired like pretraining.

The model, vocabulary and VQ tokenizer come from `--init` (a directory written by `save_checkpoint`), so SFT can
never change a token id. The first run initialises the weights from it; re-running with the same `--out`
resumes from `OUT/checkpoint` (the trainer's state, which then wins over `--init`). Under `torchrun` rank 0
alone builds the task-image cache; the other ranks wait at a barrier and read it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from cm3leon.checkpoint import TRAINING_RECORD_FILE, VQ_SUBDIR, load_checkpoint, save_checkpoint
from cm3leon.data.world import Split
from cm3leon.kinds import trained_capabilities
from cm3leon.retrieval.retriever import Retriever
from cm3leon.training.distributed import DistributedContext, barrier, distributed_context
from cm3leon.training.image_corpus import ImageCodeCorpus
from cm3leon.training.losses import vocabulary_modalities
from cm3leon.training.pretrain import CACHE_DIR, FINAL_DIR
from cm3leon.training.pretrain_data import RetrievalHook
from cm3leon.training.retrieval_data import CorpusRetrieval, TrainingRetrievalConfig, cached_neighbours
from cm3leon.training.sft_data import SFTBatches, SFTDataConfig, TaskMixture
from cm3leon.training.task_corpus import TaskCorpus, TaskCorpusConfig
from cm3leon.training.trainer import Trainer, TrainerConfig, TrainSummary

# World image size of the `tiny` VQ preset: an init checkpoint with this VQ is a test model.
TINY_IMAGE_SIZE = 32
# Held-out SFT batches (val split) scored for per-modality loss, and the val pools they draw from.
HELDOUT_POOLS = {"tiny": dict(scenes=16, words=8, edits=8), "shapes": dict(scenes=512, words=128, edits=256)}


@dataclass(frozen=True)
class SFTRun:
    init_dir: Path
    out_dir: Path
    mixture: TaskMixture
    trainer: TrainerConfig | None = None  # None: sft_trainer_config(data preset)
    data: SFTDataConfig | None = None  # None: from the init checkpoint (see `data_preset_of`)
    device: str = "auto"
    retrieval_hook: RetrievalHook | None = None
    # Retrieved documents for t2i examples, found by this retriever over the scene pool (when no hook is given).
    retrieved: int = 0
    retriever_dir: Path | None = None
    # Pool fields that replace the preset's (`TaskCorpusConfig`: scenes, words, edits, seed). Long runs need
    # larger pools, or they fit the pool instead of the tasks. Another seed draws other scenes: a model fine-tuned
    # again from an SFT checkpoint can then learn from examples it has never seen.
    pools: dict[str, int] = field(default_factory=dict)
    # Questions per training VQA document (`SFTDataConfig.vqa_questions_per_image`); held-out batches keep 1,
    # so their losses compare with runs trained one question at a time.
    vqa_questions_per_image: int = 1
    # VQA answers worked out (`SFTDataConfig.vqa_worked_answers`); held-out batches use the same form.
    vqa_worked_answers: bool = False
    # Worked VQA documents with the image masked out (`SFTDataConfig.vqa_read_fraction`).
    vqa_read_fraction: float = 0.0
    # Caption examples that read a word image (`SFTDataConfig.caption_word_fraction`).
    caption_word_fraction: float = 0.0


def sft_trainer_config(preset: str, **overrides: object) -> TrainerConfig:
    """Pretraining's trainer preset with a lower peak rate: SFT adapts a trained model, it does not start one."""
    base = TrainerConfig.preset(preset)
    if preset == "shapes":
        base = replace(base, learning_rate=base.learning_rate / 2, warmup_steps=100)
    return replace(base, **overrides)  # type: ignore[arg-type]


def data_preset_of(init_dir: Path, image_size: int) -> tuple[str, str | None]:
    """(data preset, world preset) of the pretraining run that wrote `init_dir` (its training.json), else
    guessed from the VQ's image size (the `tiny` VQ is 32 px)."""
    record_path = Path(init_dir) / TRAINING_RECORD_FILE
    if record_path.exists():
        record = json.loads(record_path.read_text())
        preset = record.get("preset")
        world = record.get("data_config", {}).get("world_preset")
        if preset in ("tiny", "shapes"):
            return preset, world
    return ("tiny", "shapes32") if image_size == TINY_IMAGE_SIZE else ("shapes", None)


def scene_pool_retrieval(
    run: SFTRun, data: SFTDataConfig, scenes: ImageCodeCorpus, context: DistributedContext, progress: bool
) -> CorpusRetrieval | None:
    """The pretraining retrieval hook over SFT's scene pool (neighbours computed once per rank, then cached)."""
    if not run.retrieved:
        return None
    if run.retriever_dir is None:
        raise ValueError(f"retrieved={run.retrieved} needs a retriever directory")
    retriever = Retriever.from_pretrained(run.retriever_dir, device=context.device)
    world = data.world()
    key = f"sft-scenes-{len(scenes)}-{scenes_fingerprint(scenes)}"
    config = TrainingRetrievalConfig(k=run.retrieved)
    neighbours = cached_neighbours(run.out_dir / CACHE_DIR, key, retriever, scenes, world, config, progress)
    return CorpusRetrieval(scenes, neighbours, run.retrieved, world, data.pretrain.detailed_caption_fraction)


def scenes_fingerprint(scenes: ImageCodeCorpus) -> str:
    return hashlib.sha256("\n".join(scene.key() for scene in scenes.scenes).encode()).hexdigest()[:16]


def run_sft(run: SFTRun, context: DistributedContext | None = None) -> TrainSummary:
    """Train (or resume) and write OUT/final; returns the trainer's summary (on every rank)."""
    with distributed_context(run.device, context) as active:
        return _run(run, active)


def _run(run: SFTRun, context: DistributedContext) -> TrainSummary:
    model, vocab, image_tokenizer = load_checkpoint(run.init_dir, device=context.device)
    if image_tokenizer is None:
        raise ValueError(f"{run.init_dir} has no {VQ_SUBDIR}/: SFT needs the VQ tokenizer the model was trained with")
    preset, world_preset = data_preset_of(run.init_dir, image_tokenizer.config.image_size)
    trainer_config = run.trainer or sft_trainer_config(preset)
    data = run.data or SFTDataConfig.preset(
        preset, seq_len=model.config.max_seq_len, world_preset=world_preset, seed=trainer_config.seed
    )
    if run.pools:
        data = replace(data, corpus=replace(data.corpus, **run.pools))
    data = replace(
        data,
        vqa_questions_per_image=run.vqa_questions_per_image,
        vqa_worked_answers=run.vqa_worked_answers,
        vqa_read_fraction=run.vqa_read_fraction,
        caption_word_fraction=run.caption_word_fraction,
    )
    torch.manual_seed(trainer_config.seed)
    world = data.world()
    # The held-out pools keep the preset's seed whatever the training pools' seed, so held-out losses of runs
    # on different pools compare.
    heldout_pools = TaskCorpusConfig(**HELDOUT_POOLS[preset])
    cache_dir = run.out_dir / CACHE_DIR
    corpora = ((data.corpus, Split.TRAIN), (heldout_pools, Split.VAL))
    if context.is_main:  # slow, write-once work: one rank does it, the others read the result
        run.out_dir.mkdir(parents=True, exist_ok=True)
        for pools, split in corpora:
            TaskCorpus.cached(cache_dir, pools, world, image_tokenizer, split, progress=trainer_config.progress)
    barrier(context)
    train_corpus, val_corpus = (
        TaskCorpus.cached(cache_dir, pools, world, image_tokenizer, split, progress=False) for pools, split in corpora
    )
    model.train()
    hook = run.retrieval_hook or scene_pool_retrieval(run, data, train_corpus.scenes, context, trainer_config.progress)
    source = SFTBatches(data, vocab, train_corpus, run.mixture, trainer_config.batch_size, hook)
    heldout_data = replace(
        data, text_dropout=0.0, all_dropout=0.0, vqa_questions_per_image=1, caption_word_fraction=0.0
    )
    heldout_source = SFTBatches(heldout_data, vocab, val_corpus, run.mixture, trainer_config.batch_size,
                                seed_salt="heldout")
    heldout = [heldout_source.batch(i) for i in range(data.pretrain.heldout_batch_count)] if context.is_main else []
    extra = {"sft_data_config": asdict(data), "mixture": run.mixture.probabilities(), "init": str(run.init_dir)}
    trainer = Trainer(
        model, trainer_config, source, run.out_dir, vocabulary_modalities(vocab), context, heldout,
        extra_state=json.loads(json.dumps(extra)),
    )
    summary = trainer.train()
    if context.is_main:
        final = save_checkpoint(run.out_dir / FINAL_DIR, model, vocab, run.init_dir / VQ_SUBDIR)
        record = {
            "stage": "sft",
            "preset": preset,
            "init": str(run.init_dir),
            "summary": asdict(summary),
            "parameters": model.num_parameters(),
            "world_size": context.world_size,
            "trainer_config": asdict(trainer_config),
            "data_config": asdict(data.pretrain),
            "sft_data_config": asdict(data),
            "mixture": run.mixture.probabilities(),
        }
        (final / TRAINING_RECORD_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        # What the model now runs (the engine serves exactly the kinds declared here).
        trained_capabilities(run.init_dir, run.mixture.probabilities()).save(final)
    barrier(context)
    return summary
