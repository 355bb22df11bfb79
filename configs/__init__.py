"""Shipped job configs (package data ``segflow.configs``): the demo's and each modality's."""

from pathlib import Path

#: where the shipped configs lie: the repository's configs/ folder, or the installed package's
FOLDER = Path(__file__).resolve().parent
