"""What the default COG of a raster (``output.export: auto``) costs a run.

Each size is segmented by ``segflow segment`` (k-means, the landcover config's method, and a
fixed threshold, the cheapest method, where the COG is the largest share) with
``output.export=false`` and with the default, ``repeats`` times each, alternating; the figure is
the median of the run's own seconds (``computed in N s``), so start-up is not in it.

    .venv/bin/python benchmarks/bench_cog.py [--sizes 2048 8192] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import OUT, fresh_dir, run_segflow, save_results, write_synthetic_geotiff  # noqa: E402

METHODS = {"threshold": ["model.kind=threshold", "model.params.value=128"],
           "kmeans": ["model.kind=kmeans", "model.params.k=5"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = []
    for size in args.sizes:
        image = write_synthetic_geotiff(OUT / "data" / f"synthetic_{size}.tif", size, bands=3)
        for method, sets in METHODS.items():
            seconds: dict[str, list[float]] = {"false": [], "auto": []}
            for i in range(args.repeats):
                for export in ("false", "auto"):
                    out = fresh_dir(OUT / "cog", f"{size}-{method}-{export}-{i}")
                    run = run_segflow(image, out, sets=[*sets, f"output.export={export}"])
                    seconds[export].append(run["run_seconds"])
            row = {"size": size, "method": method,
                   "off_s": statistics.median(seconds["false"]),
                   "cog_s": statistics.median(seconds["auto"]), "runs": seconds}
            row["cog_share"] = (row["cog_s"] - row["off_s"]) / row["off_s"]
            print(f"{size}² {method:9s} without COG {row['off_s']:7.2f} s, with "
                  f"{row['cog_s']:7.2f} s (+{row['cog_share']:.0%})", flush=True)
            results.append(row)
    print(save_results("cog", {"results": results}))


if __name__ == "__main__":
    main()
