"""Which rule best picks a right sample among grounded generation's candidates? (docs/model-history.md, grounded)

Samples each validation scene's grounded candidates once, with the checkpoint's grounded defaults and the
evaluation's seeds (the samples `cm3leon eval all --split val --tasks grounded` sees), and prints every rule's
exact-scene accuracy on the same samples. The rule in use scores the retriever's similarity with the prompt's words
(its boxes left out, so positions are not checked); the scene a grounded request asks for is known whole (objects,
sizes, cells from the boxes, background), so its canonical caption, which names positions, can be scored instead,
by the retriever and by the model's reading (mean per-token log-probability of that caption given the sample).

    python experiments/rules/grounded_rerank_rules.py --checkpoint models/shapes --seed 0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import rule_comparison
from rule_comparison import best_by

from cm3leon.bundle import ModelBundle
from cm3leon.data.language import detailed_caption
from cm3leon.data.oracle import Oracle
from cm3leon.data.tasks import grounded_spec_of_scene
from cm3leon.decoding.defaults import GROUNDED_GENERATION, load_decoding_defaults
from cm3leon.evaluation.task_cases import TaskEvalConfig, build_cases, formatter
from cm3leon.policies.shapes.caption_check import expected_caption_log_probs
from cm3leon.retrieval.rerank import prompt_caption
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tasks.decode import decode_codes, sample_image_outputs


@dataclass
class SceneCandidates:
    objects: int
    right: list[bool]
    words_similarity: list[float]  # the retriever against the prompt's words (the rule in use)
    caption_similarity: list[float]  # the retriever against the asked-for scene's canonical caption
    reading: list[float]  # the model's mean per-token log-probability of that caption


def features(checkpoint: ModelBundle, retriever: Retriever, seed: int, n: int) -> list[SceneCandidates]:
    config = TaskEvalConfig(n=n, seed=seed, split="val", compositional=False)
    cases = build_cases(checkpoint, config)
    fmt, world, vocab, oracle = formatter(checkpoint), checkpoint.world, checkpoint.vocab, Oracle(checkpoint.world)
    params = load_decoding_defaults(checkpoint.directory)[GROUNDED_GENERATION]
    specs = [grounded_spec_of_scene(s, world) for s in cases.scenes]
    prompts = [fmt.grounded(spec, None).prompt for spec in specs]
    samples = sample_image_outputs(checkpoint, prompts, params, config.batch_size, seed)
    found: list[SceneCandidates] = []
    for scene, prompt, candidates in zip(cases.scenes, prompts, samples.candidates, strict=True):
        codes = [c for c in candidates if c is not None]
        pixels = decode_codes(checkpoint, codes)
        sized = rule_comparison.retriever_sized(checkpoint, retriever, pixels)
        words = prompt_caption(vocab, prompt) or ""
        caption = detailed_caption(scene, world)
        found.append(SceneCandidates(
            objects=len(scene.objects),
            right=[oracle.parse(p, expect_text=False).key() == scene.key() for p in pixels],
            words_similarity=retriever.similarity([words], sized)[0].tolist(),
            caption_similarity=retriever.similarity([caption], sized)[0].tolist(),
            reading=expected_caption_log_probs(checkpoint, fmt, codes, scene),
        ))
    return found


RULES: dict[str, Callable[[SceneCandidates], int]] = {
    "first sample": lambda scene: 0,
    "retriever against the prompt's words (in use)": best_by(lambda s, i: s.words_similarity[i]),
    "retriever against the scene's caption": best_by(lambda s, i: s.caption_similarity[i]),
    "reading of the scene's caption": best_by(lambda s, i: s.reading[i]),
    **{f"reading + {w} x retriever against the caption": best_by(
        lambda s, i, w=w: s.reading[i] + w * s.caption_similarity[i]) for w in (1.0, 5.0, 20.0)},
}


def main() -> None:
    args = rule_comparison.parser(__doc__.splitlines()[0], seed=0).parse_args()
    scenes = features(*rule_comparison.load(args), args.seed, args.n)
    rule_comparison.report(scenes, RULES, args.json, group=lambda scene: f"{scene.objects} objects")


if __name__ == "__main__":
    main()
