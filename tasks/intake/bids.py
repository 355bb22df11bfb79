"""BIDS datasets as batches: the images of a BIDS root that a filter of entities selects
(``input.bids: {suffix: T1w, session: "1"}``), and the entities of a BIDS file name.

A small reading of the BIDS layout, written here rather than through pybids: segflow needs
only the raw data's file names (``sub-<label>/[ses-<label>/]<datatype>/sub-<label>_..._<suffix>
.nii[.gz]``), and pybids's index (SQLAlchemy, the validator, a database per dataset) costs more
than the listing. Derivatives, source data and hidden folders are never listed.
"""

from __future__ import annotations

import re

from segflow.tasks.config import BidsFilter
from segflow.tasks.errors import UserError, io_error
from segflow.tasks.runtime.storage import filesystem
from segflow.tasks.sources.registry import NIFTI

#: entity keys as BIDS abbreviates them in file names, and their full names
ENTITIES = {"sub": "subject", "ses": "session", "task": "task", "acq": "acquisition",
            "ce": "ceagent", "rec": "reconstruction", "dir": "direction", "run": "run",
            "echo": "echo", "part": "part"}
_PAIR = re.compile(r"([a-zA-Z]+)-([a-zA-Z0-9]+)")
_SKIP = {"derivatives", "sourcedata", "code", "stimuli"}


def entities(uri: str) -> dict[str, str] | None:
    """The entities (full names) and ``suffix`` of a BIDS image's file name; None when the
    name is not one (it must start with ``sub-``)."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    stem = next((name[: -len(e)] for e in sorted(NIFTI.suffixes, key=len, reverse=True)
                 if name.endswith(e)), None)
    if stem is None or not stem.startswith("sub-"):
        return None
    *pairs, suffix = stem.split("_")
    found: dict[str, str] = {}
    for pair in pairs:
        match = _PAIR.fullmatch(pair)
        if match is None or match.group(1) not in ENTITIES:
            return None
        found[ENTITIES[match.group(1)]] = match.group(2)
    found["suffix"] = suffix
    return found


def bids_images(root: str, wanted: BidsFilter) -> list[str]:
    """The images under BIDS root ``root`` whose entities match ``wanted``, sorted."""
    try:
        fs, base = filesystem(root)
        base = base.rstrip("/")
        fs.invalidate_cache()
        if not fs.exists(f"{base}/dataset_description.json"):
            raise UserError(root, "not a BIDS dataset: no dataset_description.json")
        paths = fs.find(base)
    except OSError as exc:
        raise io_error(root, "cannot list", exc) from exc
    prefix = root.rstrip("/")[: len(root.rstrip("/")) - len(base)]  # s3:// and the like
    found = []
    for path in paths:
        parts = path[len(base) + 1:].split("/")
        if len(parts) not in (3, 4) or parts[0] in _SKIP or any(p.startswith(".")
                                                                for p in parts):
            continue
        found_entities = entities(parts[-1])
        if (found_entities is None or parts[-2] != wanted.datatype
                or parts[0] != f"sub-{found_entities['subject']}"):
            continue
        if all(found_entities.get(key) == value for key, value in wanted.entities().items()):
            found.append(prefix + path)
    return sorted(found)
