"""`cm3leon train ...`: training commands (each runs resumably, with a progress bar and JSON-lines metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:  # the CLI imports torch-backed modules only inside the command that needs them
    from cm3leon.training.trainer import TrainSummary
    from cm3leon.training.trainer_config import TrainerConfig

train_app = typer.Typer(no_args_is_help=True)


@train_app.command("text-tokenizer")
def train_text_tokenizer(
    out: Path = typer.Option(..., help="Directory to write tokenizer.json into."),
    preset: str = typer.Option("shapes", help="Text tokenizer preset: tiny, shapes, paper."),
    n_scenes: int = typer.Option(5_000, help="World scenes whose text the BPE is trained on."),
    seed: int = typer.Option(0),
) -> None:
    """Train the byte-level BPE text tokenizer on the world's text."""
    from cm3leon.data.world import WorldConfig
    from cm3leon.tokenizers.text import TextTokenizerConfig
    from cm3leon.tokenizers.world_text import train_world_tokenizer

    tokenizer = train_world_tokenizer(WorldConfig.preset("shapes"), TextTokenizerConfig.preset(preset), n_scenes, seed)
    path = tokenizer.save(out)
    typer.echo(f"wrote {path} ({tokenizer.size} tokens)")


# Where `make demo` keeps the shapes world's trained tokenizers.
DEFAULT_VQ_DIR = Path("models/shapes/vq")
DEFAULT_TOKENIZER_DIR = Path("models/shapes")
DEFAULT_RETRIEVER_DIR = Path("models/shapes/retriever")

# The options the decoder's two training commands (pretrain, sft) share, declared once so their help agrees.
MinutesOption = Annotated[float | None, typer.Option(help="Training time budget (summed over resumes).")]
StepsOption = Annotated[int | None, typer.Option(help="Optimizer steps (the cosine schedule's horizon).")]
BatchSizeOption = Annotated[int | None, typer.Option(help="Rows per micro-batch per rank (default: preset).")]
GradAccumOption = Annotated[int | None, typer.Option(help="Micro-batches per optimizer step (default: preset).")]
LearningRateOption = Annotated[float | None, typer.Option(help="Peak learning rate (default: preset).")]
CheckpointMinutesOption = Annotated[float | None, typer.Option(help="Minutes between checkpoints.")]
HorizonFollowsSpeedOption = Annotated[
    bool | None,
    typer.Option(help="With --minutes: re-estimate the cosine horizon from the speed at every step (shared GPU)."),
]
Bf16Option = Annotated[
    bool | None,
    typer.Option("--bf16/--no-bf16", help="bf16 autocast; default: on only where the device has native bf16."),
]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda (a torchrun rank takes its LOCAL_RANK GPU).")]
DataWorkersOption = Annotated[
    int | None, typer.Option(help="Processes that build batches ahead of the loop (0: in the loop).")
]
RetrieverOption = Annotated[Path, typer.Option(help="Trained retriever directory (used when --retrieved > 0).")]


def _with_cli_flags(
    trainer: TrainerConfig, *, steps: int | None, minutes: float | None, **overrides: Any
) -> TrainerConfig:
    """The preset's trainer config with the decoder commands' flags applied: --steps and --minutes replace the
    preset's budget together (giving one clears the other), every other flag overrides only where it was given."""
    from dataclasses import replace

    from cm3leon.training.trainer_config import with_overrides

    if steps is not None or minutes is not None:
        trainer = replace(trainer, max_steps=steps, max_minutes=minutes)
    return with_overrides(trainer, **overrides)


def _echo_summary(summary: TrainSummary) -> None:
    typer.echo(f"{summary.steps} steps, {summary.tokens_seen} tokens, last loss {summary.last_loss}")
    if summary.eval_metrics:
        typer.echo("held-out " + ", ".join(f"{k} {v:.4f}" for k, v in summary.eval_metrics.items()))


@train_app.command("pretrain")
def train_pretrain(
    out: Annotated[Path, typer.Option(help="Run directory; running again with the same --out resumes.")],
    preset: Annotated[str, typer.Option(help="Model preset: tiny, shapes, 350m, 760m, 7b.")] = "shapes",
    minutes: MinutesOption = None,
    steps: StepsOption = None,
    vq: Annotated[Path, typer.Option(help="Trained VQ image tokenizer directory.")] = DEFAULT_VQ_DIR,
    tokenizer_dir: Annotated[
        Path, typer.Option(help="Shared text tokenizer (tokenizer.json, vocab.json) used when OUT has none.")
    ] = DEFAULT_TOKENIZER_DIR,
    retrieved: Annotated[
        int, typer.Option(help="Retrieved documents prepended to each training document (CM3Leon: 2).")
    ] = 0,
    retriever: RetrieverOption = DEFAULT_RETRIEVER_DIR,
    data_workers: DataWorkersOption = None,
    batch_size: BatchSizeOption = None,
    grad_accum: GradAccumOption = None,
    lr: LearningRateOption = None,
    train_scenes: Annotated[int | None, typer.Option(help="Scenes in the pre-tokenized train corpus.")] = None,
    checkpoint_minutes: CheckpointMinutesOption = None,
    horizon_follows_speed: HorizonFollowsSpeedOption = None,
    bf16: Bf16Option = None,
    device: DeviceOption = "auto",
    seed: int = 0,
) -> None:
    """CM3 pretraining on caption/image documents; writes OUT/final (model, tokenizers, vq/). Multi-process:
    `torchrun --nproc_per_node N $(which cm3leon) train pretrain ...`."""
    from cm3leon.model import DecoderConfig
    from cm3leon.training.pretrain import PretrainRun, run_pretraining
    from cm3leon.training.pretrain_data import PretrainDataConfig
    from cm3leon.training.trainer import TrainerConfig

    if retrieved < 0:
        raise typer.BadParameter("--retrieved must be 0 or more")
    stage_preset = preset if preset in ("tiny", "shapes") else "shapes"
    trainer = _with_cli_flags(
        TrainerConfig.preset(stage_preset, seed=seed, bf16=bf16), steps=steps, minutes=minutes,
        batch_size=batch_size, grad_accum=grad_accum, learning_rate=lr, checkpoint_every_minutes=checkpoint_minutes,
        data_workers=data_workers, horizon_follows_speed=horizon_follows_speed,
    )
    seq_len = DecoderConfig.preset(preset, vocab_size=1).max_seq_len
    data_overrides: dict[str, int] = {"render_workers": max(data_workers or 0, 1)}
    if train_scenes is not None:
        data_overrides["train_scenes"] = train_scenes
    data = PretrainDataConfig.preset(stage_preset, seq_len=seq_len, seed=seed, retrieved=retrieved, **data_overrides)
    retriever_dir = retriever if retrieved else None
    run = PretrainRun(preset, out, vq, tokenizer_dir, trainer, data, device, retriever_dir=retriever_dir)
    _echo_summary(run_pretraining(run))



@train_app.command("retriever")
def train_retriever_command(
    out: Annotated[Path, typer.Option(help="Run directory; the final retriever is written here. Re-run resumes.")],
    preset: Annotated[str, typer.Option(help="Retriever preset: tiny, shapes.")] = "shapes",
    minutes: Annotated[float | None, typer.Option(help="Training time budget (summed over resumes).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (the cosine schedule's horizon).")] = None,
    tokenizer_dir: Annotated[
        Path, typer.Option(help="Shared text tokenizer (tokenizer.json); trained from the world if absent.")
    ] = DEFAULT_TOKENIZER_DIR,
    batch_size: Annotated[int | None, typer.Option(help="Pairs per step (default: preset).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: preset).")] = None,
    threads: Annotated[
        int | None, typer.Option(help="Torch intra-op threads; 1 suits a shared 2-core box (0 = torch's choice).")
    ] = 1,
    seed: int = 0,
) -> None:
    """Contrastive (CLIP-style) training of the text/image dual encoder on the shapes world's train split."""
    import torch

    from cm3leon.retrieval.config import RetrieverConfig, RetrieverTrainingConfig
    from cm3leon.tokenizers.text import TOKENIZER_FILE, TextTokenizer
    from cm3leon.training.retriever import train_retriever, world_tokenizer

    if steps is None and minutes is None:
        raise typer.BadParameter("give --minutes or --steps")
    # On a busy small machine one thread is faster than two: the second thread waits on a busy core at every op.
    if threads:
        torch.set_num_threads(threads)
    overrides = {k: v for k, v in {"batch_size": batch_size, "learning_rate": lr}.items() if v is not None}
    training = RetrieverTrainingConfig.preset(preset, seed=seed, **overrides)
    if (tokenizer_dir / TOKENIZER_FILE).exists():
        tokenizer = TextTokenizer.load(tokenizer_dir)
    else:
        typer.echo(f"no {tokenizer_dir / TOKENIZER_FILE}: training the world's BPE (preset {preset})")
        tokenizer = world_tokenizer(preset)
    summary = train_retriever(out, RetrieverConfig.preset(preset), training, tokenizer, steps=steps, minutes=minutes)
    recall = summary.val_text_to_image_recall_at_1
    typer.echo(
        f"{summary.steps} steps in {summary.elapsed_seconds / 60:.1f} min, last loss {summary.final_loss:.4f}, "
        f"val text->image recall@1 {'-' if recall is None else f'{recall:.3f}'}; wrote {out}"
    )


@train_app.command("vq")
def train_vq_command(
    out: Annotated[Path, typer.Option(help="Run directory; the tokenizer is written to OUT/final. Re-run resumes.")],
    preset: Annotated[str, typer.Option(
        help="Image tokenizer preset: tiny, shapes, shapes-local (local codes), shapes-patch, 256px."
    )] = "shapes",
    minutes: Annotated[float | None, typer.Option(help="Training time budget (summed over resumes).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (the cosine schedule's horizon).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step (default: preset).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: preset).")] = None,
    threads: Annotated[
        int | None, typer.Option(help="Torch intra-op threads (default: torch's choice; 1 is fastest on a busy box).")
    ] = None,
    training: Annotated[
        str | None, typer.Option(help="Training preset when it differs from --preset: `gpu` (big batches, big bank).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    init: Annotated[
        Path | None, typer.Option(help="Start from this trained tokenizer (same --preset) instead of from scratch.")
    ] = None,
    freeze_codes: Annotated[
        bool,
        typer.Option(help="With --init: train the pixel decoder alone; every image keeps its codes (fingerprint)."),
    ] = False,
) -> None:
    """Train the VQ image tokenizer on train-split scenes, segmentation pictures and word scenes."""
    import torch

    from cm3leon.training.vq import configs_for, train_vq

    if (steps is None) == (minutes is None):
        raise typer.BadParameter("give exactly one of --minutes or --steps")
    if threads is not None:
        torch.set_num_threads(threads)
    tokenizer_config, train_config = configs_for(preset, batch_size, lr, training)
    if freeze_codes and init is None:
        raise typer.BadParameter("--freeze-codes needs --init (the tokenizer whose codes are kept)")
    result = train_vq(
        out, tokenizer_config, train_config, steps=steps, minutes=minutes, device=device,
        init_dir=init, codes_frozen=freeze_codes,
    )
    metrics = result.last_metrics
    typer.echo(
        f"{result.step} steps, psnr {metrics.get('psnr', float('nan')):.2f} dB, codebook usage "
        f"{metrics.get('codebook_usage', float('nan')):.3f}; wrote {result.final_dir}"
    )


DEFAULT_SFT_MIX = Path("configs/sft_mix.json")


@train_app.command("sft")
def train_sft(
    init: Annotated[Path, typer.Option(help="Pretrained model directory (e.g. runs/pretrain/final) to start from.")],
    out: Annotated[Path, typer.Option(help="Run directory; running again with the same --out resumes.")],
    mix: Annotated[Path, typer.Option(help="Task mixture JSON: {\"weights\": {task: weight}}.")] = DEFAULT_SFT_MIX,
    minutes: MinutesOption = None,
    steps: StepsOption = None,
    batch_size: BatchSizeOption = None,
    grad_accum: GradAccumOption = None,
    lr: LearningRateOption = None,
    checkpoint_minutes: CheckpointMinutesOption = None,
    horizon_follows_speed: HorizonFollowsSpeedOption = None,
    bf16: Bf16Option = None,
    device: DeviceOption = "auto",
    retrieved: Annotated[int, typer.Option(help="Retrieved documents prepended to text->image examples.")] = 0,
    scenes: Annotated[int | None, typer.Option(help="Scenes in the task pool (default: preset, 20,000).")] = None,
    words: Annotated[int | None, typer.Option(help="Text-rendering scenes in the pool (default: 8,000).")] = None,
    edits: Annotated[int | None, typer.Option(help="Edit cases in the pool (default: 16,000).")] = None,
    pool_seed: Annotated[
        int | None,
        typer.Option(help="Seed of the pools' scenes, words and edits (default 0); another seed draws examples a "
                     "model tuned on the default pools has never seen (held-out pools stay the same)."),
    ] = None,
    retriever: RetrieverOption = DEFAULT_RETRIEVER_DIR,
    data_workers: DataWorkersOption = None,
    vqa_per_image: Annotated[
        int, typer.Option(help="Questions per VQA training document, all about its one image (1: one each).")
    ] = 1,
    vqa_worked: Annotated[
        bool,
        typer.Option(help="Train VQA answers worked out: the image's description, then \"so the answer is X\"."),
    ] = False,
    vqa_read: Annotated[
        float,
        typer.Option(help="With --vqa-worked: fraction of VQA documents with the image masked out, trained only on "
                     "the final answer (teaches reading it from the description)."),
    ] = 0.0,
    caption_words: Annotated[
        float,
        typer.Option(help="Fraction of caption examples that read a word image from the word pool (the inverse "
                     "of text rendering; lets a rendered word be checked by the model's own reading)."),
    ] = 0.0,
    seed: int = 0,
) -> None:
    """Multi-task instruction tuning (the ten tasks of cm3leon.tasks + pretraining-style documents) from --init;
    writes OUT/final. The model preset comes from the init checkpoint. Multi-process:
    `torchrun --nproc_per_node N $(which cm3leon) train sft ...`."""
    from cm3leon.checkpoint import VQ_SUBDIR
    from cm3leon.tokenizers.image import ImageTokenizerConfig
    from cm3leon.training.sft import SFTRun, data_preset_of, run_sft, sft_trainer_config
    from cm3leon.training.sft_data import TaskMixture

    vq_config = ImageTokenizerConfig.from_json((init / VQ_SUBDIR / "config.json").read_text())
    preset, _ = data_preset_of(init, vq_config.image_size)
    trainer = _with_cli_flags(
        sft_trainer_config(preset, seed=seed, bf16=bf16), steps=steps, minutes=minutes,
        batch_size=batch_size, grad_accum=grad_accum, learning_rate=lr, checkpoint_every_minutes=checkpoint_minutes,
        data_workers=data_workers, horizon_follows_speed=horizon_follows_speed,
    )
    retriever_dir = retriever if retrieved else None
    mixture = TaskMixture.load(mix)
    pools = {k: v for k, v in {"scenes": scenes, "words": words, "edits": edits}.items() if v is not None}
    if any(size < 1 for size in pools.values()):
        raise typer.BadParameter("--scenes, --words and --edits must be positive")
    if pool_seed is not None:
        pools["seed"] = pool_seed
    if vqa_per_image < 1:
        raise typer.BadParameter("--vqa-per-image must be 1 or more")
    if vqa_read and not vqa_worked:
        raise typer.BadParameter("--vqa-read needs --vqa-worked")
    if not 0.0 <= vqa_read <= 1.0:
        raise typer.BadParameter("--vqa-read is a fraction in [0, 1]")
    if not 0.0 <= caption_words <= 1.0:
        raise typer.BadParameter("--caption-words is a fraction in [0, 1]")
    run = SFTRun(
        init, out, mixture, trainer, device=device, retrieved=retrieved, retriever_dir=retriever_dir, pools=pools,
        vqa_questions_per_image=vqa_per_image, vqa_worked_answers=vqa_worked, vqa_read_fraction=vqa_read,
        caption_word_fraction=caption_words,
    )
    _echo_summary(run_sft(run))
