"""The shapes world's policies: its edit planning and redraws, caption-checked segmentation maps, the choice of
rendered words and grounded scenes (`serving`), and the checks they are built from (`edit_check`,
`segmentation`, `caption_check`), which the evaluations measure too."""

from cm3leon.policies.shapes import serving as serving  # registers the family's policies

__all__ = ["serving"]
