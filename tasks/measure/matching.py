"""Instance quality against an instance ground truth (``stats.ground_truth_instances``): the
objects matched one to one at IoU >= 0.5, and from the matches tp, fp, fn, precision, recall,
F1 and the mean IoU of the matched pairs.

Each chunk returns the sparse overlaps (predicted id, true id, cells) and the true objects'
cells it holds; the client sums them, O(overlapping pairs). At IoU > 0.5 a pair is the only
candidate for both its objects; at exactly 0.5 ties are settled by SciPy's Hungarian
assignment over the candidate pairs, so no object is matched twice. Predicted sizes come from
the measured instances.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from distributed import Client
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix

from segflow.tasks.errors import on_worker
from segflow.tasks.mask.store import MaskStore
from segflow.tasks.measure.objects import Instances
from segflow.tasks.plan.grid import Chunk, Plan
from segflow.tasks.runtime.zarr_nodes import read_cells
from segflow.tasks.sources.base import SourceBase

IOU = 0.5


def overlap_chunk(chunk: Chunk, store: MaskStore, truth: SourceBase
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(pred id, true id, cells) of every overlapping pair in the chunk, and (true id, cells)
    of the true objects there; cells invalid in the truth count for neither (on a worker)."""
    return on_worker(_overlap_chunk, chunk, store, truth)


def _overlap_chunk(chunk: Chunk, store: MaskStore, truth: SourceBase
                   ) -> tuple[np.ndarray, np.ndarray]:
    values, valid = truth.read(chunk.core)
    true = np.where(valid, values[0], 0).astype(np.int64).ravel()
    pred = read_cells(store.instances(), chunk.core).astype(np.int64).ravel()
    both = (pred > 0) & (true > 0)
    pairs, cells = np.unique(np.stack([pred[both], true[both]]), axis=1, return_counts=True)
    ids, sizes = np.unique(true[true > 0], return_counts=True)
    return (np.vstack([pairs, cells]) if pairs.size else np.empty((3, 0), np.int64),
            np.vstack([ids, sizes]))


def instance_metrics(client: Client, store: MaskStore, plan: Plan, truth: SourceBase,
                     objects: Instances) -> list[dict[str, Any]]:
    """One ``instance_metrics`` row for the image."""
    parts = client.gather(client.map(overlap_chunk, plan.chunks, store=store, truth=truth,
                                     pure=False))
    pairs = np.concatenate([p for p, _ in parts], axis=1)
    sizes = np.concatenate([s for _, s in parts], axis=1)
    n_pred = objects.count
    n_true = int(sizes[0].max(initial=0))
    true_cells = np.bincount(sizes[0], weights=sizes[1], minlength=n_true + 1)
    inter = coo_matrix((pairs[2], (pairs[0], pairs[1])),
                       shape=(n_pred + 1, n_true + 1)).tocsr().tocoo()  # sums duplicates
    pred_cells = np.concatenate([[0], objects.sums.pixels])
    iou = inter.data / (pred_cells[inter.row] + true_cells[inter.col] - inter.data)
    keep = iou >= IOU
    rows, cols, scores = inter.row[keep], inter.col[keep], iou[keep]
    matched = np.empty(0)
    if len(scores):
        r_ids, r = np.unique(rows, return_inverse=True)
        c_ids, c = np.unique(cols, return_inverse=True)
        grid = np.zeros((len(r_ids), len(c_ids)))
        grid[r, c] = scores
        a, b = linear_sum_assignment(-grid)
        matched = grid[a, b][grid[a, b] >= IOU]
    present = int((true_cells[1:] > 0).sum())  # true ids that occur at all
    tp = len(matched)
    fp, fn = n_pred - tp, present - tp
    precision = tp / n_pred if n_pred else None
    recall = tp / present if present else None
    f1 = 2 * tp / (n_pred + present) if n_pred + present else None
    return [{"iou_threshold": IOU, "tp": tp, "fp": fp, "fn": fn, "precision": precision,
             "recall": recall, "f1": f1,
             "mean_matched_iou": float(matched.mean()) if tp else None,
             "predicted": n_pred, "true": present}]
