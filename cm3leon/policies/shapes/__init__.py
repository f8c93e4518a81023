"""The shapes world's policies: its edit planning and redraws, caption-checked segmentation maps, the choice of
rendered words and grounded scenes (`serving`), and the checks they are built from (`edit_check`,
`segmentation`, `caption_check`), which the evaluations measure too; and how a model of the world reads requests
on every path (`inputs`)."""

from cm3leon.policies.shapes import inputs as inputs  # registers the world's request reader
from cm3leon.policies.shapes import serving as serving  # registers the family's policies

__all__ = ["inputs", "serving"]
