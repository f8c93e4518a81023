"""The world's language as regular expressions: caption phrases and edit instructions, compiled once per world.

Captions and edit instructions name the same things (sizes, colours, shapes, positions, backgrounds), so one
grammar holds every pattern that `language.parse_caption` and `tasks.parse_edit_instruction` read with.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from cm3leon.data.world import WorldConfig


def name_alternation(names: Sequence[str]) -> str:
    """`a|b|c` for a regular expression, longest name first, so "top center" wins over its suffix "center"."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


@dataclass(frozen=True)
class WorldGrammar:
    """Every pattern of one world's language; groups capture the names in the order the phrase gives them."""

    # Caption phrases.
    background: re.Pattern[str]  # "<name> background" or "background (is|of) <name>"
    obj: re.Pattern[str]  # "size colour shape"
    position: re.Pattern[str]
    colour: re.Pattern[str]
    # Edit instructions, each about "the colour shape (at the position)".
    change: re.Pattern[str]  # "make <ref> <colour or size>"
    remove: re.Pattern[str]  # "remove <ref>"
    add: re.Pattern[str]  # "add a <size> <colour> <shape> at the <position>"
    move: re.Pattern[str]  # "move <ref> to the <position>"


@lru_cache(maxsize=16)
def world_grammar(config: WorldConfig) -> WorldGrammar:
    size, colour = name_alternation(config.size_names), name_alternation(config.colour_names)
    shape, position = name_alternation(config.shapes), name_alternation(config.position_names)
    backgrounds = name_alternation(config.background_names)
    ref = rf"the ({colour}) ({shape})(?: at the ({position}))?"
    return WorldGrammar(
        background=re.compile(rf"\b(?:({backgrounds})\s+background|background\s+(?:is\s+|of\s+)?({backgrounds}))\b"),
        obj=re.compile(rf"\b({size})\s+({colour})\s+({shape})\b"),
        position=re.compile(rf"\b({position})\b"),
        colour=re.compile(rf"\b({colour})\b"),
        change=re.compile(rf"\bmake {ref} ({colour}|{size})\b"),
        remove=re.compile(rf"\bremove {ref}\b"),
        add=re.compile(rf"\badd an? ({size}) ({colour}) ({shape}) at the ({position})\b"),
        move=re.compile(rf"\bmove {ref} to the ({position})\b"),
    )
