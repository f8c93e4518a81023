"""Decoder-only transformer in the OPT style (CM3Leon): pre-norm, no biases, no dropout, learned positions.

Departures from the paper, each cheap to undo through `DecoderConfig`:
- LayerNorm without bias (the paper says "no biases"; OPT's LayerNorm kept them). GELU in the feed-forward
  (OPT used ReLU): smoother, same cost, and the usual choice for small models.
- `position_encoding="rope"` is available but not the default; the default is the paper's learned positions.
- The token embedding is tied to the output projection (as in OPT), so "output projections zero" applies to the
  residual-branch outputs (attention out and feed-forward down projections), not to the logits layer.

Inference uses a static KV cache (see `kv_cache.py`): `setup_caches` once, then `forward(tokens, input_pos)`
writes keys/values at `input_pos` and attends causally over the cache. Batched prompts of different lengths are
left-padded; `row_start` (B,) gives each row's first real position so that padding is never attended to and
positions count from each row's own start (a row's logits then do not depend on how much it was padded).
`forward_rows` is the serving scheduler's variant: caches owned by the caller (a pool of rows), every row at its
own position, so rows that joined at different steps share one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from cm3leon.model.config import DecoderConfig
from cm3leon.model.kv_cache import KVCache
from cm3leon.model.positions import RotaryEmbedding

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
# Truncated normal init is cut at this many standard deviations (the usual +-2 or +-3; we take 3).
TRUNCATION_STDS = 3.0


Linear = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, weight) -> x @ weight^T
# Row blocks of `rows_linear`: the CPU (MKL) product W @ X^T rounds every row the same for 16 to this many rows.
ROWS_LINEAR_BLOCK = 128
# Fewer rows than this may take another kernel (which one depends on the CPU model): short blocks are zero-padded.
ROWS_LINEAR_MIN = 16


def rows_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., K) @ weight (N, K)^T with each row's result independent of how many rows there are.

    `F.linear` picks other kernels, with other rounding, for fewer than about 16 rows; computed as weight @ X^T
    in blocks of ROWS_LINEAR_MIN to ROWS_LINEAR_BLOCK rows (a short last block is padded with zero rows), a row's
    bits stay the same in any batch on CPU (and it is faster there for 16 to 128 rows). Used by `forward_rows`
    only; the training and `generate` path keep `F.linear`.
    """
    flat = x.reshape(-1, x.shape[-1])
    count = flat.shape[0]
    short = count % ROWS_LINEAR_BLOCK
    if 0 < short < ROWS_LINEAR_MIN:
        flat = torch.cat([flat, flat.new_zeros((ROWS_LINEAR_MIN - short, flat.shape[1]))])
    out = torch.cat([(weight @ block.T).T for block in flat.split(ROWS_LINEAR_BLOCK)])[:count]
    return out.reshape(*x.shape[:-1], weight.shape[0])


def rows_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), masked) v as plain batched products: each row's result is independent of the
    row count (SDPA's CPU kernels are not, and with a mask over a long cache they are several times slower)."""
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


@dataclass(frozen=True)
class LayerInputs:
    """What every layer of one forward pass shares: where its tokens sit and what they may attend to.

    Built once per pass and handed to each layer (the habit of vLLM's attention metadata), so a layer's call
    names its input and its inputs, not eight tensors. `rows` and `linear` serve `forward_rows` only.
    """

    positions: torch.Tensor  # positions the rotary embedding sees, counted from each row's own start
    mask: torch.Tensor | None  # True = may attend; None: plain causal attention over the tokens (fused kernel)
    rotary: RotaryEmbedding | None
    cache_pos: torch.Tensor | None  # cache positions K/V are written at; None: no cache (training)
    rows: torch.Tensor | None = None  # cache rows of the tokens; None: rows 0..R-1
    linear: Linear = F.linear


class Attention(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, inputs: LayerInputs) -> torch.Tensor:
        batch, length, width = x.shape
        # (B, T, 3, H, D) -> three (B, H, T, D)
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if inputs.rotary is not None:
            q, k = inputs.rotary(q, inputs.positions), inputs.rotary(k, inputs.positions)
        if inputs.cache_pos is not None:
            assert self.kv_cache is not None, "cache_pos given without setup_caches"
            k, v = self.kv_cache.update(inputs.cache_pos, k, v)
            k, v = k.to(q.dtype), v.to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=inputs.mask, is_causal=inputs.mask is None)
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, width))

    def forward_rows(self, x: torch.Tensor, inputs: LayerInputs, cache: KVCache) -> torch.Tensor:
        """Like `forward`, against an external cache whose rows each sit at their own positions (R, T)."""
        assert inputs.mask is not None and inputs.cache_pos is not None, "forward_rows needs a mask and positions"
        batch, length, width = x.shape
        qkv = inputs.linear(x, self.qkv.weight).reshape(batch, length, 3, self.n_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if inputs.rotary is not None:
            q, k = inputs.rotary(q, inputs.positions), inputs.rotary(k, inputs.positions)
        k, v = cache.write_rows(inputs.rows, inputs.cache_pos, k, v)
        y = rows_attention(q, k.to(q.dtype), v.to(q.dtype), inputs.mask)
        return inputs.linear(y.transpose(1, 2).reshape(batch, length, width), self.out_proj.weight)


class FeedForward(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(config.d_model, config.ffn_dim, bias=False)
        self.down_proj = nn.Linear(config.ffn_dim, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))

    def forward_rows(self, x: torch.Tensor, linear: Linear) -> torch.Tensor:
        return linear(F.gelu(linear(x, self.up_proj.weight)), self.down_proj.weight)


class Block(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=False)
        self.attention = Attention(config)
        self.ffn_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=False)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, inputs: LayerInputs) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), inputs)
        return x + self.ffn(self.ffn_norm(x))

    def forward_rows(self, x: torch.Tensor, inputs: LayerInputs, cache: KVCache) -> torch.Tensor:
        x = x + self.attention.forward_rows(self.attention_norm(x), inputs, cache)
        return x + self.ffn.forward_rows(self.ffn_norm(x), inputs.linear)


class Transformer(nn.Module):
    """tokens (B, T) -> logits (B, T, vocab_size). See the module docstring for the design and departures."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        learned = config.position_encoding == "learned"
        self.position_embedding = nn.Embedding(config.max_seq_len, config.d_model) if learned else None
        self.rotary = None if learned else RotaryEmbedding(config.head_dim, config.max_seq_len, config.rope_base)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=False)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        self.reset_parameters()

    # --- initialisation ----------------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Paper init: truncated normal (std init_std), residual output projections 0, positions std small."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=std, a=-TRUNCATION_STDS * std, b=TRUNCATION_STDS * std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
        if self.position_embedding is not None:
            position_std = self.config.position_init_std
            bound = TRUNCATION_STDS * position_std
            nn.init.trunc_normal_(self.position_embedding.weight, std=position_std, a=-bound, b=bound)
        if self.config.zero_init_output_projections:
            for block in self.blocks:
                nn.init.zeros_(block.attention.out_proj.weight)
                nn.init.zeros_(block.ffn.down_proj.weight)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # shared (tied) tensors are counted once

    # --- KV cache ----------------------------------------------------------------------------------------------
    def setup_caches(self, max_batch_size: int, max_seq_length: int, dtype: torch.dtype | None = None) -> None:
        """Allocate static caches; a no-op when the current ones are already large enough (reuse across calls)."""
        if max_seq_length > self.config.max_seq_len:
            raise ValueError(f"cache length {max_seq_length} exceeds max_seq_len {self.config.max_seq_len}")
        weight = self.token_embedding.weight
        dtype = dtype or weight.dtype
        current = self.blocks[0].attention.kv_cache
        if (
            current is not None
            and current.max_batch_size >= max_batch_size
            and current.max_seq_length >= max_seq_length
            and current.keys.dtype == dtype
            and current.keys.device == weight.device
        ):
            return
        for block in self.blocks:
            block.attention.kv_cache = KVCache(
                max_batch_size, max_seq_length, self.config.n_heads, self.config.head_dim, dtype, weight.device
            )

    def clear_caches(self) -> None:
        """Free the caches (e.g. before training; forward without input_pos never uses them anyway)."""
        for block in self.blocks:
            block.attention.kv_cache = None

    @property
    def has_caches(self) -> bool:
        return self.blocks[0].attention.kv_cache is not None

    # --- forward -----------------------------------------------------------------------------------------------
    def forward(
        self,
        tokens: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        row_start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens (B, T) at positions input_pos (T,) (default 0..T-1) -> logits (B, T, V).

        With caches set up and `input_pos` given, K/V are written into the cache and attention covers every
        cached position up to each query's. `row_start` (B,): first real (non left-padding) position per row.
        """
        batch, length = tokens.shape
        use_cache = input_pos is not None and self.has_caches
        query_pos = input_pos if input_pos is not None else torch.arange(length, device=tokens.device)
        # Positions seen by the embeddings count from each row's own first token.
        positions = query_pos.unsqueeze(0)
        if row_start is not None:
            positions = (positions - row_start.unsqueeze(1)).clamp_min(0)
        mask = None  # None: plain causal attention over `tokens` (the training path, fused kernel)
        if input_pos is not None or row_start is not None:
            cache = self.blocks[0].attention.kv_cache
            key_pos = cache.positions if use_cache and cache is not None else query_pos
            mask = attention_mask(query_pos, key_pos, row_start)
        x = self.token_embedding(tokens)
        if self.position_embedding is not None:
            x = x + self.position_embedding(positions)
        inputs = LayerInputs(positions, mask, self.rotary, cache_pos=query_pos if use_cache else None)
        for block in self.blocks:
            x = block(x, inputs)
        return self.lm_head(self.final_norm(x))

    def new_row_caches(self, num_rows: int, row_length: int, dtype: torch.dtype | None = None) -> list[KVCache]:
        """One cache per layer for a pool of `num_rows` rows of `row_length` positions each, owned by the caller
        (a scheduler), so that `generate`'s own caches in the model stay untouched."""
        weight = self.token_embedding.weight
        config = self.config
        return [
            KVCache(num_rows, row_length, config.n_heads, config.head_dim, dtype or weight.dtype, weight.device)
            for _ in self.blocks
        ]

    def forward_rows(
        self,
        tokens: torch.Tensor,
        cache_pos: torch.Tensor,
        row_start: torch.Tensor,
        caches: list[KVCache],
        rows: torch.Tensor | None = None,
        batch_invariant: bool = True,
    ) -> torch.Tensor:
        """tokens (R, T) of cache rows `rows` (R,) at their own cache positions `cache_pos` (R, T) -> logits.

        Each row attends to its cache positions from `row_start` (R,) up to each query's; positions seen by the
        embeddings count from `row_start`. `rows=None` means cache rows 0..R-1 (a decode step over the pool).
        Rows are independent: a row's logits do not depend on the other rows' tokens or positions; with
        `batch_invariant` (CPU) not even in their last bits (see `rows_linear`; attention, `rows_attention`, runs
        over the cache's fixed length: MKL's sum order changes with the key count), at some cost for few rows;
        without it the matrix products are `F.linear`'s.
        """
        linear: Linear = rows_linear if batch_invariant else F.linear
        key_pos = caches[0].positions
        allowed = (key_pos.view(1, 1, -1) >= row_start.view(-1, 1, 1)) & (
            key_pos.view(1, 1, -1) <= cache_pos.unsqueeze(2)
        )
        itself = key_pos.view(1, 1, -1) == cache_pos.unsqueeze(2)  # rows parked on a scratch position
        mask = (allowed | itself).unsqueeze(1)  # (R, 1, T, S)
        positions = (cache_pos - row_start.unsqueeze(1)).clamp(0, self.config.max_seq_len - 1)
        x = self.token_embedding(tokens)
        if self.position_embedding is not None:
            x = x + self.position_embedding(positions)
        inputs = LayerInputs(positions, mask, self.rotary, cache_pos, rows, linear)
        for block, cache in zip(self.blocks, caches, strict=True):
            x = block.forward_rows(x, inputs, cache)
        return linear(self.final_norm(x), self.lm_head.weight)

    # --- persistence -------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: Path | str) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_model(self, str(directory / WEIGHTS_FILE))  # handles the tied embedding / lm_head tensor
        (directory / CONFIG_FILE).write_text(self.config.to_json())

    @classmethod
    def from_pretrained(cls, directory: Path | str, device: torch.device | str = "cpu") -> Transformer:
        """Build from model_config.json alone, then load the weights."""
        directory = Path(directory)
        config = DecoderConfig.from_json((directory / CONFIG_FILE).read_text())
        model = cls(config).to(device)
        load_model(model, str(directory / WEIGHTS_FILE), device=str(device))
        return model.eval()


def attention_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, row_start: torch.Tensor | None) -> torch.Tensor:
    """Boolean (B or 1, 1, T, S) mask, True = may attend: causal over positions, and not before the row's start.

    A padding query (before its row's start) would see no key at all, and softmax over nothing is NaN; it is
    allowed to see itself instead. Its output is never read by a real token, which cannot see padding.
    """
    causal = key_pos.unsqueeze(0) <= query_pos.unsqueeze(1)  # (T, S)
    if row_start is None:
        return causal[None, None]
    after_start = key_pos.view(1, 1, -1) >= row_start.view(-1, 1, 1)  # (B, 1, S)
    itself = key_pos.unsqueeze(0) == query_pos.unsqueeze(1)  # (T, S)
    return ((causal.unsqueeze(0) & after_start) | itself.unsqueeze(0)).unsqueeze(1)
