"""Outputs for other tools: polygons and label files for desktop viewers (where each lies:
tasks/runtime/layout.py)."""
