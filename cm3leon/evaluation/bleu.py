"""Corpus BLEU (Papineni et al. 2002): n-gram precision of generated captions against reference captions.

Standard corpus-level BLEU-4 without smoothing: clipped n-gram matches and candidate n-gram counts are summed
over the whole corpus before the precisions are taken, the brevity penalty compares the total candidate length
with the total of each candidate's closest reference length (shorter on ties), and the score is the geometric
mean of the 1..4-gram precisions times that penalty. No package is installed for it: it is a few lines.
Tokens are lowercased words and punctuation marks, so "circle," and "circle" match.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

MAX_ORDER = 4
_TOKEN = re.compile(r"\w+|[^\w\s]")


def bleu_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: Sequence[str], order: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + order]) for i in range(len(tokens) - order + 1))


def corpus_bleu(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_order: int = MAX_ORDER
) -> float:
    """BLEU-`max_order` in [0, 1] of `hypotheses[i]` against the references `references[i]` (one or more each)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if any(not refs for refs in references):
        raise ValueError("every hypothesis needs at least one reference")
    matches = [0] * max_order
    totals = [0] * max_order
    hypothesis_length = reference_length = 0
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        tokens = bleu_tokens(hypothesis)
        ref_tokens = [bleu_tokens(ref) for ref in refs]
        hypothesis_length += len(tokens)
        # The closest reference length; on a tie the shorter one (the usual convention).
        reference_length += min((abs(len(r) - len(tokens)), len(r)) for r in ref_tokens)[1]
        for order in range(1, max_order + 1):
            counts = _ngrams(tokens, order)
            # Clipping: an n-gram counts at most as often as it appears in any single reference.
            most_in_a_reference: Counter[tuple[str, ...]] = Counter()
            for ref in ref_tokens:
                most_in_a_reference |= _ngrams(ref, order)
            matches[order - 1] += sum(min(n, most_in_a_reference[gram]) for gram, n in counts.items())
            totals[order - 1] += sum(counts.values())
    if hypothesis_length == 0 or any(m == 0 for m in matches):
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_order
    brevity = min(0.0, 1.0 - reference_length / hypothesis_length)
    return math.exp(log_precision + brevity)
