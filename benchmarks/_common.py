"""Shared helpers for the benchmarks: synthetic GeoTIFFs, the benchmark model, RSS sampling,
and running the ``segflow`` CLI as a subprocess.

Every benchmark writes its scratch data under ``benchmarks/out/`` (gitignored) and appends its
figures as JSON to ``benchmarks/out/results/<name>.json`` so ``run_all.py`` can summarise them.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
RESULTS = OUT / "results"
VENV_BIN = Path(sys.executable).parent
SEGFLOW = str(VENV_BIN / "segflow")
PYTHON = sys.executable

GIB = 1024 ** 3
MIB = 1024 ** 2


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    import psutil

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("torch", "prefect", "distributed", "zarr", "rasterio", "monai", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # not installed: leave it out
            pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
            "gpu": "none (CPU only)", "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions}


# --------------------------------------------------------------------------- synthetic data


def _bilinear(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``grid`` at fractional (rows x cols) positions (outer product)."""
    r0 = np.floor(rows).astype(np.int64)
    c0 = np.floor(cols).astype(np.int64)
    fr = (rows - r0).astype(np.float32)[:, None]
    fc = (cols - c0).astype(np.float32)[None, :]
    g00 = grid[np.ix_(r0, c0)]
    g01 = grid[np.ix_(r0, c0 + 1)]
    g10 = grid[np.ix_(r0 + 1, c0)]
    g11 = grid[np.ix_(r0 + 1, c0 + 1)]
    top = g00 + (g01 - g00) * fc
    bottom = g10 + (g11 - g10) * fc
    return top + (bottom - top) * fr


def write_synthetic_geotiff(path: Path, size: int, bands: int = 3, seed: int = 0,
                            block: int = 512) -> Path:
    """A ``size`` x ``size`` uint8 GeoTIFF of smooth multi-octave noise, written window by window.

    Tiled 512, deflate, EPSG:32633, 10 m pixels. The texture is seamless across windows (it is
    interpolated from global low-resolution grids), bimodal-ish (so Otsu/k-means have real work)
    and different per band. Memory stays at a few windows plus the coarse grids.
    """
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    octaves = [(256, 1.0), (48, 0.5), (8, 0.25)]  # (cell size px, amplitude)
    grids = [[rng.standard_normal((size // cell + 3, size // cell + 3)).astype(np.float32)
              for cell, _ in octaves] for _ in range(bands)]
    profile = dict(driver="GTiff", width=size, height=size, count=bands, dtype="uint8",
                   crs="EPSG:32633", transform=from_origin(500000.0, 5500000.0, 10.0, 10.0),
                   tiled=True, blockxsize=512, blockysize=512, compress="deflate")
    tmp = path.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, size, block):
            h = min(block, size - r)
            for c in range(0, size, block):
                w = min(block, size - c)
                out = np.empty((bands, h, w), np.uint8)
                for b in range(bands):
                    acc = np.zeros((h, w), np.float32)
                    for (cell, amp), grid in zip(octaves, grids[b]):
                        rows = np.arange(r, r + h, dtype=np.float64) / cell
                        cols = np.arange(c, c + w, dtype=np.float64) / cell
                        acc += amp * _bilinear(grid, rows, cols)
                    acc += 0.08 * rng.standard_normal((h, w), dtype=np.float32)
                    # tanh pushes values towards two modes: a bimodal histogram
                    val = 128.0 + 100.0 * np.tanh(1.5 * acc + 0.2 * (b - 1))
                    out[b] = np.clip(val, 0, 255).astype(np.uint8)
                dst.write(out, window=Window(c, r, w, h))
    tmp.rename(path)
    return path


# --------------------------------------------------------------------------- benchmark model

# (out channels, dilation) of the 3x3 layers; the receptive-field radius is the dilation sum.
MODEL_LAYERS = [(32, 1), (48, 2), (48, 4), (32, 2), (32, 1)]
MODEL_CLASSES = 4


def receptive_field() -> int:
    return sum(d for _, d in MODEL_LAYERS)


def build_model():
    """A stride-1 dilated CNN (ReLU, zero 'same' padding) ending in a 1x1 conv to 4 classes."""
    import torch

    torch.manual_seed(0)
    layers: list[Any] = []
    cin = 3
    for cout, dil in MODEL_LAYERS:
        layers += [torch.nn.Conv2d(cin, cout, 3, padding=dil, dilation=dil), torch.nn.ReLU()]
        cin = cout
    layers.append(torch.nn.Conv2d(cin, MODEL_CLASSES, 1))
    return torch.nn.Sequential(*layers).eval()


def model_file() -> Path:
    """The scripted benchmark model, saved once under benchmarks/out/."""
    import torch

    path = OUT / "models" / f"dilated_cnn_r{receptive_field()}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(torch.jit.script(build_model()), str(path))
    return path


def write_torchscript_config(path: Path, weights: Path, halo: int) -> Path:
    """The benchmarks' segflow config for the TorchScript model: chunk 2048, tile 1024, batch 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "model:\n"
        "  kind: torchscript\n"
        f"  weights: {weights}\n"
        f"  params: {{receptive_field: {receptive_field()}}}\n"
        f"tiling: {{chunk: 2048, tile: 1024, halo: {halo}, batch: 1}}\n")
    return path


def model_macs_per_pixel() -> int:
    macs, cin = 0, 3
    for cout, _ in MODEL_LAYERS:
        macs += cin * cout * 9
        cin = cout
    return macs + cin * MODEL_CLASSES


# --------------------------------------------------------------------------- memory sampling


def _role(proc) -> str:
    """A short name for a process of a segflow run, from its command line."""
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:
        return "gone"
    if "uvicorn" in cmd or "prefect.server" in cmd or "server start" in cmd:
        return "prefect-server"
    if "resource_tracker" in cmd:
        return "mp-resource-tracker"
    if "multiprocessing" in cmd or "spawn_main" in cmd or "forkserver" in cmd:
        return "dask-worker"
    if "segflow" in cmd:
        return "segflow-cli"
    return proc.name()


class TreeSampler:
    """Samples the RSS of a process and all its descendants every ``interval`` seconds.

    ``peak`` is the largest sum over one sample (RSS double-counts shared library pages across
    processes, so it is an upper bound of what the tree really occupies); ``peak_by_role`` is the
    largest RSS seen per process role.
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_by_role: dict[str, int] = {}
        self.max_procs = 0
        self.samples = 0
        self._roles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        import psutil

        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            return
        total = 0
        by_role: dict[str, int] = {}
        for p in procs:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            if p.pid not in self._roles:
                self._roles[p.pid] = _role(p)
            role = self._roles[p.pid]
            total += rss
            by_role[role] = by_role.get(role, 0) + rss
        self.samples += 1
        self.max_procs = max(self.max_procs, len(procs))
        self.peak = max(self.peak, total)
        for role, rss in by_role.items():
            self.peak_by_role[role] = max(self.peak_by_role.get(role, 0), rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)


# --------------------------------------------------------------------------- the CLI


SECONDS_RE = re.compile(
    r"chunks:\s+(\d+) total, skipped: (\d+) nodata.*?(\d+) computed this run; ([\d.]+) s")


def run_segflow(source: Path, out: Path, config: Path | None = None, sets: list[str] = (),
                env: dict[str, str] | None = None, sample_memory: bool = False,
                timeout: float = 900) -> dict[str, Any]:
    """Run ``segflow segment`` as a subprocess; wall time, the run's own seconds, peak RSS."""
    if out.exists():
        raise RuntimeError(f"{out} exists: use a fresh --out per run (the store would resume)")
    cmd = [SEGFLOW, "segment", str(source), "--out", str(out)]
    if config is not None:
        cmd += ["--config", str(config)]
    for item in sets:
        cmd += ["--set", item]
    full_env = {**os.environ, **(env or {})}
    if env is None or "PREFECT_API_URL" not in env:
        full_env.pop("PREFECT_API_URL", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=REPO)
    sampler = TreeSampler(proc.pid) if sample_memory else None
    if sampler:
        sampler.__enter__()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if sampler:
            sampler.__exit__(None, None, None)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"segflow failed ({proc.returncode}): {' '.join(cmd)}\n"
                           f"{stdout[-2000:]}\n{stderr[-4000:]}")
    m = SECONDS_RE.search(stdout)
    result: dict[str, Any] = {"command": " ".join(cmd), "wall_s": wall,
                              "run_seconds": float(m.group(4)) if m else None,
                              "chunks_total": int(m.group(1)) if m else None,
                              "chunks_computed": int(m.group(3)) if m else None,
                              "stdout": stdout}
    if sampler:
        result.update(peak_rss=sampler.peak, peak_rss_by_role=sampler.peak_by_role,
                      max_processes=sampler.max_procs, rss_samples=sampler.samples)
    return result


def fresh_dir(base: Path, name: str) -> Path:
    """A new, unused directory path under ``base`` (timestamped, so stores never resume)."""
    base.mkdir(parents=True, exist_ok=True)
    return base / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}"


def code_version() -> dict[str, Any]:
    """The commit measured, and whether the working tree had uncommitted changes."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def save_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), "code": code_version(), **data}, indent=1,
                               default=str))
    return path


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


# --------------------------------------------------------------------------- a shared machine


def wait_for_quiet(max_wait: float = 180.0, busy_below: float = 20.0, window: float = 3.0,
                   quiet: bool = False) -> float:
    """Wait (up to ``max_wait`` s) until other processes use < ``busy_below`` % of all CPUs.

    The benchmark machine may be shared (test suites, CI); figures taken while something else
    computes are meaningless. Returns the CPU % seen last. Disable with max_wait=0.
    """
    import psutil

    deadline = time.monotonic() + max_wait
    busy = psutil.cpu_percent(interval=window)
    while busy >= busy_below and time.monotonic() < deadline:
        if not quiet:
            print(f"  (machine busy: {busy:.0f}% CPU used by other processes; waiting)", flush=True)
        busy = psutil.cpu_percent(interval=window)
    return busy


class LoadMeter:
    """CPU seconds other processes used while a measurement ran (ours excluded).

    Busy CPU time of the whole machine minus this process's and its waited-for children's.
    Use it around code whose child processes have exited (subprocess.run / communicate).
    """

    def __enter__(self) -> LoadMeter:
        import psutil

        self._sys0 = psutil.cpu_times()
        self._own0 = os.times()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        import psutil

        sys1 = psutil.cpu_times()
        own1 = os.times()
        busy = ((sys1.user + sys1.system + getattr(sys1, "nice", 0) + getattr(sys1, "irq", 0)
                 + getattr(sys1, "softirq", 0))
                - (self._sys0.user + self._sys0.system + getattr(self._sys0, "nice", 0)
                   + getattr(self._sys0, "irq", 0) + getattr(self._sys0, "softirq", 0)))
        own = ((own1.user + own1.system + own1.children_user + own1.children_system)
               - (self._own0.user + self._own0.system + self._own0.children_user
                  + self._own0.children_system))
        self.wall = time.perf_counter() - self._t0
        self.own_cpu = own
        self.other_cpu = max(0.0, busy - own)
        self.other_cores = self.other_cpu / self.wall if self.wall else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"wall_s": self.wall, "own_cpu_s": self.own_cpu, "other_cpu_s": self.other_cpu,
                "other_cores_avg": self.other_cores}


def measured(name: str, fn: Any, loads: dict[str, Any], wait_quiet: float = 180.0,
             retries: int = 1, busy_limit: float = 0.1) -> Any:
    """``fn()`` on a quiet machine: wait for quiet, run, and run again (up to ``retries`` times)
    if other processes used more than ``busy_limit`` cores on average meanwhile. The load of the
    kept attempt goes into ``loads[name]``."""
    for attempt in range(retries + 1):
        wait_for_quiet(wait_quiet)
        with LoadMeter() as meter:
            value = fn()
        loads[name] = {**meter.as_dict(), "attempt": attempt + 1}
        if meter.other_cores <= busy_limit:
            break
        if attempt < retries:
            print(f"  (other processes used {meter.other_cores:.2f} cores during {name}; "
                  f"measuring it again)", flush=True)
        else:
            print(f"  warning: other processes used {meter.other_cores:.2f} cores on average "
                  f"during {name}; its figure is inflated", flush=True)
    return value
