"""How soon `segflow segment` fails on a bad input: seconds to its one stderr line and to its
exit, best of 3, for a bad config key, a misspelt model parameter, a missing file, a missing
model file, a folder and a text file named .tif; and how soon ``segflow.segment_image`` raises
on the misspelt parameter (a fresh interpreter: import, check, raise). Run:
.venv/bin/python benchmarks/bench_fail_fast.py"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCENE = Path(__file__).parents[1] / "tests" / "data" / "rgb_byte.tif"


def timed(args: list[str], cwd: Path) -> tuple[float, float, str]:
    """Seconds to the first stderr line and to the exit, and that line."""
    segflow = shutil.which("segflow") or "segflow"
    clock = time.perf_counter()
    proc = subprocess.Popen([segflow, *args], cwd=cwd, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline().strip()
    to_line = time.perf_counter() - clock
    proc.wait()
    return to_line, time.perf_counter() - clock, line


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "folder").mkdir()
        (work / "notes.tif").write_text("meeting notes, renamed")
        cases = {
            "bad config key": ["segment", str(SCENE), "--set", "model.bogus=1"],
            "misspelt model param": ["segment", str(SCENE), "--set", "model.kind=otsu",
                                     "--set", "model.params.sigmma=2"],
            "missing file": ["segment", "missing.tif"],
            "missing model.weights": ["segment", str(SCENE), "--set", "model.weights=no.pt"],
            "a folder": ["segment", "folder"],
            "a text file named .tif": ["segment", "notes.tif"],
        }
        for name, args in cases.items():
            runs = [timed([*args, "--out", "out"], work) for _ in range(3)]
            print(f"{name:24} line {min(r[0] for r in runs):.2f} s, exit "
                  f"{min(r[1] for r in runs):.2f} s: {runs[0][2]}")
        api = [_api(work) for _ in range(3)]
        print(f"{'segment_image (Python)':24} raised {min(a[0] for a in api):.2f} s: {api[0][1]}")


def _api(cwd: Path) -> tuple[float, str]:
    """Seconds from a fresh interpreter's start to segflow.segment_image's error, and it."""
    code = ("import segflow\n"
            "try:\n"
            f"    segflow.segment_image({str(SCENE)!r}, 'out', "
            "{'model': {'kind': 'otsu', 'params': {'sigmma': 2}}})\n"
            "except Exception as exc:\n"
            "    print(exc)\n")
    clock = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - clock, done.stdout.strip()


if __name__ == "__main__":
    main()
