"""The generic decoder trainer: AdamW, warmup + cosine, gradient accumulation, bf16 autocast, DDP, exact resume.

Generic over where the batches come from: anything with `batch(index) -> TokenBatch` (see `BatchSource`) —
the pretraining mix, or the instruction-tuning (SFT) data. Every step, rank r of R runs `grad_accum`
micro-batches with global indices `(step * grad_accum + micro) * R + r`, so the data position is the step
number, resuming needs no data state, and R ranks see what one process with R-fold accumulation would.

Run directory layout (`out_dir`): `checkpoint/` (see `state.py`), `metrics.jsonl`, `trainer_config.json`.
Running again with the same `out_dir` resumes from `checkpoint/` and continues to the same target.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cm3leon.hardware import resolve_bf16
from cm3leon.model import Transformer
from cm3leon.training.checkpoint import find_checkpoint
from cm3leon.training.distributed import DistributedContext, all_reduce_sum, barrier, broadcast_from_main
from cm3leon.training.losses import LossTotals, Modalities, evaluate_perplexity, masked_token_losses
from cm3leon.training.packing import BatchSource, TokenBatch
from cm3leon.training.prefetch import PrefetchedBatches
from cm3leon.training.schedule import warmup_cosine_lr
from cm3leon.training.state import (
    MetricsLogger,
    TrainerState,
    load_training_state,
    save_training_state,
)
from cm3leon.training.trainer_config import TrainerConfig, build_optimizer, with_overrides

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "trainer_config.json"
SECONDS_PER_MINUTE = 60.0

__all__ = ["Trainer", "TrainerConfig", "TrainSummary", "build_optimizer", "with_overrides"]


@dataclass(frozen=True)
class TrainSummary:
    steps: int
    tokens_seen: int
    elapsed_seconds: float
    first_loss: float | None  # of this session's first logged window
    last_loss: float | None
    eval_metrics: dict[str, float] | None


class Trainer:
    def __init__(
        self,
        model: Transformer,
        config: TrainerConfig,
        source: BatchSource,
        out_dir: Path,
        modalities: Modalities,
        context: DistributedContext | None = None,
        heldout: Sequence[TokenBatch] | None = None,
        extra_state: Mapping[str, Any] | None = None,
    ) -> None:
        self.context = context or DistributedContext()
        self.model = model.to(self.context.device)
        self.config = config
        self.bf16 = resolve_bf16(config.bf16, self.context.device)
        self.source = source
        self.out_dir = Path(out_dir)
        self.modalities = modalities
        self.heldout = list(heldout or [])
        self.extra_state = dict(extra_state or {})
        self.optimizer = build_optimizer(self.model, config)
        self.metrics = MetricsLogger(self.out_dir / METRICS_FILE, enabled=self.context.is_main)
        self.state = TrainerState(extra=self.extra_state)
        self._ddp: torch.nn.Module | None = None
        self._prefetched: PrefetchedBatches | None = None

    # --- state -------------------------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / CHECKPOINT_DIR

    def resume_if_possible(self) -> bool:
        """Load `out_dir/checkpoint` when there is one (every rank loads it; DDP then starts in agreement)."""
        found = find_checkpoint(self.checkpoint_dir)
        if found is None:
            return False
        self.state = load_training_state(found, self.model, self.optimizer, self.context.device)
        return True

    def save_checkpoint(self) -> None:
        if self.context.is_main:
            save_training_state(self.checkpoint_dir, self.model, self.optimizer, self.state)
        barrier(self.context)

    # --- one optimizer step ------------------------------------------------------------------------------------
    def _forward_model(self) -> torch.nn.Module:
        if self.context.is_distributed and self._ddp is None:
            device_ids = [self.context.device.index] if self.context.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        return self._ddp or self.model

    def micro_batch_index(self, step: int, micro: int) -> int:
        return (step * self.config.grad_accum + micro) * self.context.world_size + self.context.rank

    def train_step(self, step: int) -> tuple[LossTotals, float, int]:
        """Accumulate `grad_accum` micro-batches and update; returns (loss totals, grad norm, tokens)."""
        model = self._forward_model()
        device = self.context.device
        totals = LossTotals()
        tokens = 0
        for micro in range(self.config.grad_accum):
            batch = self._batch(self.micro_batch_index(step, micro)).to(device)
            last = micro == self.config.grad_accum - 1
            # Gradients are all-reduced once per step, on the last micro-batch only.
            sync = contextlib.nullcontext() if last or self._ddp is None else self._ddp.no_sync()
            with sync:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    logits = model(batch.tokens)
                losses, targets = masked_token_losses(logits, batch)
                # Per-micro-batch mean, averaged over micro-batches (and over ranks by DDP).
                loss = losses.sum() / max(losses.numel(), 1) / self.config.grad_accum
                loss.backward()
            totals.add(losses, targets, self.modalities)
            tokens += batch.num_tokens
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        lr = self.learning_rate(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return totals, float(grad_norm), tokens

    def _batch(self, index: int) -> TokenBatch:
        if self._prefetched is None:
            return self.source.batch(index)
        return self._prefetched.take(index)

    def learning_rate(self, step: int) -> float:
        c = self.config
        return warmup_cosine_lr(step, c.learning_rate, c.warmup_steps, self.state.schedule_steps, c.min_lr_ratio)

    # --- the loop ----------------------------------------------------------------------------------------------
    def _decide(
        self, session_start: float, elapsed_at_start: float, last_save: float, calibration: tuple[int, float]
    ) -> tuple[bool, bool]:
        """(stop, save now): taken on rank 0 from its clock and broadcast, so all ranks agree."""
        c, now = self.config, time.monotonic()
        elapsed = elapsed_at_start + now - session_start
        stop = c.max_steps is not None and self.state.step >= c.max_steps
        stop |= c.max_minutes is not None and elapsed >= c.max_minutes * SECONDS_PER_MINUTE
        save = c.checkpoint_every_steps is not None and self.state.step % c.checkpoint_every_steps == 0
        save_seconds = None if c.checkpoint_every_minutes is None else c.checkpoint_every_minutes * SECONDS_PER_MINUTE
        save |= save_seconds is not None and now - last_save >= save_seconds
        horizon = self.state.schedule_steps
        calibration_step, calibration_time = calibration
        estimate = horizon is None or (c.horizon_follows_speed and c.max_steps is None)
        if estimate and self.state.step - calibration_step >= c.horizon_calibration_steps:
            seconds_per_step = (now - calibration_time) / (self.state.step - calibration_step)
            remaining = (c.max_minutes or 0.0) * SECONDS_PER_MINUTE - elapsed
            horizon = self.state.step + max(int(remaining / seconds_per_step), 0)
        decided = broadcast_from_main([float(stop), float(save), float(horizon or -1)], self.context)
        self.state.schedule_steps = None if decided[2] < 0 else int(decided[2])
        return bool(decided[0]), bool(decided[1])

    def _log(self, window: LossTotals, window_tokens: int, window_seconds: float, grad_norm: float) -> dict:
        names = sorted(self.modalities)
        summed = all_reduce_sum([*window.as_vector(names), float(window_tokens)], self.context)
        totals = LossTotals.from_vector(summed[:-1], names)
        record = {"step": self.state.step, **totals.means(), "lr": self.learning_rate(self.state.step - 1)}
        record |= {"tokens_per_s": summed[-1] / max(window_seconds, 1e-9), "grad_norm": grad_norm}
        record |= {"elapsed_s": self.state.elapsed_seconds, "tokens_seen": self.state.tokens_seen}
        self.metrics.log(record)
        return record

    def evaluate(self) -> dict[str, float]:
        return evaluate_perplexity(self.model, self.heldout, self.modalities, self.context.device, self.bf16)

    def train(self, until_step: int | None = None) -> TrainSummary:
        """Train to the configured end (or stop early after `until_step`, as if interrupted, for tests)."""
        c = self.config
        resumed = self.resume_if_possible()
        if c.max_steps is not None:
            self.state.schedule_steps = c.max_steps
        if self.context.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / CONFIG_FILE).write_text(json.dumps(asdict(c), indent=2) + "\n")
        getattr(self.model, "clear_caches", lambda: None)()
        self.model.train()
        session_start = last_save = time.monotonic()
        elapsed_at_start = self.state.elapsed_seconds
        calibration = (self.state.step + 1, session_start)  # set after the first (slow, warming) step
        bar = tqdm(
            total=c.max_steps or self.state.schedule_steps, initial=self.state.step, unit="step",
            desc="resuming" if resumed else "training", disable=not (self.context.is_main and c.progress),
        )
        if c.data_workers > 0:
            indices = (self.micro_batch_index(step, micro) for step in itertools.count(self.state.step)
                       for micro in range(c.grad_accum))
            self._prefetched = PrefetchedBatches(
                self.source, indices, c.data_workers, pin_memory=self.context.device.type == "cuda"
            )
        window, window_tokens, window_start, grad_norm = LossTotals(), 0, time.monotonic(), 0.0
        first_loss = last_loss = eval_metrics = None
        saved_step, interrupted = self.state.step, False
        while True:
            stop, save = self._decide(session_start, elapsed_at_start, last_save, calibration)
            if save and self.state.step != saved_step:
                self.save_checkpoint()
                saved_step, last_save = self.state.step, time.monotonic()
            interrupted = until_step is not None and self.state.step >= until_step and not stop
            if stop or interrupted:
                break
            totals, grad_norm, tokens = self.train_step(self.state.step)
            self.state.step += 1
            self.state.data_position = self.micro_batch_index(self.state.step, 0)
            self.state.tokens_seen += tokens * self.context.world_size
            self.state.elapsed_seconds = elapsed_at_start + time.monotonic() - session_start
            if self.state.step == calibration[0]:
                calibration = (self.state.step, time.monotonic())
            window.merge(totals)
            window_tokens += tokens
            bar.update(1)
            if self.state.step % c.log_every_steps == 0 or self.state.step == 1:
                record = self._log(window, window_tokens, time.monotonic() - window_start, grad_norm)
                first_loss = record["loss"] if first_loss is None else first_loss
                last_loss = record["loss"]
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                bar.total = c.max_steps or self.state.schedule_steps
                window, window_tokens, window_start = LossTotals(), 0, time.monotonic()
            if c.eval_every_steps and self.heldout and self.state.step % c.eval_every_steps == 0:
                eval_metrics = self._evaluate_and_log()
        if window.count or window_tokens:  # the steps since the last log line (all ranks get here together)
            last_loss = self._log(window, window_tokens, time.monotonic() - window_start, grad_norm)["loss"]
        bar.close()
        if self._prefetched is not None:
            self._prefetched.close()
            self._prefetched = None
        if self.state.step != saved_step:
            self.save_checkpoint()
        if self.heldout and not interrupted:
            eval_metrics = self._evaluate_and_log()
        return TrainSummary(
            self.state.step, self.state.tokens_seen, self.state.elapsed_seconds, first_loss, last_loss, eval_metrics
        )

    def _evaluate_and_log(self) -> dict[str, float] | None:
        if not self.context.is_main:
            return None
        metrics = self.evaluate()
        self.metrics.log({"step": self.state.step, **{f"val_{k}": v for k, v in metrics.items()}})
        return metrics
