"""Celery workers: thin, typed, idempotent tasks around `cm3leon.inference.Engine` (loaded once per process)."""
