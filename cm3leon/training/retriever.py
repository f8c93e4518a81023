"""Contrastive training of the retriever on the shapes world: resumable, time- or step-budgeted, on CPU.

Run directory (`out_dir`):

    checkpoint/        the resumable state (`cm3leon.training.checkpoint`), rewritten every
                       `checkpoint_every_seconds` and when the run stops (also on Ctrl-C)
    metrics.jsonl      one JSON object per logging step (loss, temperature, lr, val recall@1 when evaluated)
    train_config.json  the training and model configs of the run
    retriever_config.json, model.safetensors, tokenizer.json   the final retriever (`Retriever.from_pretrained`)

Running again with the same `out_dir` resumes from `checkpoint/` and continues to the same target (the step
count, or the total minutes including earlier sessions).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cm3leon.data.world import Split, World, WorldConfig
from cm3leon.retrieval.config import RetrieverConfig, RetrieverTrainingConfig
from cm3leon.retrieval.contrastive import contrastive_loss, positive_pairs
from cm3leon.retrieval.encoders import DualEncoder
from cm3leon.retrieval.metrics import recall_at_k
from cm3leon.retrieval.pairs import CaptionedImage, draw_pairs, stack_images
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tokenizers.text import TextTokenizer, TextTokenizerConfig
from cm3leon.tokenizers.world_text import train_world_tokenizer
from cm3leon.training.checkpoint import (
    MetricsLogger,
    find_checkpoint,
    load_training_checkpoint,
    read_checkpoint_config,
    save_training_checkpoint,
)

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.json"
SECONDS_PER_MINUTE = 60.0
# Seed namespace of the fixed validation pairs (kept apart from the training batches' seeds).
VALIDATION_SEED = "retriever-val"


@dataclass
class RetrieverTrainState:
    """The scalars of a run. No data position: the batches are a pure function of (seed, step)."""

    step: int = 0
    elapsed_seconds: float = 0.0
    pairs_seen: int = 0


@dataclass(frozen=True)
class RetrieverTrainSummary:
    steps: int
    elapsed_seconds: float
    final_loss: float
    val_text_to_image_recall_at_1: float | None


def learning_rate(config: RetrieverTrainingConfig, progress: float) -> float:
    """Linear warmup over the first `warmup_fraction` of the run, then a cosine from the peak to its floor.

    A function of `progress` (the fraction of the step target, or of the time budget, already done) only, so
    resume needs no scheduler state and a run of any length gets the whole schedule."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < config.warmup_fraction:
        return config.learning_rate * max(progress / config.warmup_fraction, 0.01)
    decayed = (progress - config.warmup_fraction) / max(1.0 - config.warmup_fraction, 1e-9)
    floor = config.learning_rate * config.min_lr_ratio
    return floor + (config.learning_rate - floor) * 0.5 * (1.0 + math.cos(math.pi * decayed))


def build_optimizer(retriever: Retriever, config: RetrieverTrainingConfig) -> torch.optim.AdamW:
    """AdamW; gains, biases, the temperature, positions and the summary vector are not decayed (as in CLIP)."""
    decay, no_decay = [], []
    for name, parameter in retriever.model.named_parameters():
        exempt = parameter.ndim < 2 or name.endswith(("positions", "summary"))
        (no_decay if exempt else decay).append(parameter)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(config.beta1, config.beta2),
    )


def training_batch(world: World, config: RetrieverTrainingConfig, step: int) -> list[CaptionedImage]:
    """The pairs of optimizer step `step`: a pure function of (seed, step)."""
    return draw_pairs(
        world,
        f"{config.seed}:step:{step}",
        Split.TRAIN,
        config.batch_size,
        short_caption_fraction=config.short_caption_fraction,
        text_scene_fraction=config.text_scene_fraction,
        near_miss_fraction=config.near_miss_fraction,
    )


def batch_loss(retriever: Retriever, pairs: list[CaptionedImage], config: RetrieverTrainingConfig) -> torch.Tensor:
    """The symmetric contrastive loss of one batch, with every scene-key match a positive."""
    token_ids, padding = retriever.text_batch([pair.text for pair in pairs])
    pixels = retriever.pixel_batch(stack_images(pairs))
    positives = positive_pairs([pair.text_key for pair in pairs], [pair.image_keys for pair in pairs])
    model = retriever.model
    # Autocast the text tower only: bf16 can speed up its matmuls, while the convolutions gain nothing.
    with torch.autocast(device_type=retriever.device.type, dtype=torch.bfloat16, enabled=config.bf16_autocast):
        text_embeddings = model.encode_texts(token_ids, padding)
    image_embeddings = model.encode_images(pixels)
    return contrastive_loss(text_embeddings, image_embeddings, model.scale(), positives.to(retriever.device))


def training_step(
    retriever: Retriever,
    optimizer: torch.optim.Optimizer,
    pairs: list[CaptionedImage],
    config: RetrieverTrainingConfig,
    lr: float,
) -> float:
    """One optimizer step; returns the loss."""
    retriever.model.train()
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = batch_loss(retriever, pairs, config)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(retriever.model.parameters(), config.grad_clip)
    optimizer.step()
    return float(loss.detach())


def validation_recall(retriever: Retriever, pairs: list[CaptionedImage]) -> float:
    """Text->image recall@1 (scene-key hits) on fixed validation pairs with detailed captions."""
    keys = [pair.scene.key() for pair in pairs]
    similarity = retriever.embed_texts([pair.text for pair in pairs]) @ retriever.embed_images(stack_images(pairs)).T
    return float(recall_at_k(similarity, keys, keys, ks=(1,))[1].mean())


def world_tokenizer(preset: str) -> TextTokenizer:
    """The BPE that `cm3leon train text-tokenizer --preset PRESET` trains with its defaults (same corpus, same
    seed, so the same merges): the retriever reads text the way the decoder does."""

    return train_world_tokenizer(WorldConfig.preset("shapes"), TextTokenizerConfig.preset(preset))


def _progress(state: RetrieverTrainState, steps: int | None, budget_seconds: float | None) -> float:
    fractions = []
    if steps is not None:
        fractions.append(state.step / steps)
    if budget_seconds is not None:
        fractions.append(state.elapsed_seconds / budget_seconds)
    return max(fractions)


def train_retriever(
    out_dir: Path,
    model_config: RetrieverConfig,
    train_config: RetrieverTrainingConfig,
    tokenizer: TextTokenizer | None,
    steps: int | None = None,
    minutes: float | None = None,
    world_config: WorldConfig | None = None,
    progress_bar: bool = True,
) -> RetrieverTrainSummary:
    """Train (or resume) until `steps` optimizer steps or `minutes` of training in total, whichever comes first;
    then write the final retriever into `out_dir`. A resumed run keeps its checkpoint's model and tokenizer
    (`model_config` and `tokenizer` are then ignored)."""
    if steps is None and minutes is None:
        raise ValueError("give a target: steps, minutes, or both")
    budget_seconds = None if minutes is None else minutes * SECONDS_PER_MINUTE
    out_dir.mkdir(parents=True, exist_ok=True)
    world = World(world_config or WorldConfig.preset("shapes"))
    checkpoint_dir = out_dir / CHECKPOINT_DIR
    resume_from = find_checkpoint(checkpoint_dir)
    if resume_from is not None:
        # The tokenizer was written next to the checkpoint when the run started; it never changes.
        model = DualEncoder(RetrieverConfig.from_json(read_checkpoint_config(resume_from)))
        retriever = Retriever(model, TextTokenizer.load(out_dir))
        optimizer = build_optimizer(retriever, train_config)
        state = RetrieverTrainState(**load_training_checkpoint(resume_from, retriever.model, optimizer))
    elif tokenizer is None:
        raise ValueError(f"no checkpoint in {checkpoint_dir} to resume from: a new run needs a tokenizer")
    else:
        retriever, state = Retriever.build(model_config, tokenizer), RetrieverTrainState()
        tokenizer.save(out_dir)
        optimizer = build_optimizer(retriever, train_config)

    def save() -> None:
        save_training_checkpoint(checkpoint_dir, retriever.model, retriever.config.to_json(), optimizer, asdict(state))

    (out_dir / CONFIG_FILE).write_text(
        json.dumps({"training": asdict(train_config), "model": asdict(retriever.config)}, indent=2) + "\n"
    )
    metrics = MetricsLogger(out_dir / METRICS_FILE)
    validation = draw_pairs(
        world, VALIDATION_SEED, Split.VAL, train_config.eval_size, text_scene_fraction=train_config.text_scene_fraction
    )

    bar = tqdm(total=steps, initial=state.step, unit="step", disable=not progress_bar, dynamic_ncols=True)
    last_save = time.monotonic()
    window: list[float] = []
    last_loss, last_recall = float("nan"), None

    def done() -> bool:
        return _progress(state, steps, budget_seconds) >= 1.0

    # Time is counted over whole iterations (step, logging, validation, checkpoints), so --minutes is wall time.
    tick = time.monotonic()
    try:
        while not done():
            lr = learning_rate(train_config, _progress(state, steps, budget_seconds))
            pairs = training_batch(world, train_config, state.step)
            last_loss = training_step(retriever, optimizer, pairs, train_config, lr)
            window.append(last_loss)
            state.step += 1
            state.pairs_seen += len(pairs)
            state.elapsed_seconds += time.monotonic() - tick
            tick = time.monotonic()
            record: dict[str, Any] = {}
            if state.step % train_config.log_every == 0 or done():
                temperature = float(1.0 / retriever.model.scale().detach())
                record = {"loss": float(np.mean(window)), "lr": lr, "temperature": temperature}
                window.clear()
            if state.step % train_config.eval_every == 0 or done():
                last_recall = validation_recall(retriever, validation)
                record["val_text_to_image_recall_at_1"] = last_recall
            if record:
                metrics.log({"step": state.step, "elapsed_seconds": round(state.elapsed_seconds, 1), **record})
                bar.set_postfix(
                    loss=f"{last_loss:.3f}",
                    val_r1="-" if last_recall is None else f"{last_recall:.2f}",
                    minutes=f"{state.elapsed_seconds / SECONDS_PER_MINUTE:.1f}",
                )
            bar.update(1)
            if time.monotonic() - last_save >= train_config.checkpoint_every_seconds:
                save()
                last_save = time.monotonic()
    finally:
        # Also on Ctrl-C: the run resumes from here.
        save()
        bar.close()
    retriever.save_pretrained(out_dir)
    return RetrieverTrainSummary(state.step, state.elapsed_seconds, last_loss, last_recall)
