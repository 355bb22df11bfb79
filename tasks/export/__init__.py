"""Outputs for other tools: polygons, label files for desktop viewers, and where they are."""
