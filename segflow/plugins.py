"""What a plug-in package builds on: the reader and model interfaces and their registry entries.

A package adds a file format or a model kind without changing segflow: it subclasses
``SourceBase`` (with an ``open`` function and a ``Reader`` entry) or ``SegmentationModel``
(with a ``ModelParams`` class), names them in its ``pyproject.toml``::

    [project.entry-points."segflow.readers"]
    myformat = "my_package:READER"
    [project.entry-points."segflow.models"]
    mykind = "my_package:MyModel"

and runs ``segflow.testing``'s contracts on them. ``segment``, ``batch``, ``watch`` and the
warm server then find them by name (``model.kind: mykind``) or by suffix.
"""

from segflow.tasks.config import ClassSpec, InputConfig, JobConfig, class_table
from segflow.tasks.errors import UserError
from segflow.tasks.models.base import InputSpec, SegmentationModel
from segflow.tasks.models.params import ModelParams, check_band
from segflow.tasks.models.registry import ModelKind
from segflow.tasks.sources.base import Box, SourceBase, select_bands
from segflow.tasks.sources.registry import Reader
from segflow.tasks.sources.spatial import PixelRef, RasterRef, SlideRef, SpatialRef, VolumeRef

__all__ = ["Box", "ClassSpec", "InputConfig", "InputSpec", "JobConfig", "ModelKind",
           "ModelParams", "PixelRef", "RasterRef", "Reader", "SegmentationModel", "SlideRef",
           "SourceBase", "SpatialRef", "UserError", "VolumeRef", "check_band", "class_table",
           "select_bands"]
