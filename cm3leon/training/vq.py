"""Training the VQ image tokenizer on world images: `cm3leon train vq --preset shapes --out DIR`.

Run directory layout (re-running with the same DIR resumes from the checkpoint):

    DIR/run.json          the tokenizer and trainer configs of the run
    DIR/metrics.jsonl     one JSON object per logged step (loss, psnr, codebook usage/perplexity, images/s, lr)
    DIR/checkpoint/       model + config + optimizer + scalars + RNG states (see training/checkpoint.py)
    DIR/final/            the trained tokenizer (`ImageTokenizer.from_pretrained(DIR / "final")`)
    DIR/summary.json      steps, images seen, wall time and last metrics of the finished run

`--init DIR --freeze-codes` fine-tunes the pixel decoder of a trained tokenizer alone: the encoder and the codebook
are frozen, so every image keeps its codes (same `fingerprint()`) and every corpus, memory and decoder model made
with them stays valid, while the pictures drawn from the codes get sharper.

The schedule is linear warmup then cosine decay. With `steps`, it follows the step count and a resumed run is
bit-identical to an uninterrupted one. With `minutes`, it follows the fraction of the time budget spent, so the
cosine ends at the deadline however fast the (shared) CPU happens to be.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from cm3leon.data.image_bank import ImageBank, ImageBankConfig
from cm3leon.data.world import WorldConfig
from cm3leon.hardware import resolve_bf16
from cm3leon.presets import Presets
from cm3leon.tokenizers.image import ImageTokenizer, ImageTokenizerConfig, TokenizerOutput, images_to_tensor
from cm3leon.training.checkpoint import (
    MetricsLogger,
    find_checkpoint,
    load_training_checkpoint,
    read_checkpoint_config,
    save_training_checkpoint,
)

CHECKPOINT_SUBDIR = "checkpoint"
FINAL_SUBDIR = "final"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"
PSNR_PEAK = 2.0  # peak-to-peak range of pixels in [-1, 1]


@dataclass(frozen=True)
class VQTrainConfig(Presets):
    """Optimiser, schedule, data and bookkeeping of a tokenizer run. Presets: `tiny` (tests), `shapes`."""

    batch_size: int = 16
    learning_rate: float = 2e-3
    min_lr_ratio: float = 0.05
    weight_decay: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    warmup_steps: int = 100
    # Steps trained as a plain autoencoder before the codebook is switched on, so that k-means initialises the
    # codebook on features that already tell colours and shapes apart, not on a random encoder's (whose nearest
    # codes followed geometry and lost colour in early trials: grey blobs for hundreds of steps).
    autoencoder_warmup_steps: int = 300
    # Images whose encoder features the k-means codebook initialisation clusters when the codebook switches on
    # (one training batch would be ~1000 vectors, mostly background, for 512 codes).
    codebook_init_images: int = 512
    grad_clip_norm: float = 1.0
    # Re-render one bank chunk every this many steps: rendering then takes a few percent of the training time.
    refresh_every_steps: int = 64
    log_every_steps: int = 20
    checkpoint_every_seconds: float = 180.0
    # bf16 autocast of the conv layers (the quantizer stays fp32). None: on where the device has native bf16
    # (GPUs), off where it is emulated (AVX2 CPUs, where it is far slower than fp32): see hardware.py.
    bf16_autocast: bool | None = None
    world_preset: str = "shapes"
    bank_preset: str = "shapes"
    # Processes that render the initial image bank (the `gpu` bank is 2^18 images: ~1 min on one core).
    render_workers: int = 1
    seed: int = 0

    # The tokenizer presets' names, so that one name picks both the tokenizer's shape and its training.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(
            batch_size=8, warmup_steps=2, autoencoder_warmup_steps=2, codebook_init_images=32,
            refresh_every_steps=2, log_every_steps=1, world_preset="shapes32", bank_preset="tiny",
        ),
        "shapes": {},
        "shapes-local": {},
        "shapes-patch": {},
        "256px": {},
        # One GPU: batches 16x larger (the EMA codebook and k-means see many more vectors per step), a bank
        # rendered once in parallel and never refreshed in the loop (see ImageBankConfig's `gpu` preset).
        "gpu": dict(
            batch_size=256, warmup_steps=200, codebook_init_images=8192, refresh_every_steps=10**9,
            log_every_steps=50, checkpoint_every_seconds=60.0, bank_preset="gpu", render_workers=12,
        ),
    }


def learning_rate(config: VQTrainConfig, step: int, progress: float) -> float:
    """Warmup over the first steps, times a cosine from the peak to `min_lr_ratio` over `progress` in [0, 1]."""
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps > 0 else 1.0
    floor = config.learning_rate * config.min_lr_ratio
    cosine = floor + (config.learning_rate - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return warmup * cosine


def image_gradients(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return pixels[..., :, 1:] - pixels[..., :, :-1], pixels[..., 1:, :] - pixels[..., :-1, :]


def reconstruction_losses(
    reconstruction: torch.Tensor, target: torch.Tensor, config: ImageTokenizerConfig
) -> dict[str, torch.Tensor]:
    """Pixel loss (L1 or L2) and an L1 loss on horizontal/vertical differences, which rewards sharp outlines
    that a pure pixel loss would accept as a blur."""
    reconstruction = reconstruction.float()
    pixel_loss = F.l1_loss if config.reconstruction_loss == "l1" else F.mse_loss
    losses = {"pixel_loss": pixel_loss(reconstruction, target)}
    if config.edge_loss_weight > 0:
        (rx, ry), (tx, ty) = image_gradients(reconstruction), image_gradients(target)
        losses["edge_loss"] = F.l1_loss(rx, tx) + F.l1_loss(ry, ty)
    return losses


def batch_psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean per-image PSNR in dB of reconstructions clipped to the pixel range."""
    mse = (reconstruction.detach().float().clamp(-1, 1) - target).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(PSNR_PEAK**2 / mse.clamp_min(1e-10))).mean())


@dataclass
class VQRunResult:
    step: int
    finished: bool
    final_dir: Path | None
    last_metrics: dict[str, Any]


class _Window:
    """Running sums of the metrics between two log lines."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.images = 0
        self.seconds = 0.0

    def add(self, values: dict[str, float], images: int, seconds: float) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        self.images += images
        self.seconds += seconds

    def means(self) -> dict[str, float]:
        return {key: total / max(self.steps, 1) for key, total in self.sums.items()}


def freeze_codes(model: ImageTokenizer) -> None:
    """Freeze what decides the codes (encoder, codebook): no gradients, and eval mode so that the EMA codebook
    neither updates nor restarts dead codes. Must follow `model.train()`, which would switch them back."""
    for module in (model.encoder, model.quantizer):
        module.eval()
        module.requires_grad_(False)


def _frozen_code_forward(model: ImageTokenizer, images: torch.Tensor) -> TokenizerOutput:
    """Reconstruction through the frozen codes: encoder and lookup without autograd, the decoder with it."""
    with torch.no_grad():
        latents = model.encoder(images).float()
        codes = model.nearest_codes(latents)
        quantized = model.quantizer.get_output_from_indices(codes)
        model.usage_counts += torch.bincount(codes.flatten(), minlength=model.config.codebook_size)
    return TokenizerOutput(model.decoder(quantized), codes, images.new_zeros(()))


def _training_step(
    model: ImageTokenizer,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    lr: float,
    step: int,
    tokenizer_config: ImageTokenizerConfig,
    train_config: VQTrainConfig,
    codes_frozen: bool = False,
) -> dict[str, float]:
    """One optimizer step on a batch; returns its losses and PSNR as floats."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    bf16 = resolve_bf16(train_config.bf16_autocast, images.device)
    with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=bf16):
        if codes_frozen:
            output = _frozen_code_forward(model, images)
        else:
            output = model(images, quantize=step >= train_config.autoencoder_warmup_steps)
    losses = reconstruction_losses(output.reconstruction, images, tokenizer_config)
    loss = losses["pixel_loss"] + tokenizer_config.edge_loss_weight * losses.get("edge_loss", 0.0)
    loss = loss + output.commitment_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], train_config.grad_clip_norm)
    optimizer.step()
    values = {name: float(value.detach()) for name, value in losses.items()}
    values |= {"loss": float(loss.detach()), "commitment_loss": float(output.commitment_loss.detach())}
    values["psnr"] = batch_psnr(output.reconstruction, images)
    return values


@torch.no_grad()
def initialise_codebook(
    model: ImageTokenizer, bank: ImageBank, generator: np.random.Generator, config: VQTrainConfig
) -> None:
    """Run the quantizer once, in training mode, on the features of many bank images: its k-means
    initialisation fits the codebook to all of them instead of to the next training batch alone."""
    images = bank.sample(generator, config.codebook_init_images)
    latents = torch.cat([model.encoder(images_to_tensor(chunk)) for chunk in images.split(config.batch_size * 4)])
    model.quantize(latents)
    model.reset_usage()


def _codebook_metrics(model: ImageTokenizer) -> dict[str, float]:
    """Usage and perplexity of the codes since the last call (then the counts restart)."""
    metrics = {"codebook_usage": model.codebook_usage(), "codebook_perplexity": model.codebook_perplexity()}
    model.reset_usage()
    return metrics


def train_vq(
    out_dir: Path,
    tokenizer_config: ImageTokenizerConfig,
    train_config: VQTrainConfig,
    steps: int | None = None,
    minutes: float | None = None,
    stop_at_step: int | None = None,
    progress: bool = True,
    device: str = "cpu",
    init_dir: Path | None = None,
    codes_frozen: bool = False,
) -> VQRunResult:
    """Train (or resume training) a tokenizer in `out_dir` for `steps` optimizer steps or `minutes` of training.

    `stop_at_step` pauses early (checkpoint written, no final model): the same call without it resumes.
    `init_dir` starts from a trained tokenizer of the same config; `codes_frozen` (which needs it) trains its
    pixel decoder alone, so the codes of every image stay what they were.
    """
    if codes_frozen and init_dir is None:
        raise ValueError("freezing the codes needs a trained tokenizer to start from (init_dir)")
    if (steps is None) == (minutes is None):
        raise ValueError("give exactly one of steps or minutes")
    world_config = WorldConfig.preset(train_config.world_preset)
    if world_config.image_size != tokenizer_config.image_size:
        raise ValueError(
            f"world images are {world_config.image_size}px, the tokenizer expects {tokenizer_config.image_size}px"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = out_dir / CHECKPOINT_SUBDIR
    budget_seconds = minutes * 60.0 if minutes is not None else math.inf

    torch.manual_seed(train_config.seed)
    model = ImageTokenizer(tokenizer_config)
    if init_dir is not None:
        initial = ImageTokenizer.from_pretrained(init_dir)
        if initial.config != tokenizer_config:
            raise ValueError(f"{init_dir} has another tokenizer config than the preset: pick its own preset")
        model.load_state_dict(initial.state_dict())
    model = model.to(device).train()
    if codes_frozen:
        freeze_codes(model)
        # The codebook is trained already: no autoencoder warmup, no k-means re-initialisation.
        train_config = replace(train_config, autoencoder_warmup_steps=0)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=train_config.learning_rate,
        betas=(train_config.adam_beta1, train_config.adam_beta2),
        weight_decay=train_config.weight_decay,
    )
    generator = np.random.Generator(np.random.PCG64(train_config.seed))
    step, elapsed, chunks_rendered = 0, 0.0, None
    resume_from = find_checkpoint(checkpoint_dir)
    if resume_from is not None:
        saved = ImageTokenizerConfig.from_json(read_checkpoint_config(resume_from))
        if saved != tokenizer_config:
            raise ValueError(f"{resume_from} was trained with another tokenizer config; use a new --out directory")
        state = load_training_checkpoint(resume_from, model, optimizer)
        step, elapsed, chunks_rendered = state["step"], state["elapsed_seconds"], state["chunks_rendered"]
        generator.bit_generator.state = state["data_rng"]
    else:
        run = {"tokenizer": asdict(tokenizer_config), "training": asdict(train_config),
               "init": str(init_dir) if init_dir is not None else None, "codes_frozen": codes_frozen}
        (out_dir / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    bank_config = ImageBankConfig.preset(train_config.bank_preset, seed=train_config.seed)
    bank = ImageBank(world_config, bank_config, chunks_rendered, device, train_config.render_workers)
    logger = MetricsLogger(out_dir / METRICS_FILE)

    def save() -> None:
        state = {
            "step": step,
            "elapsed_seconds": elapsed,
            "chunks_rendered": bank.chunks_rendered,
            "data_rng": generator.bit_generator.state,
            "total_steps": steps,
            "budget_minutes": minutes,
        }
        save_training_checkpoint(checkpoint_dir, model, tokenizer_config.to_json(), optimizer, state)

    def run_progress() -> float:
        return step / steps if steps is not None else elapsed / budget_seconds

    window, last_metrics, last_save = _Window(), {}, time.monotonic()
    bar = tqdm(total=steps, initial=step, disable=not progress, desc="train vq", unit="step", mininterval=1.0)
    model.reset_usage()
    try:
        while run_progress() < 1.0 and (stop_at_step is None or step < stop_at_step):
            started = time.perf_counter()
            if step > 0 and step % train_config.refresh_every_steps == 0:
                bank.refresh()
            if step == train_config.autoencoder_warmup_steps and tokenizer_config.kmeans_init and init_dir is None:
                initialise_codebook(model, bank, generator, train_config)
            lr = learning_rate(train_config, step, run_progress())
            images = images_to_tensor(bank.sample(generator, train_config.batch_size))
            values = _training_step(
                model, optimizer, images, lr, step, tokenizer_config, train_config, codes_frozen=codes_frozen
            )
            step += 1
            seconds = time.perf_counter() - started
            elapsed += seconds
            window.add(values, len(images), seconds)
            bar.update(1)
            if step % train_config.log_every_steps == 0 or run_progress() >= 1.0:
                last_metrics = {"step": step, **window.means(), "lr": lr, "elapsed_s": elapsed}
                last_metrics |= _codebook_metrics(model) | {"images_per_s": window.images / max(window.seconds, 1e-9)}
                logger.log(last_metrics)
                bar.set_postfix({k: f"{last_metrics[k]:.3g}" for k in ("loss", "psnr", "codebook_usage")})
                window = _Window()
                if time.monotonic() - last_save >= train_config.checkpoint_every_seconds:
                    save()
                    last_save = time.monotonic()
    except KeyboardInterrupt:
        # Ctrl-C keeps the work done: the next run with the same directory resumes from here.
        bar.close()
        save()
        raise
    bar.close()
    save()
    finished = run_progress() >= 1.0
    final_dir = None
    if finished:
        final_dir = model.save_pretrained(out_dir / FINAL_SUBDIR)
        summary = {"steps": step, "images_seen": step * train_config.batch_size, "train_seconds": elapsed,
                   "last_metrics": last_metrics}
        (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return VQRunResult(step=step, finished=finished, final_dir=final_dir, last_metrics=last_metrics)


def configs_for(
    preset: str, batch_size: int | None, learning_rate: float | None, training_preset: str | None = None
) -> tuple[ImageTokenizerConfig, VQTrainConfig]:
    """The tokenizer and trainer configs of a preset (the trainer's may differ: `gpu`), with overrides applied."""
    tokenizer_config = ImageTokenizerConfig.preset(preset)
    train_config = VQTrainConfig.preset(training_preset or preset)
    if batch_size is not None:
        train_config = replace(train_config, batch_size=batch_size)
    if learning_rate is not None:
        train_config = replace(train_config, learning_rate=learning_rate)
    return tokenizer_config, train_config
