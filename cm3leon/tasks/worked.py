"""Worked VQA answers ("<description>, so the answer is X") decoded in two steps: describe, then answer.

A model tuned with `--vqa-worked` first describes the image, then reads its own description back. Greedy
decoding gets the description right less often than captioning with several samples reranked by the noisy
channel (`ChannelScorer`), and the answer can be no better than the description. So: sample worked answers,
keep the one whose description best explains the image (the caption reranker applied to the text before
", so the answer is"), then decode the answer greedily after that description, as training taught it to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cm3leon.bundle import ModelBundle
from cm3leon.data.questions import FINAL_ANSWER_PREFIX
from cm3leon.decoding import GenerationRequest, GenerationResult, SamplingParams, Scorer
from cm3leon.decoding.channel import DEFAULT_DIRECT_WEIGHT, NOT_A_CAPTION, ChannelScorer
from cm3leon.decoding.rerank import ModelScorer, no_rerank
from cm3leon.tasks.parsing import text_answer
from cm3leon.tokenizers.vocab import Vocabulary

WORKED_SEPARATOR = f", {FINAL_ANSWER_PREFIX}"
# Tokens for the answer after the description: the world's longest answer ("middle right") is a few tokens.
ANSWER_TOKENS = 8


def description_of(answer: str) -> str | None:
    """The description of a worked answer (the text before its last ", so the answer is"), else None."""
    head, separator, _ = answer.rpartition(WORKED_SEPARATOR)
    return head.strip() or None if separator else None


@dataclass(eq=False)
class DescriptionScorer(ModelScorer):
    """Scores worked answers by their description read as a caption of the prompt's image (the noisy channel,
    log p(image | description)) plus `direct_weight` x the answer's own log-likelihood; an answer with no
    description, or cut off before `<eos>`, scores `NOT_A_CAPTION`."""

    direct_weight: float = field(default=DEFAULT_DIRECT_WEIGHT, kw_only=True)

    def __post_init__(self) -> None:
        self.channel = ChannelScorer(self.model, self.vocab, direct_weight=0.0, batch_size=self.batch_size)

    def description_ids(self, candidate: Sequence[int]) -> list[int]:
        """The candidate's description as a complete caption candidate (text + `<eos>`), or [] if it has none."""
        if not candidate or candidate[-1] != self.vocab.eos_id:
            return []
        description = description_of(self.vocab.decode_text(candidate[:-1]))
        return [*self.vocab.encode_text(f" {description}"), self.vocab.eos_id] if description else []

    def __call__(
        self, request: GenerationRequest, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]]
    ) -> list[float]:
        channel = self.channel(request, prompt_ids, [self.description_ids(c) for c in candidates])
        if not self.direct_weight:
            return list(channel)
        # Samples repeat one another often: each distinct described candidate is scored once.
        unique = list(dict.fromkeys(tuple(c) for c, s in zip(candidates, channel, strict=True) if s != NOT_A_CAPTION))
        if not unique:
            return list(channel)
        scores = self.log_likelihoods([prompt_ids] * len(unique), unique).tolist()
        direct = dict(zip(unique, scores, strict=True))
        return [
            s if s == NOT_A_CAPTION else s + self.direct_weight * direct[tuple(c)]
            for c, s in zip(candidates, channel, strict=True)
        ]


@dataclass(frozen=True)
class WorkedAnswer:
    text: str  # "<description>, so the answer is X" (or whatever the model wrote when it gave no description)
    generated_tokens: int  # every id generated for it: all sampled candidates and the answer


# Runs a batch of requests with a candidate scorer: the model's scheduler, plain in evaluations, traced and
# cancellable in serving.
RunRequests = Callable[[Sequence[GenerationRequest], Scorer], list[GenerationResult]]


def plain_runner(checkpoint: ModelBundle) -> RunRequests:
    return lambda requests, scorer: checkpoint.generate(requests, scorer=scorer)


def answer_worked(
    vocab: Vocabulary,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    seeds: Sequence[int],
    run: RunRequests,
    scorer: Scorer,
) -> list[WorkedAnswer]:
    """One worked answer per VQA prompt (ids ending where the answer starts). `params` samples the candidates
    (its `num_candidates`, temperature, budget), `scorer` (a `DescriptionScorer`) picks one; the answer after
    the picked description is then decoded again, greedily. With one candidate: plain decoding with `params`."""
    requests = [
        GenerationRequest(prompt_ids=list(p), target="text", params=params.replace(seed=s))
        for p, s in zip(prompts, seeds, strict=True)
    ]
    two_step = params.num_candidates > 1
    sampled = run(requests, scorer if two_step else no_rerank)
    answers: list[WorkedAnswer] = []
    followups: list[tuple[int, str, list[int]]] = []  # (index, description, prompt for the answer)
    for index, (prompt, result) in enumerate(zip(prompts, sampled, strict=True)):
        text = text_answer(result.token_ids, vocab)
        answers.append(WorkedAnswer(text, sum(len(candidate.token_ids) for candidate in result.candidates)))
        description = description_of(text)
        if two_step and description:
            followups.append((index, description, [*prompt, *vocab.encode_text(f" {description}{WORKED_SEPARATOR}")]))
    if followups:
        greedy = SamplingParams(method="sample", temperature=0.0, max_new_tokens=ANSWER_TOKENS)
        again = run(
            [GenerationRequest(prompt_ids=stem, target="text", params=greedy) for *_, stem in followups], no_rerank
        )
        for (index, description, _), result in zip(followups, again, strict=True):
            tokens = answers[index].generated_tokens + len(result.token_ids)
            answer = text_answer(result.token_ids, vocab)
            answers[index] = WorkedAnswer(f"{description}{WORKED_SEPARATOR} {answer}", tokens)
    return answers
