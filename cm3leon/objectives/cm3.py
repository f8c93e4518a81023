"""CM3's causally masked objective: cut spans out of a document, move them to its end, train left to right.

A plain decoder only ever conditions on the left. CM3 (Aghajanyan et al. 2022) gives it bidirectional context
for free: a few spans are replaced by numbered sentinels `<mask:i>` and re-emitted after the document, so that
when the model writes a span it has already read everything around it. Trained with ordinary next-token loss,
the same weights then do infilling ("an image of <mask:0> ... IMAGE <infill> <mask:0>" = captioning, masked
image codes = inpainting).

Exact layout of a masked document (spans numbered in reading order, `body` = the document between its
`<bos>` and `<eos>`):

    <bos> prefix <mask:0> middle <mask:1> suffix <infill> <mask:0> span0 <mask:1> span1 <eos>

Which tokens are *targets* (the loss mask is aligned with the ids: `loss_mask[i]` says whether token i is
trained, i.e. predicted from the positions before it):

- every ordinary token of the body (text, image codes, locations): yes, the document is still modelled causally;
- a sentinel inside the body: NO. Where a span was cut is the masker's random choice, not something to learn,
  and teaching the model to emit `<mask:i>` in running text would make it stop writing mid-document;
- `<infill>` and the `<mask:0>` right after it: NO. They are the prompt of the infilling task (the user writes
  them), and the `<mask:0>` after `<infill>` is fully determined anyway;
- every span token: yes, that is the point of the objective;
- `<mask:i+1>` after span i and the final `<eos>`: yes. They mark where a span ENDS, which the model must learn
  to stop an infill (a caption written into `<mask:0>` ends with `<eos>`);
- `<bos>` and `<pad>`: never; nor the plain `<mask>` that stands for removed text in classifier-free
  guidance's unconditional stream (it is always given, never generated).

Spans never cross `<break>`, `<bos>` or `<eos>` (nor any other special token): they are drawn inside the maximal
runs of non-special tokens, so an image span stays inside its image block (a `<break>` always separates an
image from its neighbours) and infilling learns to paint codes, not to move modality boundaries.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from cm3leon.presets import Presets
from cm3leon.tokenizers.vocab import Vocabulary

Span = tuple[int, int]  # [start, end) token offsets into the original document


@dataclass(frozen=True)
class CM3Config(Presets):
    """How documents are masked. Presets: `cm3` (the paper's span counts), `none` (plain causal LM)."""

    # Fraction of documents that are CM3-masked; the rest stay plain left-to-right documents, which is what
    # text->image generation at inference looks like (caption, `<break>`, image, no sentinels).
    masked_fraction: float = 0.5
    # Number of spans n ~ Clamp(Poisson(mean_spans), 1, max_spans), as in CM3 (Poisson(1), clamp to 16).
    mean_spans: float = 1.0
    # None = as many as the vocabulary has mask sentinels.
    max_spans: int | None = None
    # A span covers at most this fraction of the run (text run or image block) it is drawn from. 1.0 lets a
    # span take a whole caption (`<mask:0> <break> IMAGE <infill> <mask:0> caption`: captioning by infilling)
    # or a whole image (text->image by infilling); lengths are uniform, so most spans are partial.
    max_span_fraction: float = 1.0
    # Draws per span before giving up on placing it without touching another span (fewer spans then).
    placement_attempts: int = 20

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cm3": {},
        "always": dict(masked_fraction=1.0),
        "none": dict(masked_fraction=0.0),
    }

    def __post_init__(self) -> None:
        if not 0.0 <= self.masked_fraction <= 1.0:
            raise ValueError(f"masked_fraction must be in [0, 1], got {self.masked_fraction}")
        if not 0.0 < self.max_span_fraction <= 1.0:
            raise ValueError(f"max_span_fraction must be in (0, 1], got {self.max_span_fraction}")
        if self.mean_spans <= 0:
            raise ValueError(f"mean_spans must be positive, got {self.mean_spans}")


@dataclass(frozen=True)
class MaskedDocument:
    """One training document: its ids, which of them are targets, and the spans that were moved (if any)."""

    ids: list[int]
    loss_mask: list[bool]
    spans: tuple[Span, ...] = ()


def sample_poisson(rng: random.Random, mean: float) -> int:
    """Knuth's multiplication method: exact, and fast for the small means CM3 uses."""
    threshold = math.exp(-mean)
    count, product = 0, rng.random()
    while product > threshold:
        count += 1
        product *= rng.random()
    return count


class CM3Masker:
    """Applies the causally masked transform to token-id documents of one `Vocabulary`."""

    def __init__(self, vocab: Vocabulary, config: CM3Config | None = None) -> None:
        self.vocab = vocab
        self.config = config or CM3Config()
        available = len(vocab.mask_sentinel_ids)
        self.max_spans = min(self.config.max_spans or available, available)
        if self.max_spans < 1:
            raise ValueError("the vocabulary has no <mask:i> sentinels to mask with")
        self._special_ids = frozenset(range(len(vocab.special_tokens)))
        self._sentinel_ids = frozenset(vocab.mask_sentinel_ids)

    # --- span choice -------------------------------------------------------------------------------------------
    def maskable_runs(self, ids: Sequence[int]) -> list[Span]:
        """Maximal runs of non-special tokens: the only places a span may be drawn from."""
        runs: list[Span] = []
        start: int | None = None
        for i, token in enumerate(ids):
            if token in self._special_ids:
                if start is not None:
                    runs.append((start, i))
                start = None
            elif start is None:
                start = i
        if start is not None:
            runs.append((start, len(ids)))
        return runs

    def sample_spans(self, ids: Sequence[int], rng: random.Random) -> list[Span]:
        """n ~ Clamp(Poisson, 1, max_spans) disjoint, non-adjacent spans, each inside one maskable run.

        A run is chosen with probability proportional to its length (so the long image block gets most spans,
        as it holds most tokens), then a length uniform in [1, max_span_fraction * run], then a start.
        Non-adjacent so that each sentinel replaces one maximal masked stretch.
        """
        runs = self.maskable_runs(ids)
        if not runs:
            return []
        count = min(max(sample_poisson(rng, self.config.mean_spans), 1), self.max_spans)
        weights = [end - start for start, end in runs]
        spans: list[Span] = []
        for _ in range(count):
            for _ in range(self.config.placement_attempts):
                run_start, run_end = rng.choices(runs, weights=weights)[0]
                run_length = run_end - run_start
                length = rng.randint(1, max(1, math.floor(self.config.max_span_fraction * run_length)))
                start = rng.randint(run_start, run_end - length)
                candidate = (start, start + length)
                # Disjoint and with at least one token between spans.
                if all(candidate[1] < s or e < candidate[0] for s, e in spans):
                    spans.append(candidate)
                    break
        return sorted(spans)

    # --- the transform -----------------------------------------------------------------------------------------
    def apply(self, ids: Sequence[int], spans: Sequence[Span]) -> MaskedDocument:
        """The masked document for given spans (deterministic; `sample_spans` chooses them)."""
        ids = list(ids)
        spans = sorted(spans)
        if not spans:
            return MaskedDocument(ids, self.target_mask(ids))
        if len(spans) > self.max_spans:
            raise ValueError(f"{len(spans)} spans but only {self.max_spans} sentinels")
        for start, end in spans:
            if not 0 <= start < end <= len(ids) or any(t in self._special_ids for t in ids[start:end]):
                raise ValueError(f"span {(start, end)} is empty, out of range or covers a special token")
        for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False):
            if next_start <= end:
                raise ValueError(f"spans {spans} overlap or touch")
        has_eos = bool(ids) and ids[-1] == self.vocab.eos_id
        body_end = len(ids) - 1 if has_eos else len(ids)
        sentinels = self.vocab.mask_sentinel_ids
        masked: list[int] = []
        cursor = 0
        for index, (start, end) in enumerate(spans):
            masked.extend(ids[cursor:start])
            masked.append(sentinels[index])
            cursor = end
        masked.extend(ids[cursor:body_end])
        masked.append(self.vocab.infill_id)
        for index, (start, end) in enumerate(spans):
            masked.append(sentinels[index])
            masked.extend(ids[start:end])
        masked.append(self.vocab.eos_id)
        return MaskedDocument(masked, self.target_mask(masked), tuple(spans))

    def __call__(self, ids: Sequence[int], rng: random.Random) -> MaskedDocument:
        """Mask a document with probability `masked_fraction`, else return it unchanged (with its loss mask)."""
        if rng.random() >= self.config.masked_fraction:
            return MaskedDocument(list(ids), self.target_mask(ids))
        return self.apply(ids, self.sample_spans(ids, rng))

    def target_mask(self, ids: Sequence[int]) -> list[bool]:
        """Which tokens are trained as targets (see the module docstring); works on packed documents too."""
        vocab = self.vocab
        mask: list[bool] = []
        after_infill = False
        previous: int | None = None
        for token in ids:
            if token in (vocab.pad_id, vocab.bos_id, vocab.mask_id):
                target = False
            elif token == vocab.infill_id:
                target, after_infill = False, True
            elif token in self._sentinel_ids:
                # Span-end markers after <infill> are learned; body sentinels and the announced <mask:0> are not.
                target = after_infill and previous != vocab.infill_id
            elif token == vocab.eos_id:
                target, after_infill = True, False
            else:
                target = True
            mask.append(target)
            previous = token
        return mask

    def reassemble(self, masked_ids: Sequence[int]) -> list[int]:
        """The original document of a masked one: each sentinel in the body replaced by its span."""
        masked_ids = list(masked_ids)
        vocab = self.vocab
        if vocab.infill_id not in masked_ids:
            return masked_ids
        split = masked_ids.index(vocab.infill_id)
        body, tail = masked_ids[:split], masked_ids[split + 1 :]
        ended = bool(tail) and tail[-1] == vocab.eos_id
        if ended:
            tail = tail[:-1]
        span_of: dict[int, list[int]] = {}
        current: list[int] | None = None
        for token in tail:
            if token in self._sentinel_ids:
                current = span_of.setdefault(token, [])
            elif current is None:
                raise ValueError("infill section does not start with a mask sentinel")
            else:
                current.append(token)
        original: list[int] = []
        for token in body:
            if token in self._sentinel_ids:
                if token not in span_of:
                    raise ValueError(f"sentinel {vocab.token_name(token)} has no span after <infill>")
                original.extend(span_of[token])
            else:
                original.append(token)
        if ended:
            original.append(vocab.eos_id)
        return original
