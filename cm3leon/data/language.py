"""All text of the shapes world: captions, the caption parser, text-render prompts and the training text corpus.

Every string is derived from a symbolic `Scene` and the `WorldConfig` vocabulary (colour, shape, size, background
and position names all come from the config), so each caption has an exact meaning that `parse_caption` reads
back. Questions, answers and two-step reasoning live in `cm3leon.data.questions` and are re-exported here.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from cm3leon.data.grammar import world_grammar
from cm3leon.data.questions import QA, article, final_answer, plural, qa_pairs, reasoning_pairs
from cm3leon.data.world import Scene, SceneObject, WorldConfig

__all__ = [
    "QA",
    "detailed_caption",
    "detailed_caption_variants",
    "short_caption",
    "short_caption_variants",
    "text_render_prompt",
    "parse_caption",
    "qa_pairs",
    "reasoning_pairs",
    "final_answer",
    "position_phrase",
    "article",
    "join_phrases",
]

# Paraphrase templates. The first of each tuple is canonical (used when no rng is given). Every detailed
# template names the background as "<name> background" or "background is <name>" so the parser finds it, and
# either lists objects as "size colour shape at the position" or puts each position first; the parser pairs
# objects and positions by order, which reads both.
DETAILED_TEMPLATES: tuple[str, ...] = (
    "{objects} on a {background} background",
    "a {background} background with {objects}",
    "an image showing {objects}; the background is {background}",
    "{objects_position_first} on a plain {background} background",
    "a picture of {objects} over a {background} background",
)
TEXT_SCENE_TEMPLATES: tuple[str, ...] = (
    'the word "{word}" in {colour} on a {background} background',
    'a {background} background with the word "{word}" written in {colour}',
    '{colour} letters spelling "{word}" on a {background} background',
)
SHORT_TEMPLATES: tuple[str, ...] = ("{objects}", "an image of {objects}", "a picture with {objects}")
SHORT_TEXT_TEMPLATE = 'the word "{word}" in {colour}'
TEXT_RENDER_TEMPLATE = 'draw "{word}" in {colour} on a {background} background'

# Fraction of corpus scenes that are text-rendering scenes: enough that the letters, quotes and the render
# prompt are well represented in the tokenizer's training text, without crowding out the shapes captions.
CORPUS_TEXT_SCENE_FRACTION = 0.125


def join_phrases(phrases: Sequence[str]) -> str:
    """English list: "A", "A and B", "A, B and C"."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def position_phrase(cell: int, config: WorldConfig) -> str:
    return f"at the {config.position_name(cell)}"


def _pick(templates: Sequence[str], rng: random.Random | None) -> int:
    return 0 if rng is None else rng.randrange(len(templates))


def _detailed_variant(scene: Scene, config: WorldConfig, template_index: int) -> str:
    if scene.is_text:
        template = TEXT_SCENE_TEMPLATES[template_index % len(TEXT_SCENE_TEMPLATES)]
        return template.format(word=scene.word, colour=scene.word_colour, background=scene.background)
    described = [o.describe() for o in scene.objects]
    positions = [position_phrase(o.cell, config) for o in scene.objects]
    objects = join_phrases([f"{article(d)} {d} {p}" for d, p in zip(described, positions, strict=True)])
    position_first = join_phrases([f"{p} {article(d)} {d}" for d, p in zip(described, positions, strict=True)])
    return DETAILED_TEMPLATES[template_index].format(
        objects=objects, objects_position_first=position_first, background=scene.background
    )


def detailed_caption_variants(scene: Scene, config: WorldConfig) -> list[str]:
    """Every paraphrase of the detailed caption, canonical first (all of them parse back to `scene`)."""
    count = len(TEXT_SCENE_TEMPLATES) if scene.is_text else len(DETAILED_TEMPLATES)
    return [_detailed_variant(scene, config, i) for i in range(count)]


def detailed_caption(scene: Scene, config: WorldConfig, rng: random.Random | None = None) -> str:
    """A caption naming every visible attribute: each object's size, colour, shape and position, and the
    background; e.g. "a large red circle at the top left and a small blue star at the center on a white
    background". `rng` picks a paraphrase; None gives the canonical one."""
    templates = TEXT_SCENE_TEMPLATES if scene.is_text else DETAILED_TEMPLATES
    return _detailed_variant(scene, config, _pick(templates, rng))


def _short_objects(scene: Scene) -> str:
    """Colour and shape only, identical objects grouped ("2 red circles and a blue star"), in reading order."""
    counts: dict[tuple[str, str], int] = {}
    for obj in scene.objects:
        counts[(obj.colour, obj.shape)] = counts.get((obj.colour, obj.shape), 0) + 1
    phrases = []
    for (colour, shape), n in counts.items():
        phrases.append(f"{article(colour)} {colour} {shape}" if n == 1 else f"{n} {colour} {plural(shape)}")
    return join_phrases(phrases)


def short_caption_variants(scene: Scene, config: WorldConfig) -> list[str]:
    if scene.is_text:
        return [SHORT_TEXT_TEMPLATE.format(word=scene.word, colour=scene.word_colour)]
    objects = _short_objects(scene)
    return [t.format(objects=objects) for t in SHORT_TEMPLATES]


def short_caption(scene: Scene, config: WorldConfig, rng: random.Random | None = None) -> str:
    """A caption with colours and shapes only, e.g. "a red circle and a blue star"."""
    variants = short_caption_variants(scene, config)
    return variants[_pick(variants, rng)]


def text_render_prompt(scene: Scene, config: WorldConfig) -> str:
    """The instruction for the text-rendering task, e.g. 'draw "AB" in red on a white background'."""
    if not scene.is_text:
        raise ValueError(f"text_render_prompt needs a text scene, got {scene.key()}")
    return TEXT_RENDER_TEMPLATE.format(word=scene.word, colour=scene.word_colour, background=scene.background)


# --- parsing ---------------------------------------------------------------------------------------------


def _blank(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """`text` with the given spans replaced by spaces (same length, so later offsets stay valid)."""
    chars = list(text)
    for start, end in spans:
        chars[start:end] = " " * (end - start)
    return "".join(chars)


def parse_caption(text: str, config: WorldConfig) -> Scene | None:
    """Read any detailed caption paraphrase (or a text-scene caption / render prompt) back into its exact Scene.

    Vocabulary-driven, so extra words are ignored: the background is "<name> background" (or "background is
    <name>"); a quoted word makes a text scene whose colour is the one other colour named; otherwise objects are
    "size colour shape" phrases paired, in order, with the position names outside them. Returns None when the
    text does not name exactly one background, or objects and positions do not pair up into a valid scene.
    """
    grammar = world_grammar(config)
    quoted = re.search(r'"([^"]+)"', text)
    # Blank the quoted word before lowercasing: a word like "RED" must not read as a colour.
    rest = (_blank(text, [quoted.span()]) if quoted else text).lower()

    backgrounds = list(grammar.background.finditer(rest))
    background_names = {m.group(1) or m.group(2) for m in backgrounds}
    if len(background_names) != 1:
        return None
    background = background_names.pop()
    rest = _blank(rest, [m.span() for m in backgrounds])

    if quoted:
        colours = {m.group(1) for m in grammar.colour.finditer(rest)}
        if len(colours) != 1:
            return None
        return Scene(background=background, word=quoted.group(1), word_colour=colours.pop())

    objects = list(grammar.obj.finditer(rest))
    positions = list(grammar.position.finditer(_blank(rest, [m.span() for m in objects])))
    if not objects or len(objects) != len(positions) or len(objects) > config.max_objects:
        return None
    cell_of = {name: cell for cell, name in enumerate(config.position_names)}
    parsed = tuple(
        SceneObject(cell=cell_of[p.group(1)], shape=o.group(3), colour=o.group(2), size=o.group(1))
        for o, p in zip(objects, positions, strict=True)
    )
    try:
        return Scene(background=background, objects=parsed)
    except ValueError:  # two objects named at one position
        return None


# --- tokenizer corpus ------------------------------------------------------------------------------------


def vocabulary_words(config: WorldConfig) -> list[str]:
    """Every name the world can say, once each, so the tokenizer sees even rare words (e.g. held-out pairs'
    colours appear elsewhere anyway, but small corpora may miss a position or letter)."""
    letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    digits = [str(d) for d in range(10)]
    return [
        *config.colour_names,
        *config.background_names,
        *config.shapes,
        *(plural(s) for s in config.shapes),
        *config.size_names,
        *config.position_names,
        *letters,
        *digits,
    ]
