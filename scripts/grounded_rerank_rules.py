"""Which rule best picks a right sample among grounded generation's candidates? (the model card's grounded comparison)

Samples each validation scene's grounded candidates once, with the checkpoint's grounded defaults and the
evaluation's seeds (the samples `cm3leon eval all --split val --tasks grounded` sees), and prints every rule's
exact-scene accuracy on the same samples. The rule in use scores the retriever's similarity with the prompt's words
(its boxes left out, so positions are not checked); the scene a grounded request asks for is known whole (objects,
sizes, cells from the boxes, background), so its canonical caption, which names positions, can be scored instead,
by the retriever and by the model's reading (mean per-token log-probability of that caption given the sample).

    .venv/bin/python scripts/grounded_rerank_rules.py --checkpoint models/shapes --seed 0
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cm3leon.data.language import detailed_caption
from cm3leon.data.oracle import Oracle
from cm3leon.data.render import object_box
from cm3leon.data.tasks import GroundedSpec
from cm3leon.data.tasks import quantise_box as quantise
from cm3leon.decoding.defaults import GROUNDED, load_decoding_defaults
from cm3leon.evaluation.decoder_setup import EvalCheckpoint, load_eval_checkpoint
from cm3leon.evaluation.task_cases import TaskEvalConfig, build_cases, formatter
from cm3leon.retrieval.rerank import RetrieverScorer, prompt_caption
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tasks.caption_check import expected_caption_log_probs
from cm3leon.tasks.decode import decode_codes, sample_image_outputs


@dataclass
class SceneCandidates:
    objects: int
    right: list[bool]
    words_similarity: list[float]  # the retriever against the prompt's words (the rule in use)
    caption_similarity: list[float]  # the retriever against the asked-for scene's canonical caption
    reading: list[float]  # the model's mean per-token log-probability of that caption


def features(checkpoint: EvalCheckpoint, retriever: Retriever, seed: int, n: int) -> list[SceneCandidates]:
    config = TaskEvalConfig(n=n, seed=seed, split="val", compositional=False)
    cases = build_cases(checkpoint, config)
    fmt, world, vocab, oracle = formatter(checkpoint), checkpoint.world, checkpoint.vocab, Oracle(checkpoint.world)
    params = load_decoding_defaults(checkpoint.directory)[GROUNDED]
    specs = [GroundedSpec(s, tuple(quantise(object_box(o, world), world) for o in s.objects)) for s in cases.scenes]
    prompts = [fmt.grounded(spec, None).prompt for spec in specs]
    samples = sample_image_outputs(checkpoint, prompts, params, config.batch_size, seed)
    resize = RetrieverScorer(retriever, vocab, checkpoint.image_tokenizer, lambda *_: [])._retriever_sized
    found: list[SceneCandidates] = []
    for scene, prompt, candidates in zip(cases.scenes, prompts, samples.candidates, strict=True):
        codes = [c for c in candidates if c is not None]
        pixels = decode_codes(checkpoint, codes)
        sized = resize(np.asarray(pixels))
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


def best_by(score: Callable[[SceneCandidates, int], float]) -> Callable[[SceneCandidates], int]:
    return lambda scene: max(range(len(scene.right)), key=lambda i: score(scene, i))


RULES: dict[str, Callable[[SceneCandidates], int]] = {
    "first sample": lambda scene: 0,
    "retriever against the prompt's words (in use)": best_by(lambda s, i: s.words_similarity[i]),
    "retriever against the scene's caption": best_by(lambda s, i: s.caption_similarity[i]),
    "reading of the scene's caption": best_by(lambda s, i: s.reading[i]),
    **{f"reading + {w} x retriever against the caption": best_by(
        lambda s, i, w=w: s.reading[i] + w * s.caption_similarity[i]) for w in (1.0, 5.0, 20.0)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("models/shapes"))
    parser.add_argument("--retriever", type=Path, default=Path("models/shapes/retriever"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the per-candidate features here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint, retriever = load_eval_checkpoint(args.checkpoint), Retriever.from_pretrained(args.retriever)
    scenes = features(checkpoint, retriever, args.seed, args.n)
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in scenes]))
    print(f"some candidate right (the oracle choosing): {np.mean([any(s.right) for s in scenes]):.3f}")
    for name, choose in RULES.items():
        hits = [bool(s.right) and s.right[choose(s)] for s in scenes]
        by_objects = {k: np.mean([h for h, s in zip(hits, scenes, strict=True) if s.objects == k])
                      for k in sorted({s.objects for s in scenes})}
        print(f"{name}: {np.mean(hits):.3f} ({', '.join(f'{k} objects {v:.2f}' for k, v in by_objects.items())})")


if __name__ == "__main__":
    main()
