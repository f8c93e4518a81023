"""The benchmark's peer: the same decoder weights in Hugging Face `transformers`' `OPTForCausalLM`.

Our decoder is OPT-shaped (pre-norm, learned positions counted from each row's first real token, tied
embeddings, no biases), so the export is a renaming: fused qkv split into q/k/v, LayerNorm biases zero, positions
shifted by OPT's offset of 2. `greedy_equal` proves an export by equal greedy continuations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cm3leon.model.transformer import Transformer


def export_to_opt(model: Transformer) -> torch.nn.Module:
    """An `OPTForCausalLM` (eval mode, same device and dtype) computing the same function as `model`."""
    from transformers import OPTConfig, OPTForCausalLM

    config = model.config
    if config.position_encoding != "learned" or not config.tie_embeddings:
        raise ValueError("only learned positions with tied embeddings map onto OPT")
    opt_config = OPTConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        ffn_dim=config.ffn_dim,
        num_attention_heads=config.n_heads,
        max_position_embeddings=config.max_seq_len,
        word_embed_proj_dim=config.d_model,
        do_layer_norm_before=True,
        activation_function="gelu",
        enable_bias=False,
        layer_norm_elementwise_affine=True,
        dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=True,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    peer = OPTForCausalLM(opt_config)
    decoder = peer.model.decoder
    with torch.no_grad():
        decoder.embed_tokens.weight.copy_(model.token_embedding.weight)
        assert model.position_embedding is not None
        decoder.embed_positions.weight.zero_()
        decoder.embed_positions.weight[2:].copy_(model.position_embedding.weight)
        for ours, theirs in zip(model.blocks, decoder.layers, strict=True):
            q, k, v = ours.attention.qkv.weight.chunk(3, dim=0)
            theirs.self_attn.q_proj.weight.copy_(q)
            theirs.self_attn.k_proj.weight.copy_(k)
            theirs.self_attn.v_proj.weight.copy_(v)
            theirs.self_attn.out_proj.weight.copy_(ours.attention.out_proj.weight)
            _copy_norm(theirs.self_attn_layer_norm, ours.attention_norm)
            _copy_norm(theirs.final_layer_norm, ours.ffn_norm)
            theirs.fc1.weight.copy_(ours.ffn.up_proj.weight)
            theirs.fc2.weight.copy_(ours.ffn.down_proj.weight)
        _copy_norm(decoder.final_layer_norm, model.final_norm)
    peer.tie_weights()
    weight = model.token_embedding.weight
    return peer.to(device=weight.device, dtype=weight.dtype).eval()


def _copy_norm(theirs: torch.nn.LayerNorm, ours: torch.nn.LayerNorm) -> None:
    theirs.weight.copy_(ours.weight)
    theirs.bias.zero_()
    theirs.eps = ours.eps


@torch.inference_mode()
def our_greedy(model: Transformer, prompt: Sequence[int], steps: int) -> list[int]:
    """Plain greedy continuation with our model's cached forward (no modality constraint)."""
    device = model.token_embedding.weight.device
    tokens = torch.tensor([list(prompt)], device=device)
    model.setup_caches(1, len(prompt) + steps)
    logits = model(tokens, torch.arange(len(prompt), device=device))[:, -1]
    generated: list[int] = []
    for step in range(steps):
        token = int(logits.argmax(-1))
        generated.append(token)
        position = torch.tensor([len(prompt) + step], device=device)
        logits = model(torch.tensor([[token]], device=device), position)[:, -1]
    return generated


@torch.inference_mode()
def peer_greedy(peer: torch.nn.Module, prompt: Sequence[int], steps: int) -> list[int]:
    device = next(peer.parameters()).device
    tokens = torch.tensor([list(prompt)], device=device)
    out = peer.generate(tokens, do_sample=False, max_new_tokens=steps, min_new_tokens=steps)
    return out[0, len(prompt) :].tolist()


def greedy_equal(model: Transformer, peer: torch.nn.Module, prompts: Sequence[Sequence[int]], steps: int) -> bool:
    """Whether both give the same greedy continuations of every prompt."""
    return all(our_greedy(model, prompt, steps) == peer_greedy(peer, prompt, steps) for prompt in prompts)


@torch.inference_mode()
def peer_cfg_generate(
    peer: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    unconditional: Sequence[Sequence[int]],
    *,
    guidance_scale: float,
    top_p: float,
    new_tokens: int,
    pad_id: int,
    seed: int,
) -> torch.Tensor:
    """`generate(guidance_scale=...)` (transformers' unbatched CFG: the unconditional prompts run as a second
    model call per step) of a static batch, left-padded; generated tokens on the CPU."""
    device = next(peer.parameters()).device
    tokens, mask = _left_pad(prompts, pad_id, device)
    negative, negative_mask = _left_pad(unconditional, pad_id, device)
    torch.manual_seed(seed)
    return peer.generate(
        tokens,
        attention_mask=mask,
        negative_prompt_ids=negative,
        negative_prompt_attention_mask=negative_mask,
        guidance_scale=guidance_scale,
        do_sample=True,
        top_p=top_p,
        top_k=0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=pad_id,
    ).cpu()  # on a GPU: wait for the work, as our side's token read-back does


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(row) for row in rows)
    tokens = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for index, row in enumerate(rows):
        tokens[index, length - len(row) :] = torch.tensor(list(row))
        mask[index, length - len(row) :] = 1
    return tokens.to(device), mask.to(device)
