"""`cm3leon train pretrain`: vocabulary, model, data and trainer wired together for one (resumable) run.

Under `torchrun` every rank runs this; rank 0 alone trains the text tokenizer and builds the image-code cache,
the others wait at a barrier and then read what it wrote.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cm3leon.checkpoint import TRAINING_RECORD_FILE, save_checkpoint
from cm3leon.data.world import Split, WorldConfig
from cm3leon.model import DecoderConfig, Transformer
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tokenizers.image import ImageTokenizer
from cm3leon.tokenizers.text import TOKENIZER_FILE, TextTokenizer, TextTokenizerConfig
from cm3leon.tokenizers.vocab import VOCAB_FILE, Vocabulary, VocabularyConfig
from cm3leon.tokenizers.world_text import train_world_tokenizer
from cm3leon.training.distributed import DistributedContext, barrier, distributed_context
from cm3leon.training.image_corpus import ImageCodeCorpus, world_fingerprint
from cm3leon.training.losses import vocabulary_modalities
from cm3leon.training.pretrain_data import PretrainBatches, PretrainDataConfig, heldout_batches, load_corpus
from cm3leon.training.retrieval_data import CorpusRetrieval, TrainingRetrievalConfig, cached_neighbours
from cm3leon.training.trainer import Trainer, TrainerConfig, TrainSummary

FINAL_DIR = "final"
CACHE_DIR = "cache"
# Scenes whose text trains the BPE tokenizer when no tokenizer exists yet (per model preset).
TOKENIZER_CORPUS_SCENES = {"tiny": 300, "shapes": 20_000}


@dataclass(frozen=True)
class PretrainRun:
    """One pretraining run; `preset` names the model, data and trainer presets together."""

    preset: str
    out_dir: Path
    vq_dir: Path
    shared_tokenizer_dir: Path = Path("models/shapes")
    trainer: TrainerConfig | None = None  # None: TrainerConfig.preset(preset)
    data: PretrainDataConfig | None = None  # None: PretrainDataConfig.preset(preset, seq_len=model's)
    device: str = "auto"
    # The retriever that finds each training document's neighbours (needed when data.retrieved > 0).
    retriever_dir: Path | None = None
    retrieval: TrainingRetrievalConfig | None = None  # None: the paper's rules with k = data.retrieved


def has_vocabulary(directory: Path) -> bool:
    return (directory / TOKENIZER_FILE).exists() and (directory / VOCAB_FILE).exists()


def build_vocabulary(
    out_dir: Path, shared_dir: Path, image_tokenizer: ImageTokenizer, world: WorldConfig, preset: str
) -> Vocabulary:
    """The run's vocabulary: OUT's own, else the shared one in `shared_dir`, else a freshly trained BPE.

    Whatever is chosen is saved into OUT, so a resumed run always reads back exactly the ids it trained on.
    """
    if has_vocabulary(out_dir):
        vocab = Vocabulary.load(out_dir)
    else:
        vq = image_tokenizer.config
        config = VocabularyConfig(codebook_size=vq.codebook_size, image_grid=vq.grid, location_bins=world.location_bins)
        if (shared_dir / TOKENIZER_FILE).exists():
            text = TextTokenizer.load(shared_dir)
            if (shared_dir / VOCAB_FILE).exists():
                config = Vocabulary.load(shared_dir).config
        else:
            stage = preset if preset in TOKENIZER_CORPUS_SCENES else "shapes"
            text_config = TextTokenizerConfig.preset(stage)
            text = train_world_tokenizer(world, text_config, n_scenes=TOKENIZER_CORPUS_SCENES[stage])
        vocab = Vocabulary(text, config)
        vocab.save(out_dir)
    vq = image_tokenizer.config
    if (vocab.config.codebook_size, vocab.config.image_grid) != (vq.codebook_size, vq.grid):
        raise ValueError(
            f"vocabulary expects {vocab.config.codebook_size} codes on a {vocab.config.image_grid}^2 grid, the VQ "
            f"tokenizer has {vq.codebook_size} on {vq.grid}^2: use a matching --vq or a fresh --out"
        )
    return vocab


def training_neighbours(
    run: PretrainRun, data: PretrainDataConfig, corpus: ImageCodeCorpus, context: DistributedContext, progress: bool
) -> np.ndarray:
    """The train corpus's retrieved neighbours (computed once on this rank's device, then read from the cache)."""
    if run.retriever_dir is None:
        raise ValueError(f"retrieved={data.retrieved} needs a retriever directory")
    config = run.retrieval or TrainingRetrievalConfig(k=data.retrieved, render_workers=data.render_workers)
    if config.k < data.retrieved:
        raise ValueError(f"the retrieval config gives {config.k} neighbours, the data asks for {data.retrieved}")
    retriever = Retriever.from_pretrained(run.retriever_dir, device=context.device)
    corpus_key = f"train-{data.train_scenes}-seed{data.corpus_seed}-{world_fingerprint(data.world())}"
    return cached_neighbours(run.out_dir / CACHE_DIR, corpus_key, retriever, corpus, data.world(), config, progress)


def run_pretraining(run: PretrainRun, context: DistributedContext | None = None) -> TrainSummary:
    """Train (or resume) and write OUT/final; returns the trainer's summary (on every rank)."""
    with distributed_context(run.device, context) as active:
        return _run(run, active)


def _run(run: PretrainRun, context: DistributedContext) -> TrainSummary:
    trainer_config = run.trainer or TrainerConfig.preset(run.preset)
    torch.manual_seed(trainer_config.seed)
    # On the run's device: encoding the corpus on the CPU beside an idle GPU wastes the GPU's time.
    image_tokenizer = ImageTokenizer.from_pretrained(run.vq_dir, device=context.device)
    # The model's context fixes the packed row length; the vocabulary fixes its embedding size.
    seq_len = DecoderConfig.preset(run.preset, vocab_size=1).max_seq_len
    data_config = run.data or PretrainDataConfig.preset(run.preset, seq_len=seq_len)
    world = data_config.world()
    cache_dir = run.out_dir / CACHE_DIR
    if context.is_main:  # slow, write-once work: one rank does it, the others read the result
        run.out_dir.mkdir(parents=True, exist_ok=True)
        build_vocabulary(run.out_dir, run.shared_tokenizer_dir, image_tokenizer, world, run.preset)
        for split in (Split.TRAIN, Split.VAL):
            load_corpus(data_config, image_tokenizer, cache_dir, split, progress=trainer_config.progress)
        if data_config.retrieved:
            train_corpus = load_corpus(data_config, image_tokenizer, cache_dir, Split.TRAIN, progress=False)
            training_neighbours(run, data_config, train_corpus, context, trainer_config.progress)
    barrier(context)
    vocab = build_vocabulary(run.out_dir, run.shared_tokenizer_dir, image_tokenizer, world, run.preset)
    train_corpus = load_corpus(data_config, image_tokenizer, cache_dir, Split.TRAIN, progress=False)
    val_corpus = load_corpus(data_config, image_tokenizer, cache_dir, Split.VAL, progress=False)
    hook = None
    if data_config.retrieved:
        neighbours = training_neighbours(run, data_config, train_corpus, context, progress=False)
        hook = CorpusRetrieval(
            train_corpus, neighbours, data_config.retrieved, world, data_config.detailed_caption_fraction
        )

    model = Transformer(DecoderConfig.preset(run.preset, vocab_size=vocab.size, max_seq_len=data_config.seq_len))
    source = PretrainBatches(data_config, vocab, train_corpus, trainer_config.batch_size, retrieval_hook=hook)
    heldout = heldout_batches(
        data_config, vocab, val_corpus, trainer_config.batch_size, data_config.heldout_batch_count
    ) if context.is_main else []
    trainer = Trainer(
        model, trainer_config, source, run.out_dir, vocabulary_modalities(vocab), context, heldout,
        extra_state={"data_config": json.loads(json.dumps(asdict(data_config)))},
    )
    summary = trainer.train()
    if context.is_main:
        final = save_checkpoint(run.out_dir / FINAL_DIR, model, vocab, run.vq_dir)
        record = {
            "summary": asdict(summary),
            "preset": run.preset,
            "parameters": model.num_parameters(),
            "world_size": context.world_size,
            "trainer_config": asdict(trainer_config),
            "data_config": asdict(data_config),
        }
        (final / TRAINING_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    barrier(context)
    return summary
