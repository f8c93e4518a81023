"""What the rule-comparison scripts share (`edit_check_rules.py`, `grounded_rerank_rules.py`,
`text_render_check_rules.py`): their common options, the retriever-sized pixels, choosing by a score, and the
printed table of each rule's accuracy on the same samples (optionally by group)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from cm3leon.bundle import ModelBundle
from cm3leon.retrieval.rerank import RetrieverScorer
from cm3leon.retrieval.retriever import Retriever


class Candidates(Protocol):
    right: list[bool]  # per readable candidate: does the oracle read what was asked for


Item = TypeVar("Item", bound=Candidates)
Rule = Callable[[Any], int]


def parser(description: str, seed: int) -> argparse.ArgumentParser:
    """The options every comparison takes; a script adds its own."""
    options = argparse.ArgumentParser(description=description)
    options.add_argument("--checkpoint", type=Path, default=Path("models/shapes"))
    options.add_argument("--retriever", type=Path, default=Path("models/shapes/retriever"))
    options.add_argument("--seed", type=int, default=seed)
    options.add_argument("--n", type=int, default=200)
    options.add_argument("--threads", type=int, default=2)
    options.add_argument("--json", type=Path, help="also write the per-candidate features here")
    return options


def load(args: argparse.Namespace) -> tuple[ModelBundle, Retriever]:
    torch.set_num_threads(args.threads)
    return ModelBundle.load(args.checkpoint, require_vq=True), Retriever.from_pretrained(args.retriever)


def retriever_sized(checkpoint: ModelBundle, retriever: Retriever, pixels: np.ndarray) -> np.ndarray:
    """Decoded images at the retriever's resolution, as `RetrieverScorer` resizes them when it reranks."""
    scorer = RetrieverScorer(retriever, checkpoint.vocab, checkpoint.image_tokenizer, fallback=lambda *_: [])
    return scorer._retriever_sized(np.asarray(pixels))


def best_by(score: Callable[[Any, int], float]) -> Rule:
    """The candidate with the highest `score` (the first on ties)."""
    return lambda item: max(range(len(item.right)), key=lambda i: score(item, i))


def first_agreeing_else(score: Callable[[Any, int], float]) -> Rule:
    """The caption check's shape: the first candidate the model reads back as what was asked for (`agrees`), else
    the best by `score`."""
    def choose(item: Any) -> int:
        agreeing = [i for i, agrees in enumerate(item.agrees) if agrees]
        return agreeing[0] if agreeing else max(range(len(item.right)), key=lambda i: score(item, i))
    return choose


def report(
    items: Sequence[Item], rules: dict[str, Rule], json_path: Path | None,
    group: Callable[[Item], str] | None = None,
) -> None:
    """Writes the features (when asked), then prints the oracle's ceiling and each rule's accuracy."""
    if json_path:
        json_path.write_text(json.dumps([asdict(item) for item in items]))  # type: ignore[call-overload]
    print(f"some candidate right (the oracle choosing): {np.mean([any(item.right) for item in items]):.3f}")
    for name, choose in rules.items():
        hits = [bool(item.right) and item.right[choose(item)] for item in items]
        line = f"{name}: {np.mean(hits):.3f}"
        if group is not None:
            labels = [group(item) for item in items]
            by_group = {g: np.mean([h for h, label in zip(hits, labels, strict=True) if label == g])
                        for g in sorted(set(labels))}
            line += f" ({', '.join(f'{g} {accuracy:.2f}' for g, accuracy in by_group.items())})"
        print(line)
