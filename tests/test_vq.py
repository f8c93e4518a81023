"""The VQ image tokenizer: shapes and dtypes of the API, persistence, the trainer (loss falls, exact resume),
the image bank and the evaluation suite. Everything runs on the `tiny` preset (32px images, 8x8 codes)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cm3leon.data.image_bank import ImageBank, ImageBankConfig, ImageKind
from cm3leon.data.render import render
from cm3leon.data.world import World, WorldConfig
from cm3leon.evaluation.vq_eval import (
    VQEvalConfig,
    code_distances_from_box,
    codes_changed_by_removal,
    evaluate_vq,
    psnr_per_image,
)
from cm3leon.tokenizers.image import ImageTokenizer, ImageTokenizerConfig, images_to_tensor
from cm3leon.training.checkpoint import MetricsLogger
from cm3leon.training.vq import FINAL_SUBDIR, METRICS_FILE, VQTrainConfig, train_vq

TINY_WORLD = "shapes32"



@pytest.fixture(scope="module")
def world_images() -> np.ndarray:
    config = WorldConfig.preset(TINY_WORLD)
    scenes = World(config).scenes(seed=0, split="train", n=6)
    return np.stack([render(scene, config).image for scene in scenes])


def tiny_tokenizer(seed: int = 0) -> ImageTokenizer:
    torch.manual_seed(seed)
    return ImageTokenizer(ImageTokenizerConfig.preset("tiny"))


def test_presets_have_the_documented_code_grids() -> None:
    shapes = ImageTokenizerConfig.preset("shapes")
    assert (shapes.image_size, shapes.grid, shapes.codes_per_image) == (64, 8, 64)
    assert 512 <= shapes.codebook_size <= 1024
    paper = ImageTokenizerConfig.preset("256px")
    assert (paper.grid, paper.codes_per_image, paper.codebook_size) == (32, 1024, 8192)
    tiny = ImageTokenizerConfig.preset("tiny")
    assert tiny.grid == tiny.image_size // tiny.downsample_factor
    with pytest.raises(ValueError, match="not a multiple"):
        replace(shapes, downsample_factor=7)
    assert ImageTokenizerConfig.from_json(shapes.to_json()) == shapes
    # A field added later is written only when it differs from what shipped tokenizers had: their config files
    # (and so their fingerprints, which hash the config) stay byte for byte.
    local = ImageTokenizerConfig.preset("shapes-local")
    assert '"norm"' not in shapes.to_json() and '"norm": "channel"' in local.to_json()
    assert ImageTokenizerConfig.from_json(local.to_json()) == local and replace(local, norm="group") == shapes
    with pytest.raises(ValueError, match="norm"):
        replace(shapes, norm="batch")


def test_encode_decode_shapes_dtypes_and_ranges(world_images: np.ndarray) -> None:
    tokenizer = tiny_tokenizer()
    config = tokenizer.config
    codes = tokenizer.encode(world_images)
    assert codes.dtype == torch.int64 and codes.shape == (len(world_images), config.grid, config.grid)
    assert 0 <= int(codes.min()) and int(codes.max()) < config.codebook_size
    images = tokenizer.decode(codes)
    assert images.dtype == np.uint8 and images.shape == world_images.shape
    # Flat (B, N) codes decode the same, and a float tensor in [-1, 1] encodes the same as the uint8 array.
    assert np.array_equal(tokenizer.decode(codes.flatten(1)), images)
    assert torch.equal(tokenizer.encode(images_to_tensor(world_images)), codes)
    with pytest.raises(ValueError):
        tokenizer.decode(torch.full((1, config.grid, config.grid), config.codebook_size))


def test_encode_in_training_mode_leaves_the_codebook_alone(world_images: np.ndarray) -> None:
    tokenizer = tiny_tokenizer().train()
    before = {name: tensor.clone() for name, tensor in tokenizer.state_dict().items()}
    tokenizer.encode(world_images)
    assert tokenizer.training
    for name, tensor in tokenizer.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_save_and_load_give_identical_codes(tmp_path: Path, world_images: np.ndarray) -> None:
    tokenizer = tiny_tokenizer(seed=3)
    tokenizer.train()(images_to_tensor(world_images))  # one EMA update, so the codebook buffers are not at init
    tokenizer.eval().save_pretrained(tmp_path / "vq")
    loaded = ImageTokenizer.from_pretrained(tmp_path / "vq")
    assert loaded.config == tokenizer.config and not loaded.training
    assert torch.equal(loaded.encode(world_images), tokenizer.encode(world_images))
    codes = tokenizer.encode(world_images)
    assert np.array_equal(loaded.decode(codes), tokenizer.decode(codes))


def tiny_run(out: Path, steps: int, stop_at_step: int | None = None, norm: str = "group"):  # noqa: ANN201
    return train_vq(
        out, replace(ImageTokenizerConfig.preset("tiny"), norm=norm), VQTrainConfig.preset("tiny"),
        steps=steps, stop_at_step=stop_at_step, progress=False,
    )


@pytest.mark.parametrize("norm", ["group", "channel"])
def test_a_short_training_run_lowers_the_loss(tmp_path: Path, norm: str) -> None:
    result = tiny_run(tmp_path / "run", steps=40, norm=norm)
    assert result.finished and result.step == 40
    records = MetricsLogger.read(tmp_path / "run" / METRICS_FILE)
    assert [r["step"] for r in records] == list(range(1, 41))
    first = np.mean([r["loss"] for r in records[:5]])
    last = np.mean([r["loss"] for r in records[-5:]])
    assert last < 0.7 * first, (first, last)
    assert records[-1]["psnr"] > records[0]["psnr"]
    assert 0 < records[-1]["codebook_usage"] <= 1 and records[-1]["images_per_s"] > 0
    trained = ImageTokenizer.from_pretrained(tmp_path / "run" / FINAL_SUBDIR)
    assert trained.config == replace(ImageTokenizerConfig.preset("tiny"), norm=norm)


def test_resume_continues_from_the_saved_step_exactly(tmp_path: Path, world_images: np.ndarray) -> None:
    paused = tiny_run(tmp_path / "resumed", steps=6, stop_at_step=3)
    assert paused.step == 3 and not paused.finished and paused.final_dir is None
    resumed = tiny_run(tmp_path / "resumed", steps=6)
    assert resumed.step == 6 and resumed.finished
    steps_logged = [r["step"] for r in MetricsLogger.read(tmp_path / "resumed" / METRICS_FILE)]
    assert steps_logged == [1, 2, 3, 4, 5, 6]
    # Bit-identical to a run that never stopped: same weights, codebook, data and RNG streams.
    straight = tiny_run(tmp_path / "straight", steps=6)
    a = ImageTokenizer.from_pretrained(straight.final_dir)
    b = ImageTokenizer.from_pretrained(resumed.final_dir)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert torch.equal(a.encode(world_images), b.encode(world_images))


def test_image_bank_is_reproducible_and_mixes_the_three_kinds() -> None:
    world = WorldConfig.preset(TINY_WORLD)
    config = ImageBankConfig.preset("tiny")
    bank = ImageBank(world, config)
    assert bank.images.shape == (config.size, world.image_size, world.image_size, 3)
    fractions = bank.kind_fractions()
    assert fractions[ImageKind.SCENE] > fractions[ImageKind.SEGMENTATION] > fractions[ImageKind.TEXT] > 0
    for _ in range(3):
        bank.refresh()
    rebuilt = ImageBank(world, config, chunks_rendered=bank.chunks_rendered)
    assert torch.equal(rebuilt.images, bank.images)
    assert not torch.equal(ImageBank(world, config).images, bank.images)  # refreshing changed some images
    batch = bank.sample(np.random.default_rng(0), 5)
    assert batch.dtype == torch.uint8 and batch.shape == (5, world.image_size, world.image_size, 3)


def test_psnr_per_image_matches_the_formula() -> None:
    original = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    noisy = original.copy()
    noisy[1] = 10  # MSE 100 -> 10 * log10(255^2 / 100)
    psnr = psnr_per_image(original, noisy)
    assert psnr[0] == 100.0
    assert psnr[1] == pytest.approx(10 * np.log10(255**2 / 100))


def test_evaluation_reports_every_metric_and_writes_a_grid(tmp_path: Path) -> None:
    config = VQEvalConfig(n=6, world_preset=TINY_WORLD, batch_size=4, grid_examples=2)
    metrics = evaluate_vq(tiny_tokenizer(), config, grid_path=tmp_path / "vq.png")
    for key in ("psnr", "oracle_accuracy", "codebook_usage", "segmentation_pixel_accuracy", "word_accuracy",
                "encode_images_per_s", "decode_images_per_s", "codes_changed_by_removal"):
        assert key in metrics, key
    # An untrained tokenizer cannot keep the scenes; the oracle still reads every original exactly.
    assert metrics["psnr"] < 25 and metrics["oracle_accuracy"] < 1.0
    assert metrics["oracle_accuracy_originals"] == 1.0
    assert 0 < metrics["codebook_usage"] <= 1 and 0 <= metrics["segmentation_pixel_accuracy"] <= 1
    assert (tmp_path / "vq.png").stat().st_size > 0


def test_codebook_switches_on_after_the_autoencoder_warmup_with_kmeans(tmp_path: Path) -> None:
    tokenizer_config = replace(ImageTokenizerConfig.preset("tiny"), kmeans_init=True)
    train_config = VQTrainConfig.preset("tiny")
    result = train_vq(tmp_path / "run", tokenizer_config, train_config, steps=5, progress=False)
    usage = [r["codebook_usage"] for r in MetricsLogger.read(tmp_path / "run" / METRICS_FILE)]
    warmup = train_config.autoencoder_warmup_steps
    assert usage[:warmup] == [0.0] * warmup  # plain autoencoder: no codes drawn
    assert min(usage[warmup:]) > 0.25  # k-means on many images spreads the codes, not one per batch
    codebook = ImageTokenizer.from_pretrained(result.final_dir).quantizer.codebook
    assert torch.unique(codebook, dim=0).shape[0] > tokenizer_config.codebook_size // 2


def test_freeze_codes_fine_tunes_the_decoder_alone_and_keeps_every_code(
    tmp_path: Path, world_images: np.ndarray
) -> None:
    base = tiny_run(tmp_path / "base", steps=20)
    before = ImageTokenizer.from_pretrained(base.final_dir)
    tuned_run = train_vq(
        tmp_path / "tuned", ImageTokenizerConfig.preset("tiny"), VQTrainConfig.preset("tiny"), steps=15,
        progress=False, init_dir=base.final_dir, codes_frozen=True,
    )
    after = ImageTokenizer.from_pretrained(tuned_run.final_dir)
    start = before.state_dict()
    changed = {name for name, tensor in after.state_dict().items() if not torch.equal(tensor, start[name])}
    assert changed and all(name.startswith("decoder.") for name in changed), sorted(changed)
    assert torch.equal(after.encode(world_images), before.encode(world_images))
    assert after.fingerprint() == before.fingerprint()
    # The decoder kept learning from where it was: its reconstructions are no worse than the starting point's.
    codes = before.encode(world_images)
    start_error = np.abs(before.decode(codes).astype(float) - world_images).mean()
    tuned_error = np.abs(after.decode(codes).astype(float) - world_images).mean()
    assert tuned_error < start_error, (start_error, tuned_error)


def test_fingerprint_follows_the_codes_not_the_pixel_decoder() -> None:
    tokenizer = tiny_tokenizer()
    fingerprint = tokenizer.fingerprint()
    with torch.no_grad():
        next(tokenizer.decoder.parameters()).add_(1.0)
    assert tokenizer.fingerprint() == fingerprint
    with torch.no_grad():
        next(tokenizer.encoder.parameters()).add_(1.0)
    assert tokenizer.fingerprint() != fingerprint


@pytest.mark.parametrize("norm", ["group", "channel"])
def test_only_channel_norm_keeps_codes_and_pixels_local(norm: str) -> None:
    """Changing the pixels of one corner patch moves encoder features beyond the convs' reach only under GroupNorm
    (its statistics span the image), and likewise changing one code moves far pixels: why editing copies badly."""
    torch.manual_seed(0)
    config = replace(ImageTokenizerConfig.preset("tiny"), norm=norm)
    tokenizer = ImageTokenizer(config).eval()
    f, grid = config.downsample_factor, config.grid
    images = torch.rand(1, 3, config.image_size, config.image_size) * 2 - 1
    changed = images.clone()
    changed[:, :, :f, :f] = -changed[:, :, :f, :f]  # the top-left patch only
    with torch.no_grad():
        latents, latents_changed = tokenizer.encoder(images), tokenizer.encoder(changed)
        reach = config.encoder_blocks  # each residual 3x3 conv reaches one code further
        far_latents = (latents - latents_changed)[..., reach + 1 :, reach + 1 :].abs().max().item()
        codes = torch.randn(1, config.code_dim, grid, grid)
        codes_changed = codes.clone()
        codes_changed[..., 0, 0] += 3.0
        pixels, pixels_changed = tokenizer.decoder(codes), tokenizer.decoder(codes_changed)
        reach = 1 + config.decoder_blocks  # the input 3x3 conv and each residual unit
        far_pixels = (pixels - pixels_changed)[..., (reach + 1) * f :, (reach + 1) * f :].abs().max().item()
    assert (latents - latents_changed)[..., 0, 0].abs().max().item() > 1e-3  # the change is seen where it is
    if norm == "channel":
        assert far_latents < 1e-5 and far_pixels < 1e-5
    else:
        assert far_latents > 1e-4 and far_pixels > 1e-4


@pytest.mark.parametrize("norm", ["group", "channel"])
def test_removing_an_object_changes_far_codes_only_under_group_norm(norm: str) -> None:
    torch.manual_seed(0)
    tokenizer = ImageTokenizer(replace(ImageTokenizerConfig.preset("tiny"), norm=norm)).eval()
    world = WorldConfig.preset(TINY_WORLD)
    scenes = World(world).scenes(seed=0, split="test", n=24)
    changed = codes_changed_by_removal(tokenizer, world, scenes, seed=0, batch_size=8)
    assert 0.0 < changed["outside_cell"] <= 1.0  # the codes within the convs' reach of the cell see the change
    if norm == "channel":
        assert changed["beyond_encoder_reach"] == 0.0
    else:
        assert changed["beyond_encoder_reach"] > 0.01


def test_code_distances_from_a_box() -> None:
    distance = code_distances_from_box(4, (1, 1, 2, 3))  # column 1, rows 1-2
    assert distance.tolist() == [[1, 1, 1, 2], [1, 0, 1, 2], [1, 0, 1, 2], [1, 1, 1, 2]]


def test_freeze_codes_needs_a_tokenizer_to_start_from(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="init_dir"):
        train_vq(tmp_path, ImageTokenizerConfig.preset("tiny"), VQTrainConfig.preset("tiny"), steps=1,
                 progress=False, codes_frozen=True)
