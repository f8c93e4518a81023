"""What a worker declares of its model in its presence entry, for the gateway's fair-use cost (`services.cost`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cm3leon.kinds import KINDS
from services.cost import guidance_streams
from services.keys import TEXT_KINDS

if TYPE_CHECKING:
    from cm3leon.bundle import ModelBundle

DEFAULT_TEXT_TOKENS = 64  # SamplingParams' max_new_tokens, for a kind with no defaults section


def cost_profile(bundle: ModelBundle, kinds: tuple[str, ...]) -> dict[str, Any]:
    """Per supported kind, with the model's defaults: candidates, guidance streams and tokens per output (image
    codes, or the text budget)."""
    codes = bundle.vocab.codes_per_image
    profile: dict[str, dict[str, int]] = {}
    for kind in KINDS:
        if kind.name not in kinds:
            continue
        params = bundle.defaults.get(kind.defaults) if kind.defaults else None
        if params is None:  # greedy by construction: one stream, one candidate
            entry = {"candidates": 1, "streams": 1, "tokens": DEFAULT_TEXT_TOKENS}
        else:
            streams = guidance_streams(kind.name, params.method, params.uses_three_streams)
            entry = {"candidates": params.num_candidates, "streams": streams, "tokens": params.max_new_tokens}
        if kind.name not in TEXT_KINDS:
            entry["tokens"] = codes
        profile[kind.name] = entry
    return {"kinds": profile}
