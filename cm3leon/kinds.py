"""The table of job kinds: every kind declared once, and what a model directory declares it runs.

A kind's one name is its `JobRequest` oneof field in `protos/cm3leon/v1/jobs.proto`, its key in a checkpoint's
`decoding_defaults.json`, its entry in `capabilities.json` and its handler's registry key. The gateway validates
requests by the table's field rules, `services/convert.py` builds the domain request from the proto by the
table's request type, the engine finds the handler by name, and `cm3leon train sft` records which kinds a
mixture taught from the table's SFT formats. No torch here: the gateway, the client side and training read it.

    DIR/capabilities.json   {"tasks": ["text_to_image", ...], "policies": {"edit": "shapes.edit_redraw", ...}}

Without the file a model runs what pretraining teaches (text->image and captioning), with no policy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cm3leon.requests import CaptionStyle, GroundedObject, ImageInput, NormBox, Sampling

CAPABILITIES_FILE = "capabilities.json"


@dataclass(frozen=True)
class Text:
    """A free-text field: required (non-blank) or optional; its length is the gateway's `max_prompt_chars`."""

    name: str
    required: bool = True


@dataclass(frozen=True)
class Range:
    """A number field within [low, high] (low excluded when `low_open`); `optional`: checked only when set."""

    name: str
    low: float
    high: float
    optional: bool = True
    low_open: bool = False


@dataclass(frozen=True)
class Boxes:
    """A list of 1..max_count normalised boxes; `text`: each element is an object whose description is that
    text field and whose box is `box` (grounded objects), else the elements are boxes."""

    name: str
    max_count: int
    text: str | None = None


# Shared bounds of the fields below (beyond them decoding degenerates or the batch explodes).
GUIDANCE = (0.0, 20.0)
COPY_BIAS = (0.0, 20.0)  # a logit bonus; a large one copies the source whatever the instruction says
MAX_ITEMS = 9  # boxes and objects: one per cell of the shapes world's 3x3 grid, and a sane bound elsewhere
Rule = Text | Range | Boxes


@dataclass(frozen=True)
class JobKind:
    """One job kind. `sampling`: "full" (every Sampling option), "seed" (greedy: only the seed), "none" (no
    Sampling field). `retrieval`: the model was trained to read retrieved documents for it. `defaults`: its
    section of decoding_defaults.json (None: it decodes greedily by construction). `sft_formats`: the
    instruction-tuning formats (cm3leon.tasks.formats) that teach it."""

    name: str
    request_type: type
    images: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    sampling: str = "full"
    retrieval: bool = False
    defaults: str | None = None
    sft_formats: tuple[str, ...] = ()
    pretrained: bool = False


@dataclass(frozen=True)
class TextToImage:
    prompt: str
    num_images: int = 1
    sampling: Sampling = field(default_factory=Sampling)


TEXT_TO_IMAGE = JobKind(
    "text_to_image", TextToImage, rules=(Text("prompt"), Range("num_images", 1, 4)),
    retrieval=True, defaults="text_to_image", sft_formats=("t2i",), pretrained=True,
)


@dataclass(frozen=True, eq=False)
class Caption:
    image: ImageInput
    style: CaptionStyle = "detailed"
    sampling: Sampling = field(default_factory=Sampling)


CAPTION = JobKind(
    "caption", Caption, images=("image",), retrieval=True, defaults="caption", sft_formats=("caption",),
    pretrained=True,
)


@dataclass(frozen=True, eq=False)
class VisualQuestion:
    image: ImageInput
    question: str
    explain: bool = False
    sampling: Sampling = field(default_factory=Sampling)


VISUAL_QUESTION = JobKind(
    "visual_question", VisualQuestion, images=("image",), rules=(Text("question"),),
    sft_formats=("vqa", "reasoning"),
)


@dataclass(frozen=True, eq=False)
class Edit:
    image: ImageInput
    instruction: str
    text_guidance_scale: float | None = None
    image_guidance_scale: float | None = None
    sampling: Sampling = field(default_factory=Sampling)
    source_copy_bias: float | None = None  # None: the checkpoint's default (SamplingParams.source_copy_bias)


EDIT = JobKind(
    "edit", Edit, images=("image",),
    rules=(
        Text("instruction"), Range("text_guidance_scale", *GUIDANCE), Range("image_guidance_scale", *GUIDANCE),
        Range("source_copy_bias", *COPY_BIAS),
    ),
    defaults="edit", sft_formats=("edit",),
)


@dataclass(frozen=True, eq=False)
class Infill:
    image: ImageInput
    regions: tuple[NormBox, ...]
    text: str = ""
    sampling: Sampling = field(default_factory=Sampling)


INFILL = JobKind(
    "infill", Infill, images=("image",), rules=(Boxes("regions", MAX_ITEMS), Text("text", required=False)),
    sampling="seed", sft_formats=("infill",),
)


@dataclass(frozen=True, eq=False)
class Segmentation:
    image: ImageInput


SEGMENTATION = JobKind(
    "segmentation", Segmentation, images=("image",), sampling="none", defaults="segmentation",
    sft_formats=("segmentation",),
)


@dataclass(frozen=True, eq=False)
class StructureGuided:
    segmentation_map: ImageInput
    caption: str
    sampling: Sampling = field(default_factory=Sampling)


STRUCTURE_GUIDED = JobKind(
    "structure_guided", StructureGuided, images=("segmentation_map",), rules=(Text("caption"),),
    defaults="structure_guided", sft_formats=("seg2img",),
)


@dataclass(frozen=True)
class GroundedGeneration:
    objects: tuple[GroundedObject, ...]
    prompt: str = ""
    sampling: Sampling = field(default_factory=Sampling)


GROUNDED_GENERATION = JobKind(
    "grounded_generation", GroundedGeneration,
    rules=(Boxes("objects", MAX_ITEMS, text="description"), Text("prompt", required=False)),
    defaults="grounded_generation", sft_formats=("grounded",),
)


@dataclass(frozen=True)
class TextRendering:
    text: str
    sampling: Sampling = field(default_factory=Sampling)


TEXT_RENDERING = JobKind(
    "text_rendering", TextRendering, rules=(Text("text"),), defaults="text_rendering", sft_formats=("text_render",)
)


KINDS: tuple[JobKind, ...] = (
    TEXT_TO_IMAGE, CAPTION, VISUAL_QUESTION, EDIT, INFILL, SEGMENTATION, STRUCTURE_GUIDED, GROUNDED_GENERATION,
    TEXT_RENDERING,
)
JobRequest = (
    TextToImage
    | Caption
    | VisualQuestion
    | Edit
    | Infill
    | Segmentation
    | StructureGuided
    | GroundedGeneration
    | TextRendering
)
KIND_BY_NAME: dict[str, JobKind] = {kind.name: kind for kind in KINDS}
KIND_BY_TYPE: dict[type, JobKind] = {kind.request_type: kind for kind in KINDS}
JOB_KINDS: tuple[str, ...] = tuple(kind.name for kind in KINDS)
PRETRAINED_KINDS: tuple[str, ...] = tuple(kind.name for kind in KINDS if kind.pretrained)
# The shapes world's policy per kind (`cm3leon.policies.shapes`): what `cm3leon train sft` on the world's data
# declares for the kinds it teaches.
SHAPES_POLICIES: dict[str, str] = {
    "edit": "shapes.edit_redraw",
    "segmentation": "shapes.caption_check",
    "grounded_generation": "shapes.scene_caption",
    "text_rendering": "shapes.word_choice",
}
# The "pretrain" mixture entry keeps pretraining documents in an SFT mix: what the init could do stays.
PRETRAIN_ENTRY = "pretrain"


def kind_of(request: JobRequest) -> JobKind:
    return KIND_BY_TYPE[type(request)]


# The per-request overrides of the decoding defaults (a Sampling's other fields are the seed and retrieval).
SAMPLING_OPTIONS = ("method", "temperature", "top_p", "guidance_scale", "guidance_plausibility", "num_candidates")


def check_sampling_rules(kind: JobKind, sampling: Sampling | None) -> None:
    """The kind's sampling rules (the gateway checks the same on the wire): retrieved context only where the model
    was trained to read it, only the seed for a greedy kind. A ValueError naming the field otherwise."""
    if sampling is None:
        return
    if sampling.retrieved_k and not kind.retrieval:
        readers = ", ".join(k.name for k in KINDS if k.retrieval)
        raise ValueError(f"sampling.retrieved_k: {kind.name} is not trained with retrieved context (only {readers})")
    given = [name for name in SAMPLING_OPTIONS if getattr(sampling, name) is not None]
    if kind.sampling == "seed" and given:
        raise ValueError(f"sampling: {kind.name} decodes greedily, only the seed may be set (got {', '.join(given)})")


def kinds_taught_by(entry: str) -> tuple[str, ...]:
    """The job kinds an SFT mixture entry teaches."""
    if entry == PRETRAIN_ENTRY:
        return PRETRAINED_KINDS
    taught = tuple(kind.name for kind in KINDS if entry in kind.sft_formats)
    if not taught:
        known = sorted({PRETRAIN_ENTRY, *(f for kind in KINDS for f in kind.sft_formats)})
        raise ValueError(f"mixture entry {entry!r} teaches no job kind; known: {known}")
    return taught


def in_kind_order(kinds: Iterable[str]) -> tuple[str, ...]:
    wanted = set(kinds)
    unknown = wanted - set(JOB_KINDS)
    if unknown:
        raise ValueError(f"unknown job kinds {sorted(unknown)}; known: {JOB_KINDS}")
    return tuple(kind for kind in JOB_KINDS if kind in wanted)


@dataclass(frozen=True)
class Capabilities:
    """What a model directory runs: its kinds, and per kind the named decoding policy it turns on (if any)."""

    kinds: tuple[str, ...]
    policies: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path | str) -> Capabilities:
        path = Path(directory) / CAPABILITIES_FILE
        if not path.exists():
            return cls(PRETRAINED_KINDS)
        record = json.loads(path.read_text())
        try:
            kinds = in_kind_order(record.get("tasks", []))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error
        policies = dict(record.get("policies", {}))
        undeclared = set(policies) - set(kinds)
        if undeclared:
            raise ValueError(f"{path}: policies for kinds the model does not declare: {sorted(undeclared)}")
        return cls(kinds, policies)

    def save(self, directory: Path | str) -> Path:
        path = Path(directory) / CAPABILITIES_FILE
        record: dict[str, object] = {"tasks": list(in_kind_order(self.kinds))}
        if self.policies:
            record["policies"] = dict(self.policies)
        path.write_text(json.dumps(record, indent=2) + "\n")
        return path


def trained_capabilities(
    init_dir: Path, mixture: Mapping[str, float], world_policies: Mapping[str, str] = SHAPES_POLICIES
) -> Capabilities:
    """What an SFT run's output runs: its init's kinds and policies (instruction tuning keeps pretraining
    documents in the mix, so what the init could do stays) plus the kinds of every entry with a positive weight,
    each with its world's policy where the world has one."""
    init = Capabilities.load(init_dir)
    taught = [kind for entry, weight in mixture.items() if weight > 0 for kind in kinds_taught_by(entry)]
    kinds = in_kind_order([*init.kinds, *taught])
    policies = {**{k: v for k, v in world_policies.items() if k in kinds}, **init.policies}
    return Capabilities(kinds, {kind: policies[kind] for kind in kinds if kind in policies})
