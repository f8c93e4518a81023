"""Serving defaults: the sampling parameters a checkpoint is decoded with unless a request says otherwise.

`cm3leon eval sweep --write-defaults` measures decoding settings on the validation split and writes the best
ones to `DIR/decoding_defaults.json`; every evaluation (and the server) reads them back with
`load_decoding_defaults`, so the sweep's choice becomes what users get. Without the file the `SamplingParams`
presets apply. The file holds only the fields that differ from the preset, plus the sweep's provenance:

    {"text_to_image": {"temperature": 0.7, "guidance_scale": 5.0}, "caption": {}, "edit": {...},
     "structure_guided": {...}, "provenance": {...}}

Each section is a job kind's name (`cm3leon.kinds`), plus `edit_redraw` for the shapes policy's redraws; files
written before the kinds had one name each load through `LEGACY_KEYS`.

A file written before a task had defaults simply lacks its key: that task keeps its preset (grounded generation
and text rendering take text->image's settings instead, `INHERITS`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cm3leon.decoding.params import SamplingParams

DEFAULTS_FILE = "decoding_defaults.json"
PROVENANCE_KEY = "provenance"
TEXT_TO_IMAGE = "text_to_image"
CAPTION = "caption"
EDIT = "edit"
STRUCTURE_GUIDED = "structure_guided"  # segmentation map + caption -> image
GROUNDED_GENERATION = "grounded_generation"  # objects with boxes -> image
# Segmentation maps: greedy; with num_candidates > 1, a map that disagrees with the image's caption is redrawn from
# that many samples at `temperature` (cm3leon.policies.shapes.segmentation).
SEGMENTATION = "segmentation"
# Text rendering decodes as text->image does; with num_candidates > 1 the first sample the model reads back as the
# asked-for word is kept (cm3leon.policies.shapes.caption_check).
TEXT_RENDERING = "text_rendering"
# Edits redrawn from their expected scene (grounded generation of what the instruction makes of the source's
# caption), pooled with the edit's own samples when it draws several; num_candidates is the redraws per edit
# (cm3leon.policies.shapes.edit_check).
EDIT_REDRAW = "edit_redraw"
TASKS: tuple[str, ...] = (
    TEXT_TO_IMAGE, CAPTION, EDIT, STRUCTURE_GUIDED, GROUNDED_GENERATION, SEGMENTATION, TEXT_RENDERING, EDIT_REDRAW,
)
# Which SamplingParams preset each task falls back to.
TASK_PRESETS: dict[str, str] = {
    TEXT_TO_IMAGE: "text_to_image", CAPTION: "greedy_text", EDIT: "edit", STRUCTURE_GUIDED: "structure_guided",
    GROUNDED_GENERATION: "text_to_image", SEGMENTATION: "segmentation", TEXT_RENDERING: "text_to_image",
    EDIT_REDRAW: "text_to_image",
}
# Tasks that decode as another task does unless the file says otherwise: grounded generation is text->image with
# boxes in the prompt, text rendering text->image of a word and an edit's redraw a grounded prompt, so a file
# written before they had their own entry gives them their parent's settings (a parent before its children here).
INHERITS: dict[str, str] = {
    GROUNDED_GENERATION: TEXT_TO_IMAGE, TEXT_RENDERING: TEXT_TO_IMAGE, EDIT_REDRAW: GROUNDED_GENERATION,
}
# Section names of files written before every kind had one name.
LEGACY_KEYS: dict[str, str] = {
    "structure": STRUCTURE_GUIDED, "grounded": GROUNDED_GENERATION, "text_render": TEXT_RENDERING,
}
# A seed is per request, never a default: a fixed default seed would make every request draw the same sample.
NOT_A_DEFAULT = frozenset({"seed"})


def preset_defaults() -> dict[str, SamplingParams]:
    """The per-task defaults before any sweep: the SamplingParams presets."""
    return {task: SamplingParams.preset(preset) for task, preset in TASK_PRESETS.items()}


def _overrides(params: SamplingParams, base: SamplingParams) -> dict[str, Any]:
    """The fields of `params` that differ from `base` (seed excluded)."""
    return {
        field.name: getattr(params, field.name)
        for field in dataclasses.fields(params)
        if field.name not in NOT_A_DEFAULT and getattr(params, field.name) != getattr(base, field.name)
    }


def save_decoding_defaults(
    checkpoint_dir: Path | str,
    defaults: Mapping[str, SamplingParams],
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write `DIR/decoding_defaults.json` (tasks not given keep their preset); returns the path."""
    unknown = set(defaults) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown decoding tasks {sorted(unknown)}; tasks are {TASKS}")
    presets = preset_defaults()

    def chosen(task: str) -> SamplingParams:
        """The given params; for a task not given, what its parent (INHERITS) gets, else its preset."""
        if task in defaults:
            return defaults[task]
        parent = INHERITS.get(task)
        return chosen(parent) if parent is not None else presets[task]

    record: dict[str, Any] = {task: _overrides(chosen(task), presets[task]) for task in TASKS}
    record[PROVENANCE_KEY] = dict(provenance or {})
    path = Path(checkpoint_dir) / DEFAULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def load_decoding_defaults(checkpoint_dir: Path | str) -> dict[str, SamplingParams]:
    """Per task (TASKS), the checkpoint's default SamplingParams: the sweep's choice from
    `DIR/decoding_defaults.json` laid over the preset, or the preset alone when the file is absent."""
    defaults = preset_defaults()
    path = Path(checkpoint_dir) / DEFAULTS_FILE
    if not path.exists():
        return defaults
    record = {LEGACY_KEYS.get(key, key): value for key, value in json.loads(path.read_text()).items()}
    known_fields = {field.name for field in dataclasses.fields(SamplingParams)} - NOT_A_DEFAULT
    for task in TASKS:
        overrides = record.get(task, {})
        unknown = set(overrides) - known_fields
        if unknown:
            raise ValueError(f"{path}: unknown sampling fields for {task}: {sorted(unknown)}")
        defaults[task] = defaults[task].replace(**overrides)  # SamplingParams validates the values
    for task, parent in INHERITS.items():
        if task not in record:
            defaults[task] = defaults[parent]
    return defaults


def params_record(params: SamplingParams) -> dict[str, Any]:
    """A SamplingParams as a JSON-ready dict for reports (which settings produced a number); the per-request seed
    and unset (None) fields are left out."""
    return {
        name: value
        for name, value in dataclasses.asdict(params).items()
        if name not in NOT_A_DEFAULT and value is not None
    }
