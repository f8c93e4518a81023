"""Training: data pipelines, objectives wiring, the generic decoder trainer, checkpoints and metrics."""
