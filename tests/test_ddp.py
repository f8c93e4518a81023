"""Data parallelism on CPU (Gloo): two ranks end with identical weights, equal to one process accumulating the
same micro-batches; and `torchrun` runs the real `cm3leon train pretrain` command with two ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from pretrain_helpers import (
    tiny_corpus,
    tiny_data_config,
    tiny_image_tokenizer,
    tiny_model,
    tiny_trainer_config,
    tiny_vocabulary,
)
from safetensors.torch import load_file, save_file

from cm3leon.tokenizers.vocab import Vocabulary
from cm3leon.training.checkpoint import MetricsLogger
from cm3leon.training.distributed import (
    DistributedContext,
    distributed_context,
    init_distributed,
    shutdown_distributed,
)
from cm3leon.training.image_corpus import ImageCodeCorpus
from cm3leon.training.losses import vocabulary_modalities
from cm3leon.training.pretrain_data import PretrainBatches
from cm3leon.training.trainer import METRICS_FILE, Trainer, TrainerConfig

WORLD_SIZE = 2
STEPS = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}


def train_rank(rank: int, world_size: int, port: int, workdir: Path, config: dict[str, object]) -> None:
    """One rank (runs in a spawned process): different init per rank, so agreement proves DDP's broadcast."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    context = init_distributed("cpu", rank=rank, world_size=world_size)
    try:
        vocab = Vocabulary.load(workdir / "vocab")
        corpus = ImageCodeCorpus.load(next((workdir / "cache").glob("image_codes-train-*.npz")))
        model = tiny_model(vocab, seed=100 + rank)
        source = PretrainBatches(tiny_data_config(), vocab, corpus, batch_size=2)
        modalities = vocabulary_modalities(vocab)
        Trainer(model, TrainerConfig(**config), source, workdir / "run", modalities, context).train()
        save_file(weights_of(model), str(workdir / f"rank{rank}.safetensors"))
    finally:
        shutdown_distributed(context)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    vq = tiny_image_tokenizer()
    tiny_vocabulary(vq).save(root / "vocab")
    tiny_corpus(vq, root / "cache")
    vq.save_pretrained(root / "vq")
    return root


@pytest.mark.slow
def test_two_ranks_end_identical_and_match_one_process_accumulating(workdir: Path) -> None:
    config = tiny_trainer_config(max_steps=STEPS, batch_size=2, grad_accum=1, log_every_steps=1)
    mp.spawn(train_rank, args=(WORLD_SIZE, free_port(), workdir, asdict(config)), nprocs=WORLD_SIZE, join=True)
    rank0 = load_file(str(workdir / "rank0.safetensors"))
    rank1 = load_file(str(workdir / "rank1.safetensors"))
    for name, tensor in rank0.items():
        assert torch.equal(tensor, rank1[name]), name

    # One process, two micro-batches per step, reads global indices 2s and 2s+1: what ranks 0 and 1 read.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vocab = Vocabulary.load(workdir / "vocab")
        corpus = ImageCodeCorpus.load(next((workdir / "cache").glob("image_codes-train-*.npz")))
        single = tiny_model(vocab, seed=100)
        source = PretrainBatches(tiny_data_config(), vocab, corpus, batch_size=2)
        accumulated = tiny_trainer_config(max_steps=STEPS, batch_size=2, grad_accum=WORLD_SIZE)
        Trainer(single, accumulated, source, workdir / "single", vocabulary_modalities(vocab)).train()
    finally:
        torch.set_num_threads(threads)
    moved = 0.0
    initial = weights_of(tiny_model(vocab, seed=100))
    for name, tensor in weights_of(single).items():
        assert torch.allclose(tensor, rank0[name], rtol=0, atol=1e-5), name
        moved = max(moved, float((tensor - initial[name]).abs().max()))
    assert moved > 1e-3  # the weights really trained (the comparison is not between two untouched inits)
    # Only rank 0 logged: one line per step.
    assert [r["step"] for r in MetricsLogger.read(workdir / "run" / METRICS_FILE)] == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_torchrun_runs_the_pretrain_command_on_two_ranks(workdir: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    cli = Path(sys.executable).parent / "cm3leon"
    out = tmp_path / "run"
    command = [str(torchrun), "--standalone", f"--nproc_per_node={WORLD_SIZE}", str(cli), "train", "pretrain"]
    command += ["--preset", "tiny", "--out", str(out), "--vq", str(workdir / "vq"), "--steps", "2"]
    command += ["--tokenizer-dir", str(workdir / "vocab"), "--device", "cpu", "--no-bf16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((out / "final" / "training.json").read_text())
    assert record["world_size"] == WORLD_SIZE and record["summary"]["steps"] == 2
    assert record["summary"]["tokens_seen"] == 2 * WORLD_SIZE * 4 * 256  # steps x ranks x rows x seq_len
    assert [r["step"] for r in MetricsLogger.read(out / METRICS_FILE) if "loss" in r] == [1, 2]


def test_distributed_context_passes_a_given_context_through_and_makes_its_own_otherwise() -> None:
    given = DistributedContext(rank=1, world_size=1, local_rank=1)
    with distributed_context("cpu", given) as active:
        assert active is given
    with distributed_context("cpu") as own:  # a plain process: rank 0 of 1, no process group
        assert (own.rank, own.world_size, own.device) == (0, 1, torch.device("cpu"))
