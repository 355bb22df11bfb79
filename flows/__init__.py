"""Prefect flows: the entry points users run, schedule and trigger. They compose ``tasks``."""
