"""Which rule best picks a right sample among an edit's candidates? (docs/model-history.md's editing-check comparison)

Samples each validation edit's candidates once, with the checkpoint's editing defaults and the evaluation's seeds
(so the direct samples are the ones `cm3leon eval all --split val --tasks edit` sees at that seed), and its redraws
(grounded prompts of the expected scene, the checkpoint's edit_redraw defaults; `--redraws 0`: none), computes per
candidate what each rule needs, and prints every rule's exact-scene accuracy on the same samples: a paired
comparison. `--greedy-plan` reads the source with one greedy caption (the plan before session 19) instead of the
checkpoint's caption defaults.

    python experiments/rules/edit_check_rules.py --checkpoint models/shapes --seed 1 --json /tmp/edit_features.json
    python experiments/rules/edit_check_rules.py --seed 1 --candidates 8 --redraws 16   # the counts comparison

"direct samples and redraws: retriever (shipped)" is the rule serving and `eval all` use where a retriever is loaded
(`policies.shapes.edit_check`); the "first D direct samples and first R redraws" rules replay smaller draws of the same
candidates. This script also captions every candidate greedily (for the caption-check rules), which takes longer than
the evaluation (~13 minutes for 200 edits of 8 + 16 candidates on 2 threads); on seed 1 it reproduces the model
card's session-19 rows and `cm3leon eval all --split val --tasks edit`'s shipped number (0.850).

Per candidate: whether the oracle reads the target scene (`right`), whether the model's greedy caption is the
expected scene (the source's greedy caption with the instruction applied: what serving can know, `agrees`), the
retriever's text-image similarity of the expected scene's caption with the candidate, the retriever's
image-image similarity of the candidate with the source (how much of the source it keeps), and the model's reading
of the candidate (mean per-token log-probability of the expected caption given it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import rule_comparison
from rule_comparison import best_by, first_agreeing_else

from cm3leon.bundle import ModelBundle
from cm3leon.data.language import detailed_caption, parse_caption
from cm3leon.data.oracle import Oracle
from cm3leon.decoding.defaults import CAPTION, EDIT, EDIT_REDRAW, load_decoding_defaults
from cm3leon.evaluation.task_cases import TaskEvalConfig, build_cases, formatter
from cm3leon.policies.shapes.caption_check import CHECK_CAPTION_PARAMS, expected_caption_log_probs
from cm3leon.policies.shapes.edit_check import expected_edits, redraw_prompt
from cm3leon.retrieval.retriever import Retriever
from cm3leon.tasks.decode import caption_images, decode_codes, sample_image_outputs
from cm3leon.tokenizers.vocab import ImageCodes


@dataclass
class EditCandidates:
    """One edit's readable candidates (unreadable ones, with no whole image block, are never right)."""

    kind: str
    expected_known: bool  # the source's caption parsed and the instruction named a unique object of it
    plan_right: bool  # the expected scene is the true target
    redraw: list[bool]  # per candidate: a redraw of the expected scene (after the direct samples)
    right: list[bool]
    agrees: list[bool]
    retriever_similarity: list[float]  # to the expected scene's caption (0 where it is unknown)
    source_similarity: list[float]  # image-image, with the source
    reading: list[float]  # the model's mean per-token log-probability of the expected caption (0 where unknown)


def features(
    checkpoint: ModelBundle, retriever: Retriever, seed: int, n: int, batch_size: int,
    samples_per_edit: int | None, redraws_per_edit: int | None, greedy_plan: bool,
) -> list[EditCandidates]:
    config = TaskEvalConfig(n=n, seed=seed, split="val", compositional=False)
    cases = build_cases(checkpoint, config)
    fmt, world, oracle = formatter(checkpoint), checkpoint.world, Oracle(checkpoint.world)
    defaults = load_decoding_defaults(checkpoint.directory)
    params = defaults[EDIT].replace(num_candidates=samples_per_edit or defaults[EDIT].num_candidates)
    prompts = [fmt.edit(e, src, None).prompt for e, src in zip(cases.edits, cases.edit_sources, strict=True)]
    plan_caption = CHECK_CAPTION_PARAMS if greedy_plan else defaults[CAPTION]
    instructions = [e.instruction for e in cases.edits]
    expected = expected_edits(checkpoint, cases.edit_sources, instructions, plan_caption, batch_size)
    samples = sample_image_outputs(checkpoint, prompts, params, batch_size, seed)
    redraws: list[list[ImageCodes | None]] = [[] for _ in cases.edits]
    if redraws_per_edit != 0:
        redraw_params = defaults[EDIT_REDRAW]
        redraw_params = redraw_params.replace(num_candidates=redraws_per_edit or redraw_params.num_candidates)
        planned = [i for i, scene in enumerate(expected) if scene is not None]
        redraw_prompts = [redraw_prompt(fmt, expected[i]) for i in planned]  # type: ignore[arg-type]
        drawn = sample_image_outputs(checkpoint, redraw_prompts, redraw_params, batch_size, seed).candidates
        for i, candidates in zip(planned, drawn, strict=True):
            redraws[i] = candidates
    sources = rule_comparison.retriever_sized(checkpoint, retriever, decode_codes(checkpoint, cases.edit_sources))
    source_embeddings = retriever.embed_images(sources)
    found: list[EditCandidates] = []
    per_edit = zip(cases.edits, expected, samples.candidates, redraws, source_embeddings, strict=True)
    for edit, want, direct, redrawn, source in per_edit:
        plan_right = want is not None and want.key() == edit.target.key()
        pooled = [(c, False) for c in direct if c is not None] + [(c, True) for c in redrawn if c is not None]
        codes = [c for c, _ in pooled]
        if not codes:
            found.append(EditCandidates(edit.kind, want is not None, plan_right, [], [], [], [], [], []))
            continue
        pixels = decode_codes(checkpoint, codes)
        captions, _ = caption_images(checkpoint, codes, CHECK_CAPTION_PARAMS, len(codes), 0)
        parsed = [parse_caption(c, world) for c in captions]
        sized = rule_comparison.retriever_sized(checkpoint, retriever, pixels)
        text_similarity = (
            retriever.similarity([detailed_caption(want, world)], sized)[0].tolist() if want else [0.0] * len(codes)
        )
        found.append(EditCandidates(
            kind=edit.kind,
            expected_known=want is not None,
            plan_right=plan_right,
            redraw=[is_redraw for _, is_redraw in pooled],
            right=[oracle.parse(p, expect_text=False).key() == edit.target.key() for p in pixels],
            agrees=[want is not None and s is not None and s.key() == want.key() for s in parsed],
            retriever_similarity=text_similarity,
            source_similarity=(retriever.embed_images(sized) @ source).tolist(),
            reading=expected_caption_log_probs(checkpoint, fmt, codes, want) if want else [0.0] * len(codes),
        ))
    return found


Score = Callable[[EditCandidates, int], float]


def retrieved(edit: EditCandidates, i: int) -> float:
    return edit.retriever_similarity[i]


def kept(edit: EditCandidates, i: int) -> float:
    return edit.source_similarity[i]


def on_direct(rule: Callable[[EditCandidates], int]) -> Callable[[EditCandidates], int]:
    """`rule` among the direct samples alone (the redraws left out; an edit without a readable direct sample keeps
    its first candidate, as unreadable as the rest for the oracle's purposes)."""
    def choose(edit: EditCandidates) -> int:
        keep = [i for i, is_redraw in enumerate(edit.redraw) if not is_redraw]
        if not keep:
            return 0
        view = EditCandidates(**{
            name: [value[i] for i in keep] if isinstance(value, list) else value for name, value in vars(edit).items()
        })
        return keep[rule(view)]
    return choose


def redraws_first(score: Score) -> Score:
    """`score` among the redraws; a direct sample wins only where the edit has no redraw."""
    return lambda edit, i: score(edit, i) + (1e9 if edit.redraw[i] else 0.0)


def first_of_pool(direct: int, redraws: int) -> Callable[[EditCandidates], int]:
    """The retriever among the first `direct` direct samples and the first `redraws` redraws (what a smaller draw
    of either would have given: docs/model-history.md's counts comparison)."""
    def choose(edit: EditCandidates) -> int:
        # Each candidate's place among its own kind (direct samples first, then redraws, each in sampling order).
        order = [edit.redraw[:i].count(is_redraw) for i, is_redraw in enumerate(edit.redraw)]
        allowed = [i for i, (is_redraw, k) in enumerate(zip(edit.redraw, order, strict=True))
                   if k < (redraws if is_redraw else direct)]
        return max(allowed, key=lambda i: retrieved(edit, i)) if allowed else 0
    return choose


DIRECT_RULES: dict[str, Callable[[EditCandidates], int]] = {
    "first sample": lambda edit: 0,
    "exact check (first agreeing, else first)": first_agreeing_else(lambda edit, i: -i),
    "retriever similarity to the expected caption": best_by(retrieved),
    "first agreeing, else retriever": first_agreeing_else(retrieved),
    "retriever, agreeing samples first": best_by(lambda edit, i: retrieved(edit, i) + 1e9 * edit.agrees[i]),
    **{f"retriever + {w} x source similarity, agreeing first": best_by(
        lambda edit, i, w=w: retrieved(edit, i) + w * kept(edit, i) + 1e9 * edit.agrees[i])
       for w in (0.1, 0.3, 1.0)},
    "reading of the expected caption": best_by(lambda edit, i: edit.reading[i]),
    **{f"reading + {w} x retriever": best_by(lambda edit, i, w=w: edit.reading[i] + w * retrieved(edit, i))
       for w in (1.0, 5.0, 20.0)},
}
RULES: dict[str, Callable[[EditCandidates], int]] = {
    **{f"direct samples: {name}": on_direct(rule) for name, rule in DIRECT_RULES.items()},
    "redraws (direct where none): retriever": best_by(redraws_first(retrieved)),
    "direct samples and redraws: retriever (shipped)": best_by(retrieved),
    "direct samples and redraws: caption check (first agreeing, else first)": first_agreeing_else(lambda e, i: -i),
    "direct samples and redraws: reading + 5 x retriever": best_by(
        lambda edit, i: edit.reading[i] + 5.0 * retrieved(edit, i)),
    **{f"first {d} direct samples and first {r} redraws: retriever": first_of_pool(d, r)
       for r in (8, 16) for d in (0, 1, 2, 4, 8)},
}


def main() -> None:
    options = rule_comparison.parser(__doc__.splitlines()[0], seed=1)
    options.add_argument("--batch-size", type=int, default=TaskEvalConfig().batch_size)
    options.add_argument("--candidates", type=int, help="direct samples per edit (default: the checkpoint's)")
    options.add_argument("--redraws", type=int, help="redraws per planned edit (default: the checkpoint's; 0: none)")
    options.add_argument("--greedy-plan", action="store_true", help="plan from one greedy caption of the source")
    args = options.parse_args()
    checkpoint, retriever = rule_comparison.load(args)
    edits = features(
        checkpoint, retriever, args.seed, args.n, args.batch_size, args.candidates, args.redraws, args.greedy_plan
    )
    print(f"expected scene known: {np.mean([e.expected_known for e in edits]):.3f}, "
          f"the true target: {np.mean([e.plan_right for e in edits]):.3f}")
    direct_right = [any(r for r, is_redraw in zip(e.right, e.redraw, strict=True) if not is_redraw) for e in edits]
    print(f"some direct sample right: {np.mean(direct_right):.3f}")
    rule_comparison.report(edits, RULES, args.json, group=lambda edit: edit.kind)


if __name__ == "__main__":
    main()
