"""Visual question answering and two-step reasoning: greedy answers to held-out questions, exact match.

VQA cycles through the question kinds (each scene gets the next kind it can answer unambiguously), so accuracy
by kind rests on balanced counts; reasoning is judged on the final answer of "... so the answer is N".
"""

from __future__ import annotations

import random

from cm3leon.data.questions import QA, QA_KINDS, qa_pairs, reasoning_final_answer, reasoning_pairs
from cm3leon.data.render import render
from cm3leon.decoding import SamplingParams
from cm3leon.decoding.defaults import params_record
from cm3leon.evaluation.decoder_setup import EvalCheckpoint
from cm3leon.evaluation.image_tasks_eval import TaskResult
from cm3leon.evaluation.task_cases import TaskCases, TaskEvalConfig, formatter, mean
from cm3leon.tasks.decode import generate_text_outputs

# Room beyond the longest true answer, so a slightly longer wrong answer is read whole rather than cut.
ANSWER_SLACK_TOKENS = 8


def _questions(cases: TaskCases, checkpoint: EvalCheckpoint, seed: int, reasoning: bool) -> list[QA]:
    world = checkpoint.world
    rng = random.Random(f"{seed}:{'reasoning' if reasoning else 'vqa'}-questions")
    questions = []
    for index, scene in enumerate(cases.scenes):
        if reasoning:
            questions.append(rng.choice(reasoning_pairs(scene, world, rng)))
            continue
        pairs = qa_pairs(scene, world, rng)
        kinds = [kind for kind in QA_KINDS if any(qa.kind == kind for qa in pairs)]
        kind = kinds[index % len(kinds)]
        questions.append(rng.choice([qa for qa in pairs if qa.kind == kind]))
    return questions


def _params(checkpoint: EvalCheckpoint, questions: list[QA], prompt_lengths: list[int]) -> SamplingParams:
    vocab = checkpoint.vocab
    longest = max(len(vocab.encode_text(f" {qa.answer}")) for qa in questions) + 1  # + <eos>
    context_left = checkpoint.model.config.max_seq_len - max(prompt_lengths) + 1
    budget = min(longest + ANSWER_SLACK_TOKENS, context_left)
    return SamplingParams(method="sample", temperature=0.0, max_new_tokens=budget)


def evaluate_questions(
    checkpoint: EvalCheckpoint, cases: TaskCases, config: TaskEvalConfig, reasoning: bool
) -> TaskResult:
    """VQA (exact answer) or reasoning (exact final answer), with accuracy by question kind for VQA."""
    fmt = formatter(checkpoint)
    questions = _questions(cases, checkpoint, config.seed, reasoning)
    prompts = [fmt.vqa(image, qa, with_answer=False).prompt for image, qa in zip(cases.images, questions, strict=True)]
    params = _params(checkpoint, questions, [len(p) for p in prompts])
    answers = generate_text_outputs(checkpoint, prompts, params, config.batch_size, config.seed)
    if reasoning:
        hits = [
            reasoning_final_answer(answer) == reasoning_final_answer(qa.answer)
            for answer, qa in zip(answers, questions, strict=True)
        ]
    else:
        hits = [answer == qa.answer for answer, qa in zip(answers, questions, strict=True)]
    by_kind: dict[str, list[bool]] = {}
    for qa, hit in zip(questions, hits, strict=True):
        by_kind.setdefault(qa.kind, []).append(hit)
    metrics: dict[str, object] = {"n": len(hits), "accuracy": mean(hits), "decoding": params_record(params)}
    if not reasoning:
        metrics["by_kind"] = {kind: mean(values) for kind, values in sorted(by_kind.items())}
    grid = []
    for i in range(min(config.grid_rows, len(hits))):
        verdict = "right" if hits[i] else "WRONG"
        label = f"Q: {questions[i].question}\nA: {answers[i] or '(empty)'}\ntruth: {questions[i].answer} ({verdict})"
        grid.append([(render(cases.scenes[i], checkpoint.world).image, label)])
    return TaskResult(metrics, grid)

