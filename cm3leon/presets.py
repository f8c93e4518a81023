"""Named presets of the project's configs: each config class declares its table, one lookup builds from it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self


class Presets:
    """Mixin of a config dataclass with named variants (`tiny` for tests, `shapes` for the model, ...).

    `PRESETS` maps each name to the fields it sets over the class defaults. One lookup gives every config the
    same call, `preset(name, **overrides)`, and the same error, which lists the choices.
    """

    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    @classmethod
    def preset(cls, name: str, /, **overrides: Any) -> Self:
        """The preset `name`, with `overrides` replacing any of its fields (positional-only: a config may
        have a field called `name`)."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown {cls.__name__} preset {name!r}; choose from: {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})
