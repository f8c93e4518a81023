"""The decoder-only transformer: config presets, static KV cache, checkpoints."""

from cm3leon.model.config import DecoderConfig, PositionEncoding
from cm3leon.model.kv_cache import KVCache
from cm3leon.model.transformer import Transformer, attention_mask

__all__ = ["DecoderConfig", "KVCache", "PositionEncoding", "Transformer", "attention_mask"]
