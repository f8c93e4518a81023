"""The decoder: presets, paper init, KV-cached decoding equal to a full forward (with left padding), checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cm3leon.model import DecoderConfig, Transformer

VOCAB_SIZE = 97



def random_model(position_encoding: str = "learned", seed: int = 0) -> Transformer:
    """A tiny model with every weight random: the paper init zeroes the residual outputs, which would make
    attention (and so any cache bug) invisible in the logits."""
    torch.manual_seed(seed)
    model = Transformer(DecoderConfig.preset("tiny", VOCAB_SIZE, position_encoding=position_encoding)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.2)
    return model


def test_presets_have_the_paper_sizes() -> None:
    assert Transformer(DecoderConfig.preset("tiny", VOCAB_SIZE)).num_parameters() < 1_000_000
    shapes = Transformer(DecoderConfig.preset("shapes", 1_500)).num_parameters()
    assert 4_000_000 < shapes < 6_500_000
    for name, layers, width in (("350m", 24, 1024), ("760m", 24, 1536), ("7b", 32, 4096)):
        config = DecoderConfig.preset(name, 56_320)
        assert (config.n_layers, config.d_model, config.max_seq_len) == (layers, width, 4096)
    with pytest.raises(ValueError):
        DecoderConfig.preset("huge", VOCAB_SIZE)
    assert DecoderConfig.preset("tiny", VOCAB_SIZE, max_seq_len=77).max_seq_len == 77


def test_paper_initialisation() -> None:
    torch.manual_seed(0)
    config = DecoderConfig.preset("tiny", 2_000)
    model = Transformer(config)
    token_std = model.token_embedding.weight.std().item()
    assert token_std == pytest.approx(config.init_std, rel=0.1)
    assert model.token_embedding.weight.abs().max().item() <= 3 * config.init_std + 1e-9  # truncated
    assert model.position_embedding is not None
    assert model.position_embedding.weight.std().item() == pytest.approx(config.position_init_std, rel=0.1)
    for block in model.blocks:
        assert block.attention.out_proj.weight.abs().sum().item() == 0.0
        assert block.ffn.down_proj.weight.abs().sum().item() == 0.0
        assert block.attention.qkv.weight.std().item() == pytest.approx(config.init_std, rel=0.1)
    assert model.lm_head.weight is model.token_embedding.weight  # tied, OPT-style


@pytest.mark.parametrize("position_encoding", ["learned", "rope"])
def test_cached_incremental_decoding_matches_full_forward(position_encoding: str) -> None:
    model = random_model(position_encoding)
    tokens = torch.randint(0, VOCAB_SIZE, (3, 14), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        model.setup_caches(3, 20)
        pieces = [model(tokens[:, :6], torch.arange(6))]
        for position in range(6, tokens.shape[1]):
            pieces.append(model(tokens[:, position : position + 1], torch.tensor([position])))
    incremental = torch.cat(pieces, dim=1)
    assert incremental.shape == (3, 14, VOCAB_SIZE)
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position_encoding", ["learned", "rope"])
def test_left_padded_cached_decoding_matches_each_row_alone(position_encoding: str) -> None:
    model = random_model(position_encoding, seed=3)
    generator = torch.Generator().manual_seed(2)
    lengths = [9, 4, 6]
    sequences = [torch.randint(0, VOCAB_SIZE, (length + 5,), generator=generator) for length in lengths]
    prompt_length = max(lengths)
    padded = torch.zeros((3, prompt_length), dtype=torch.long)  # padding id 0: any id, it must never be seen
    for row, (length, sequence) in enumerate(zip(lengths, sequences, strict=True)):
        padded[row, prompt_length - length :] = sequence[:length]
    row_start = torch.tensor([prompt_length - length for length in lengths])
    with torch.no_grad():
        model.setup_caches(3, prompt_length + 5)
        steps = [model(padded, torch.arange(prompt_length), row_start)[:, -1]]
        for step in range(4):
            next_tokens = torch.stack(
                [sequence[length + step] for length, sequence in zip(lengths, sequences, strict=True)]
            )
            position = torch.tensor([prompt_length + step])
            steps.append(model(next_tokens.unsqueeze(1), position, row_start)[:, -1])
        for row, (length, sequence) in enumerate(zip(lengths, sequences, strict=True)):
            alone = model(sequence[: length + 4].unsqueeze(0))[0, length - 1 :]
            torch.testing.assert_close(torch.stack([s[row] for s in steps]), alone, atol=1e-5, rtol=1e-5)
    assert all(torch.isfinite(s).all() for s in steps)


def test_left_padding_without_cache_keeps_real_rows_exact_and_padding_finite() -> None:
    model = random_model()
    tokens = torch.randint(0, VOCAB_SIZE, (1, 7))
    padded = torch.cat([torch.zeros((1, 3), dtype=torch.long), tokens], dim=1)
    with torch.no_grad():
        out = model(padded, row_start=torch.tensor([3]))
        torch.testing.assert_close(out[0, 3:], model(tokens)[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


def test_caches_are_reused_when_large_enough_and_never_saved(tmp_path: Path) -> None:
    model = random_model()
    model.setup_caches(4, 32)
    cache = model.blocks[0].attention.kv_cache
    model.setup_caches(2, 16)
    assert model.blocks[0].attention.kv_cache is cache
    model.setup_caches(8, 16)
    assert model.blocks[0].attention.kv_cache is not cache
    assert not any("cache" in name for name in model.state_dict())
    with pytest.raises(ValueError):
        model.setup_caches(1, model.config.max_seq_len + 1)
    # A forward without input_pos is the training path: it ignores the caches.
    tokens = torch.randint(0, VOCAB_SIZE, (2, 5))
    with torch.no_grad():
        with_caches = model(tokens)
        model.clear_caches()
        torch.testing.assert_close(model(tokens), with_caches)


def test_checkpoint_reloads_to_identical_logits(tmp_path: Path) -> None:
    model = random_model("rope")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "model_config.json").exists()
    loaded = Transformer.from_pretrained(tmp_path)
    assert loaded.config == model.config
    assert loaded.lm_head.weight is loaded.token_embedding.weight
    tokens = torch.randint(0, VOCAB_SIZE, (2, 11))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
