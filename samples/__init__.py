"""The bundled sample scene, its land-cover map and the demo U-Net (package data
``segflow.samples``; sources and licences in SOURCES.md)."""

from pathlib import Path

#: where the sample files lie: the repository's samples/ folder, or the installed package's
FOLDER = Path(__file__).resolve().parent
