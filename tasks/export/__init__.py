"""Outputs for other tools: polygons, label files for desktop viewers, and where they are."""


def export_uri(root: str, folder: str, name: str) -> str:
    """``ROOT/<folder>/<name>``: ``vectors/`` for polygons, ``exports/`` for label files."""
    return f"{root.rstrip('/')}/{folder}/{name}"
