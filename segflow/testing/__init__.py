"""The contracts every reader and model kind passes, shipped for plug-in packages (as zarr ships
``zarr.testing``): subclass one in a test module and say how to make a case.

    from segflow.testing import ModelContract, ReaderContract

They need pytest (and ``distributed``, which segflow installs); segflow's own readers and
kinds pass them in its test suite (tests/conformance/).
"""

from segflow.testing.models import ModelContract, predict_chunked, predict_whole
from segflow.testing.readers import ReaderContract

__all__ = ["ModelContract", "ReaderContract", "predict_chunked", "predict_whole"]
