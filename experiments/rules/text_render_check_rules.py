"""Which rule best picks a right sample among text rendering's candidates? (docs/model-history.md)

Samples each validation word's candidates once, with the checkpoint's text-rendering defaults and the evaluation's
seeds (so the samples are the ones `cm3leon eval all --split val --tasks text_render` sees), computes per candidate
what each rule needs, and prints every rule's exact-word accuracy on the same samples: a paired comparison.

    python experiments/rules/text_render_check_rules.py --checkpoint models/shapes --seed 0 --json /tmp/features.json
    python experiments/rules/text_render_check_rules.py --seed 1 --candidates 16   # another draw, more samples

"likeliest caption per token + 5.0 x retriever" is the rule serving and `eval all` use where a retriever is loaded
(`cm3leon.policies.shapes.caption_check.text_render_scorer`).

Per candidate: whether the oracle reads the word (`right`), whether the model's greedy caption is the asked-for
scene (`agrees`), the per-token log-probabilities of the asked-for canonical caption given the image, the
log-likelihood of the model's own greedy caption, and the image's log-likelihood given the prompt and given the
prompt with its text masked (classifier-free guidance's two streams), and the retriever's text-image similarity
of the asked-for caption with the decoded image (CM3Leon reranks with CLIP; the retriever is this world's CLIP).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import rule_comparison
import torch
from rule_comparison import best_by, first_agreeing_else

from cm3leon.bundle import ModelBundle
from cm3leon.data.language import detailed_caption, parse_caption
from cm3leon.data.oracle import Oracle
from cm3leon.decoding import generate
from cm3leon.decoding.defaults import TEXT_RENDERING, load_decoding_defaults
from cm3leon.decoding.prompts import TEXT_KINDS, mask_runs
from cm3leon.decoding.rerank import continuation_log_likelihoods
from cm3leon.evaluation.task_cases import TaskEvalConfig, build_cases, formatter
from cm3leon.policies.shapes.caption_check import CHECK_CAPTION_PARAMS
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tasks.decode import caption_images, decode_codes, seeded_batches
from cm3leon.tasks.parsing import image_output


@dataclass
class WordCandidates:
    """One word's readable candidates (unreadable ones, with no whole image block, are never right)."""

    right: list[bool]
    agrees: list[bool]
    caption_token_log_probs: list[list[float]]  # of the asked-for caption, per candidate
    letter_positions: list[int]  # which of those tokens are the word's letters
    own_caption_log_likelihood: list[float]  # of the model's greedy caption of the candidate
    image_given_prompt: list[float]
    image_given_masked_prompt: list[float]
    retriever_similarity: list[float]


@torch.inference_mode()
def token_log_probs(checkpoint: ModelBundle, prompt: Sequence[int], output: Sequence[int]) -> list[float]:
    tokens = torch.tensor([list(prompt) + list(output)])
    log_probs = checkpoint.model(tokens[:, :-1]).float().log_softmax(dim=-1)[0]
    picked = log_probs.gather(-1, tokens[0, 1:, None])[:, 0]
    return picked[len(prompt) - 1 :].tolist()


def features(
    checkpoint: ModelBundle, retriever: Retriever, seed: int, n: int, samples_per_word: int | None = None
) -> list[WordCandidates]:
    cases = build_cases(checkpoint, TaskEvalConfig(n=n, seed=seed, split="val", compositional=False))
    fmt, world, vocab, oracle = formatter(checkpoint), checkpoint.world, checkpoint.vocab, Oracle(checkpoint.world)
    params = load_decoding_defaults(checkpoint.directory)[TEXT_RENDERING]
    params = params.replace(num_candidates=samples_per_word or params.num_candidates)
    prompts = [fmt.text_render(word, None).prompt for word in cases.words]
    sampled = [
        [candidate.token_ids for candidate in result.candidates]
        for requests in seeded_batches(prompts, "image", params, TaskEvalConfig().batch_size, seed)
        for result in generate(checkpoint.model, vocab, requests)
    ]
    found: list[WordCandidates] = []
    for prompt, candidates, word in zip(prompts, sampled, cases.words, strict=True):
        readable = [(ids, codes) for ids in candidates if (codes := image_output(ids, vocab)) is not None]
        ids, codes = [r[0] for r in readable], [r[1] for r in readable]
        if not codes:
            found.append(WordCandidates([], [], [], [], [], [], [], []))
            continue
        captions, _ = caption_images(checkpoint, codes, CHECK_CAPTION_PARAMS, len(codes), 0)
        wanted = [fmt.caption(image, detailed_caption(word, world)) for image in codes]
        own = [fmt.caption(image, caption) for image, caption in zip(codes, captions, strict=True)]
        letters = [i for i, token in enumerate(wanted[0].output) if vocab.decode_text([token]) in set(word.word or "")]
        masked = mask_runs(vocab, prompt, TEXT_KINDS)
        pixels = decode_codes(checkpoint, codes)
        sized = rule_comparison.retriever_sized(checkpoint, retriever, pixels)
        found.append(WordCandidates(
            right=[oracle.parse(p, expect_text=True).word == word.word for p in pixels],
            agrees=[(s := parse_caption(c, world)) is not None and s.key() == word.key() for c in captions],
            caption_token_log_probs=[token_log_probs(checkpoint, e.prompt, e.output) for e in wanted],
            letter_positions=letters,
            own_caption_log_likelihood=continuation_log_likelihoods(
                checkpoint.model, vocab, [e.prompt for e in own], [e.output for e in own]).tolist(),
            image_given_prompt=continuation_log_likelihoods(checkpoint.model, vocab, [prompt] * len(ids), ids).tolist(),
            image_given_masked_prompt=continuation_log_likelihoods(
                checkpoint.model, vocab, [masked] * len(ids), ids).tolist(),
            retriever_similarity=retriever.similarity(
                [detailed_caption(word, world)], sized)[0].tolist(),
        ))
    return found


def caption(word: WordCandidates, i: int) -> float:
    return sum(word.caption_token_log_probs[i])


def letters(word: WordCandidates, i: int) -> float:
    return sum(word.caption_token_log_probs[i][p] for p in word.letter_positions)


def pmi(word: WordCandidates, i: int) -> float:
    return word.image_given_prompt[i] - word.image_given_masked_prompt[i]


def retrieved(word: WordCandidates, i: int) -> float:
    return word.retriever_similarity[i]


RULES: dict[str, Callable[[WordCandidates], int]] = {
    "first sample": lambda word: 0,
    "exact check (first agreeing, else first)": first_agreeing_else(lambda word, i: -i),
    "graded check (first agreeing, else likeliest caption)": first_agreeing_else(caption),
    "likeliest asked-for caption": best_by(caption),
    "likeliest letters of the asked-for caption": best_by(letters),
    "likeliest caption, agreeing samples first": best_by(lambda word, i: caption(word, i) + 1e9 * word.agrees[i]),
    "first agreeing, else caption minus own reading": first_agreeing_else(
        lambda word, i: caption(word, i) - word.own_caption_log_likelihood[i]),
    "image-prompt PMI": best_by(pmi),
    **{f"likeliest caption + {w} x PMI": best_by(lambda word, i, w=w: caption(word, i) + w * pmi(word, i))
       for w in (0.05, 0.2, 1.0)},
    "retriever similarity to the asked-for caption": best_by(retrieved),
    "first agreeing, else retriever": first_agreeing_else(retrieved),
    "retriever, agreeing samples first": best_by(lambda word, i: retrieved(word, i) + 1e9 * word.agrees[i]),
    **{f"likeliest caption per token + {w} x retriever": best_by(
        lambda word, i, w=w: caption(word, i) / len(word.caption_token_log_probs[i]) + w * retrieved(word, i))
       for w in (1.0, 5.0, 20.0)},
}


def main() -> None:
    options = rule_comparison.parser(__doc__.splitlines()[0], seed=0)
    options.add_argument("--candidates", type=int, help="samples per word (default: the checkpoint's)")
    args = options.parse_args()
    checkpoint, retriever = rule_comparison.load(args)
    words = features(checkpoint, retriever, args.seed, args.n, args.candidates)
    pairs = [(agrees, right) for w in words for agrees, right in zip(w.agrees, w.right, strict=True)]
    precision = np.mean([right for agrees, right in pairs if agrees] or [np.nan])
    recall = np.mean([agrees for agrees, right in pairs if right] or [np.nan])
    print(f"the reading agrees with a right sample {precision:.3f} of the times it agrees "
          f"and agrees with {recall:.3f} of the right samples")
    rule_comparison.report(words, RULES, args.json)


if __name__ == "__main__":
    main()
