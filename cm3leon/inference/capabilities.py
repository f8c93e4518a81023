"""What a model directory can run: `DIR/capabilities.json` (`{"tasks": ["text_to_image", ...]}`), written by the
stage that taught the tasks. Without the file a model runs what pretraining teaches (text->image, captioning).

`cm3leon train sft` writes the file into OUT/final: the kinds its init checkpoint declared plus the job kind of
every task its mixture trained (weight > 0). No torch here: the SFT trainer and the engine both read it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from cm3leon.inference.requests import JOB_KINDS

CAPABILITIES_FILE = "capabilities.json"
# What a pretrained (caption <-> image) checkpoint can do without instruction tuning.
PRETRAINED_KINDS: tuple[str, ...] = ("text_to_image", "caption")
# SFT mixture entry (`cm3leon.training.sft_data.MIXTURE_ENTRIES`) -> the job kinds it teaches. Reasoning is a
# visual question answered with its worked steps (`VisualQuestion.explain`), so both land on one kind.
TASK_KINDS: dict[str, tuple[str, ...]] = {
    "pretrain": PRETRAINED_KINDS,
    "t2i": ("text_to_image",),
    "caption": ("caption",),
    "vqa": ("visual_question",),
    "reasoning": ("visual_question",),
    "edit": ("edit",),
    "infill": ("infill",),
    "segmentation": ("segmentation",),
    "seg2img": ("structure_guided",),
    "grounded": ("grounded_generation",),
    "text_render": ("text_rendering",),
}


def declared_kinds(directory: Path) -> tuple[str, ...]:
    path = Path(directory) / CAPABILITIES_FILE
    if not path.exists():
        return PRETRAINED_KINDS
    tasks = json.loads(path.read_text()).get("tasks", [])
    unknown = set(tasks) - set(JOB_KINDS)
    if unknown:
        raise ValueError(f"{path}: unknown tasks {sorted(unknown)}; known: {JOB_KINDS}")
    return tuple(tasks)


def in_kind_order(kinds: Iterable[str]) -> tuple[str, ...]:
    wanted = set(kinds)
    unknown = wanted - set(JOB_KINDS)
    if unknown:
        raise ValueError(f"unknown job kinds {sorted(unknown)}; known: {JOB_KINDS}")
    return tuple(kind for kind in JOB_KINDS if kind in wanted)


def trained_kinds(init_dir: Path, mixture: Mapping[str, float]) -> tuple[str, ...]:
    """The kinds an SFT run's output can run: its init's (instruction tuning keeps pretraining documents in the
    mix, so what the init could do stays) plus those of every mixture entry with a positive weight."""
    unknown = set(mixture) - set(TASK_KINDS)
    if unknown:
        raise ValueError(f"mixture entries {sorted(unknown)} have no job kind; known: {sorted(TASK_KINDS)}")
    taught = [kind for entry, weight in mixture.items() if weight > 0 for kind in TASK_KINDS[entry]]
    return in_kind_order([*declared_kinds(init_dir), *taught])


def write_capabilities(directory: Path, kinds: Iterable[str]) -> Path:
    path = Path(directory) / CAPABILITIES_FILE
    path.write_text(json.dumps({"tasks": list(in_kind_order(kinds))}, indent=2) + "\n")
    return path
