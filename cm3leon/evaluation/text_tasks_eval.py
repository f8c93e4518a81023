"""Visual question answering and two-step reasoning: greedy answers to held-out questions, exact match.

VQA balances the question kinds within each object count (a scene gets, among the kinds it can answer
unambiguously, the one its object count has been asked least), so accuracy by kind rests on balanced counts and
is not mixed up with the scenes' object counts (which `eval_scenes` cycles too). Reasoning is judged on the final
answer of "... so the answer is N"; so is VQA when the model works its answers out (`worked_answer`), else the
whole answer.
A model tuned to work its answers out is decoded in two steps (`cm3leon.tasks.worked`): its description chosen
among samples as captions are (the checkpoint's caption defaults), then the answer greedily.
"""

from __future__ import annotations

import random
from collections import Counter

from cm3leon.bundle import ModelBundle
from cm3leon.data.language import detailed_caption
from cm3leon.data.questions import (
    QA,
    QA_KINDS,
    REASONING_KIND,
    final_answer,
    qa_pairs,
    reasoning_pairs,
    worked_answer,
)
from cm3leon.data.render import render
from cm3leon.decoding import SamplingParams
from cm3leon.decoding.defaults import CAPTION, load_decoding_defaults, params_record
from cm3leon.evaluation.image_tasks_eval import TaskResult
from cm3leon.evaluation.task_cases import TaskCases, TaskEvalConfig, formatter, mean
from cm3leon.tasks.decode import generate_text_outputs, request_seed
from cm3leon.tasks.worked import DescriptionScorer, answer_worked, description_of, plain_runner

# Room beyond the longest true answer, so a slightly longer wrong answer is read whole rather than cut.
ANSWER_SLACK_TOKENS = 8


def _questions(cases: TaskCases, checkpoint: ModelBundle, seed: int, reasoning: bool) -> list[QA]:
    world = checkpoint.world
    rng = random.Random(f"{seed}:{'reasoning' if reasoning else 'vqa'}-questions")
    questions = []
    asked = Counter[tuple[int, str]]()  # questions so far per (object count, kind)
    for scene in cases.scenes:
        if reasoning:
            questions.append(rng.choice(reasoning_pairs(scene, world, rng)))
            continue
        pairs = qa_pairs(scene, world, rng)
        kinds = [kind for kind in QA_KINDS if any(qa.kind == kind for qa in pairs)]
        # The kind this object count has been asked least (ties: QA_KINDS order) among those the scene can answer.
        kind = min(kinds, key=lambda k: asked[(len(scene.objects), k)])
        asked[(len(scene.objects), kind)] += 1
        questions.append(rng.choice([qa for qa in pairs if qa.kind == kind]))
    return questions


def _vqa_hit(answer: str, truth: str) -> bool:
    """A worked answer is judged on its final answer, a direct one whole."""
    final = final_answer(answer)
    return (answer if final is None else final) == truth


def _worked_metrics(checkpoint: ModelBundle, cases: TaskCases, answers: list[str]) -> dict[str, float]:
    """How often the model worked its answer out, and how often its description was the scene's canonical one:
    separates "saw the scene wrong" from "read its own description wrong"."""
    worked = [(answer, scene) for answer, scene in zip(answers, cases.scenes, strict=True) if final_answer(answer)]
    described = [description_of(answer) == detailed_caption(scene, checkpoint.world) for answer, scene in worked]
    return {"worked_fraction": len(worked) / len(answers), "description_exact": mean(described) if worked else 0.0}


def _worked_answers(
    checkpoint: ModelBundle, prompts: list[list[int]], params: SamplingParams, config: TaskEvalConfig
) -> list[str]:
    run, scorer = (
        plain_runner(checkpoint),
        DescriptionScorer(checkpoint.model, checkpoint.vocab),
    )
    answers: list[str] = []
    for first in range(0, len(prompts), config.batch_size):
        batch = prompts[first : first + config.batch_size]
        seeds = [request_seed(config.seed, i) for i in range(first, first + len(batch))]
        answers += [a.text for a in answer_worked(checkpoint.vocab, batch, params, seeds, run, scorer)]
    return answers


def _params(
    checkpoint: ModelBundle, cases: TaskCases, questions: list[QA], prompt_lengths: list[int]
) -> SamplingParams:
    """Greedy, with room for the longest true answer in the longest form the model may give (worked out)."""
    vocab, world = checkpoint.vocab, checkpoint.world
    answers = [
        qa.answer if qa.kind == REASONING_KIND else worked_answer(qa, detailed_caption(scene, world)).answer
        for qa, scene in zip(questions, cases.scenes, strict=True)
    ]
    longest = max(len(vocab.encode_text(f" {answer}")) for answer in answers) + 1  # + <eos>
    context_left = checkpoint.model.config.max_seq_len - max(prompt_lengths) + 1
    budget = min(longest + ANSWER_SLACK_TOKENS, context_left)
    return SamplingParams(method="sample", temperature=0.0, max_new_tokens=budget)


def evaluate_questions(
    checkpoint: ModelBundle, cases: TaskCases, config: TaskEvalConfig, reasoning: bool
) -> TaskResult:
    """VQA (exact answer) or reasoning (exact final answer), with accuracy by question kind for VQA."""
    fmt = formatter(checkpoint)
    questions = _questions(cases, checkpoint, config.seed, reasoning)
    prompts = [fmt.vqa(image, qa, with_answer=False).prompt for image, qa in zip(cases.images, questions, strict=True)]
    params = _params(checkpoint, cases, questions, [len(p) for p in prompts])
    two_step = not reasoning and checkpoint.answers_worked
    if two_step:
        # Description candidates sampled and reranked as captions are (the checkpoint's caption defaults).
        params = load_decoding_defaults(checkpoint.directory)[CAPTION].replace(max_new_tokens=params.max_new_tokens)
        answers = _worked_answers(checkpoint, prompts, params, config)
    else:
        answers = generate_text_outputs(checkpoint, prompts, params, config.batch_size, config.seed)
    if reasoning:
        hits = [final_answer(answer) == final_answer(qa.answer) for answer, qa in zip(answers, questions, strict=True)]
    else:
        hits = [_vqa_hit(answer, qa.answer) for answer, qa in zip(answers, questions, strict=True)]
    by_kind: dict[str, list[bool]] = {}
    by_objects: dict[int, list[bool]] = {}
    for qa, scene, hit in zip(questions, cases.scenes, hits, strict=True):
        by_kind.setdefault(qa.kind, []).append(hit)
        by_objects.setdefault(len(scene.objects), []).append(hit)
    decoding = {**params_record(params), "two_step": True} if two_step else params_record(params)
    metrics: dict[str, object] = {"n": len(hits), "accuracy": mean(hits), "decoding": decoding}
    if not reasoning:
        metrics["by_kind"] = {kind: mean(values) for kind, values in sorted(by_kind.items())}
        metrics["by_objects"] = {str(n): mean(values) for n, values in sorted(by_objects.items())}
        metrics.update(_worked_metrics(checkpoint, cases, answers))
    grid = []
    for i in range(min(config.grid_rows, len(hits))):
        verdict = "right" if hits[i] else "WRONG"
        label = f"Q: {questions[i].question}\nA: {answers[i] or '(empty)'}\ntruth: {questions[i].answer} ({verdict})"
        grid.append([(render(cases.scenes[i], checkpoint.world).image, label)])
    return TaskResult(metrics, grid)
