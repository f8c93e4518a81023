"""A tiny instruction-tuned model directory for the serving tests: `run_sft` (what `cm3leon train sft` runs) for
a few steps from a tiny init checkpoint with every mixture entry weighted, so OUT/final is a complete model
directory whose capabilities.json (written by SFT) declares every job kind. About two seconds on CPU."""

from __future__ import annotations

from pathlib import Path

from cm3leon.training.pretrain import FINAL_DIR
from cm3leon.training.sft import SFTRun, run_sft, sft_trainer_config
from cm3leon.training.sft_data import TaskMixture
from tests.sft_helpers import tiny_init_checkpoint

SFT_STEPS = 2  # the weights need not learn anything here: the tests check formats, plumbing and result types


def build_tiny_sft_model_dir(root: Path, mixture: TaskMixture | None = None) -> Path:
    init = tiny_init_checkpoint(root)
    trainer = sft_trainer_config("tiny", max_steps=SFT_STEPS)
    run_sft(SFTRun(init, root / "sft", mixture or TaskMixture.uniform(), trainer, device="cpu"))
    return root / "sft" / FINAL_DIR
