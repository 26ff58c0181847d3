"""One command's fixed cost: what a `sparkvision` command pays before (and besides) its work.

Measures, each ``--repeats`` times (median and every run, wall seconds of a fresh process):

* ``sparkvision --help`` and ``sparkvision train --help``;
* every user error that needs no Spark (a bad import path, a missing data folder, an unknown
  network, a missing prediction input, a missing model folder for each command that reads
  one, a missing stream input): its exit code and stderr line too;
* ``import torch`` alone, ``import pyspark`` alone, ``import sparkvision.cli``;
* a JVM start: ``SparkSession.builder.master('local[2]').getOrCreate()`` then ``stop()``
  (and the same through ``sparkvision.session.get_spark``);
* ``sparkvision predict`` of 10 PNG images with a tiny model (digits, 1 epoch, made once),
  with a breakdown: Python start, CLI imported, session requested, session ready, first
  Spark job submitted, end.

Results go under ``runs[LABEL]`` of bench/results/cli_fixed_cost.json (other labels already
in the file are kept). ``--baseline SRC`` (a folder holding another version's ``sparkvision``
package, e.g. an old commit's ``src`` from ``git archive``) measures that version too, under
``runs[BASELINE_LABEL]``, interleaved run by run with this one: on a shared machine whose
load drifts, both see the same load. Run it under ``flock /tmp/sv-heavy.lock`` so benchmarks
do not overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, RESULTS_DIR, cli_env, machine, run_cli, write_result  # noqa: E402

NAME = "cli_fixed_cost"
MASTER = ["--master", "local[2]"]

#: Runs ``sparkvision ARGV`` in this process with marks (time.time()) at each phase; prints
#: them as JSON on stderr's last line. The bench's own instrumentation, not the CLI's.
_TIMED_CLI = r"""
import json, sys, threading, time
marks = {"python_started": time.time()}
import sparkvision.cli as cli
marks["cli_imported"] = time.time()
import sparkvision.cli.common as common

def watch_jobs(spark):
    # every Spark job: (id, its first stage's name, first seen, seen finished), polled
    tracker = spark.sparkContext.statusTracker()
    seen = {}
    while not done.is_set():
        try:
            ids = set(tracker.getActiveJobsIds()) | set(tracker.getJobIdsForGroup(None))
            now = time.time()
            for job in ids:
                if job not in seen:
                    info = tracker.getJobInfo(job)
                    stages = info.stageIds if info else []
                    stage = tracker.getStageInfo(min(stages)) if stages else None
                    seen[job] = {"id": job, "name": stage.name if stage else "", "start": now,
                                 "end": None}
                    marks.setdefault("first_job", now)
                if seen[job]["end"] is None:
                    info = tracker.getJobInfo(job)
                    if info is not None and info.status in ("SUCCEEDED", "FAILED"):
                        seen[job]["end"] = now
        except Exception:
            break
        marks["jobs"] = sorted(seen.values(), key=lambda j: j["id"])
        time.sleep(0.02)

done = threading.Event()
original = common.spark_session

def timed_session(args):
    marks.setdefault("session_requested", time.time())
    spark = original(args)
    if "session_ready" not in marks:
        marks["session_ready"] = time.time()
        threading.Thread(target=watch_jobs, args=(spark,), daemon=True).start()
    return spark

for name, module in list(sys.modules.items()):
    if name.startswith("sparkvision.cli") and getattr(module, "spark_session", None) is original:
        module.spark_session = timed_session
rc = cli.main(sys.argv[1:])
marks["main_returned"] = time.time()
done.set()
sys.stderr.write("\n" + json.dumps({"rc": rc, "marks": marks}) + "\n")
sys.exit(rc)
"""

_JVM_PLAIN = r"""
import json, time
t0 = time.perf_counter()
from pyspark.sql import SparkSession
t1 = time.perf_counter()
spark = SparkSession.builder.master("local[2]").getOrCreate()
t2 = time.perf_counter()
spark.stop()
t3 = time.perf_counter()
print(json.dumps({"import_pyspark_sql": t1 - t0, "get_or_create": t2 - t1, "stop": t3 - t2}))
"""

_JVM_GET_SPARK = r"""
import json, sys, time
t0 = time.perf_counter()
from sparkvision.session import get_spark
t1 = time.perf_counter()
spark = get_spark("local[2]", jvm_log=sys.argv[1])
t2 = time.perf_counter()
spark.stop()
t3 = time.perf_counter()
print(json.dumps({"import_session": t1 - t0, "get_spark": t2 - t1, "stop": t3 - t2}))
"""


NOTES = [
    "imports of torch, pyspark, pyspark.sql, a bare python and the plain-builder JVM start do "
    "not depend on sparkvision's version: measured under the first label only",
    "with --baseline, every other measurement alternates between the versions run by run",
    "bad_input: exit_codes and the first stderr line of the last run; stderr_lines = its "
    "line count",
]


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def timed(cmd: list[str], env: dict[str, str], timeout_s: float = 600
          ) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=timeout_s,
                          check=False)
    return time.perf_counter() - started, done


def python_snippet(code: str, envs: dict[str, dict[str, str]], repeats: int, *argv: str
                   ) -> dict[str, dict[str, Any]]:
    """Per label: wall seconds of ``python -c code`` and the JSON it prints (per-phase
    seconds), the labels' runs interleaved."""
    walls: dict[str, list[float]] = {k: [] for k in envs}
    phases: dict[str, list[dict[str, float]]] = {k: [] for k in envs}
    for _ in range(repeats):
        for label, env in envs.items():
            wall, done = timed([sys.executable, "-c", code, *argv], env)
            if done.returncode != 0:
                raise SystemExit(f"snippet failed:\n{done.stderr.decode()[-3000:]}")
            walls[label].append(wall)
            out = done.stdout.decode().strip()
            if out:
                phases[label].append(json.loads(out.splitlines()[-1]))
    results = {}
    for label in envs:
        result: dict[str, Any] = {"median_s": _median(walls[label]),
                                  "runs_s": [round(w, 3) for w in walls[label]]}
        if phases[label]:
            result["phases_median_s"] = {k: _median([p[k] for p in phases[label]])
                                         for k in phases[label][0]}
        results[label] = result
    return results


def cli_case(argv: list[str], envs: dict[str, dict[str, str]], repeats: int
             ) -> dict[str, dict[str, Any]]:
    """Per label: wall seconds, exit code and stderr of ``sparkvision ARGV``, the labels'
    runs interleaved."""
    walls: dict[str, list[float]] = {k: [] for k in envs}
    rcs: dict[str, set[int]] = {k: set() for k in envs}
    errs: dict[str, str] = {}
    for _ in range(repeats):
        for label, env in envs.items():
            wall, done = timed([sys.executable, "-m", "sparkvision", *argv], env)
            walls[label].append(wall)
            rcs[label].add(done.returncode)
            errs[label] = done.stderr.decode()
    results = {}
    for label in envs:
        lines = errs[label].strip().splitlines()
        results[label] = {"argv": argv, "median_s": _median(walls[label]),
                          "runs_s": [round(w, 3) for w in walls[label]],
                          "exit_codes": sorted(rcs[label]), "stderr_lines": len(lines),
                          "stderr": (lines[0] if lines else "")[:300]}
    return results


def make_images(folder: Path, n: int) -> None:
    """``n`` 8x8 PNG digits (scikit-learn's) in class sub-folders."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(n):
        pixels = (digits.images[i] * (255 / 16)).clip(0, 255).astype("uint8")
        target = folder / str(int(digits.target[i]))
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target / f"{i:03d}.png")


def _predict_once(model: Path, images: Path, out: Path, env: dict[str, str]
                  ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """One `sparkvision predict` of the images with the marks of ``_TIMED_CLI``: (phase
    seconds, its Spark jobs)."""
    spawned = time.time()
    wall, done = timed([sys.executable, "-c", _TIMED_CLI, "predict", str(model), str(images),
                        "--out", str(out), *MASTER, "-q", "--json"], env)
    report = json.loads(done.stderr.decode().strip().splitlines()[-1])
    if report["rc"] != 0:
        raise SystemExit(f"predict exited {report['rc']}:\n{done.stderr.decode()[-3000:]}")
    rows = json.loads(done.stdout.decode().strip().splitlines()[-1])["rows"]
    m = report["marks"]
    first_job = m.get("first_job", m["main_returned"])
    phases = {
        "wall": wall,
        "rows": rows,
        "python_start": m["python_started"] - spawned,
        "import_cli": m["cli_imported"] - m["python_started"],
        "to_session_request": m["session_requested"] - m["cli_imported"],
        "session_start": m["session_ready"] - m["session_requested"],
        "session_to_first_job": first_job - m["session_ready"],
        "first_job_to_end": m["main_returned"] - first_job,
        "exit": spawned + wall - m["main_returned"],
        "to_session_ready": m["session_ready"] - spawned,
        "to_first_job": first_job - spawned,
    }
    ready = m["session_ready"]
    jobs = [{"id": j["id"], "name": j["name"], "start_s": round(j["start"] - ready, 2),
             "seconds": round((j["end"] or m["main_returned"]) - j["start"], 2)}
            for j in m.get("jobs", [])]
    return phases, jobs


def timed_predict(model: Path, images: Path, out: Path, envs: dict[str, dict[str, str]],
                  repeats: int) -> dict[str, dict[str, Any]]:
    """Per label: `sparkvision predict` of the images, phase by phase, interleaved."""
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in envs}
    jobs: dict[str, list[dict[str, Any]]] = {}
    for i in range(repeats):
        for label, env in envs.items():
            phases, jobs[label] = _predict_once(model, images, out / f"p-{label}-{i}.parquet",
                                                env)
            runs[label].append(phases)
    results = {}
    for label, items in runs.items():
        keys = [k for k in items[0] if k not in ("wall", "rows")]
        results[label] = {
            "median_s": _median([r["wall"] for r in items]),
            "rows": items[0]["rows"],
            "phases_median_s": {k: _median([r[k] for r in items]) for k in keys},
            "runs": [{k: round(v, 3) for k, v in r.items()} for r in items],
            "jobs_of_last_run": jobs[label],
            "jobs_note": "each Spark job of the last run: its start after the session was "
                         "ready and its duration, seen by polling the status tracker every "
                         "20 ms; name = its first stage's"}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--label", default="after",
                        help="key under 'runs' in the results file for this version")
    parser.add_argument("--baseline", default=None, metavar="SRC",
                        help="folder holding another version's sparkvision package, measured "
                        "interleaved with this one")
    parser.add_argument("--baseline-label", default="before")
    parser.add_argument("--commit", default="", help="what this version is (noted)")
    parser.add_argument("--baseline-commit", default="", help="what the baseline is (noted)")
    parser.add_argument("--skip-predict", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sv-bench-fixed-"))
    base_env = cli_env(work / "logs")
    envs = {args.label: dict(base_env, PYTHONPATH=str(REPO / "src"))}
    if args.baseline:
        envs[args.baseline_label] = dict(base_env,
                                         PYTHONPATH=str(Path(args.baseline).resolve()))
    first = {args.label: envs[args.label]}
    r = args.repeats
    started = time.monotonic()
    loads = [round(os.getloadavg()[0], 2)]
    results: dict[str, dict[str, Any]] = {label: {"repeats": r} for label in envs}

    def put(section: str, name: str, per_label: dict[str, dict[str, Any]]) -> None:
        for label, item in per_label.items():
            results[label].setdefault(section, {})[name] = item
            extra = (f" rc={item['exit_codes']} {item['stderr'][:100]}"
                     if "exit_codes" in item else "")
            print(f"{label:<7s} {name:<26s} {item['median_s']:7.3f} s{extra}", flush=True)

    for name, argv in {"help": ["--help"], "train_help": ["train", "--help"]}.items():
        put("help", name, cli_case(argv, envs, r))

    put("imports", "sparkvision_cli", python_snippet("import sparkvision.cli", envs, r))
    for name, code in (("torch", "import torch"), ("pyspark", "import pyspark"),
                       ("pyspark_sql", "import pyspark.sql"), ("python_bare", "pass")):
        put("imports", name, python_snippet(code, first, r))  # the same for every version

    # what the bad inputs point at: a prepared folder and a model (made once)
    data, model = work / "digits", work / "model"
    images = work / "images"
    make_images(images, 10)
    run_cli(["prepare", "digits", "--out", str(data), *MASTER], envs[args.label])
    run_cli(["train", str(data), "--out", str(model), "--epochs", "1", *MASTER],
            envs[args.label])
    missing = str(work / "missing")
    bad = {
        "train_bad_import_path": ["train", str(data), "--out", str(work / "m"), "--model",
                                  "nosuch.mod:fn"],
        "train_missing_attribute": ["train", str(data), "--out", str(work / "m"), "--model",
                                    "json:nosuchfn"],
        "train_missing_data": ["train", missing, "--out", str(work / "m")],
        "train_unknown_network": ["train", str(data), "--out", str(work / "m"), "--model",
                                  "nosuchnet"],
        "tune_bad_import_path": ["tune", str(data), "--out", str(work / "t"), "--space",
                                 '{"learningRate": [0.01]}', "--model", "nosuch.mod:fn"],
        "predict_missing_input": ["predict", str(model), missing, "--out",
                                  str(work / "p.parquet")],
        "predict_missing_model": ["predict", missing, str(images), "--out",
                                  str(work / "p.parquet")],
        "evaluate_missing_model": ["evaluate", missing, str(data)],
        "export_missing_model": ["export", missing, "--out", str(work / "x.onnx")],
        "explain_missing_model": ["explain", missing, str(data)],
        "featurize_missing_model": ["featurize", missing, str(data), "--out",
                                    str(work / "f.parquet")],
        "stream_missing_model": ["stream", missing, "--input", str(images), "--out",
                                 str(work / "s"), "--checkpoint", str(work / "c"),
                                 "--available-now"],
        "stream_missing_input": ["stream", str(model), "--input", missing, "--out",
                                 str(work / "s"), "--checkpoint", str(work / "c"),
                                 "--available-now"],
    }
    for name, argv in bad.items():
        put("bad_input", name, cli_case([*argv, *MASTER, "-q"], envs, r))

    put("jvm_start", "plain_builder", python_snippet(_JVM_PLAIN, first, r))
    put("jvm_start", "get_spark", python_snippet(_JVM_GET_SPARK, envs, r,
                                                 str(work / "logs" / "jvm.log")))
    if not args.skip_predict:
        for label, item in timed_predict(model, images, work, envs, r).items():
            results[label]["predict_10_images"] = item
            print(f"{label:<7s} predict 10 images {item['median_s']:7.3f} s "
                  f"{item['phases_median_s']}", flush=True)
    loads.append(round(os.getloadavg()[0], 2))

    path = RESULTS_DIR / f"{NAME}.json"
    runs: dict[str, Any] = {}
    if path.exists():
        runs = json.loads(path.read_text()).get("runs", {})
    commits = {args.label: args.commit, args.baseline_label: args.baseline_commit}
    for label, result in results.items():
        runs[label] = {"commit": commits[label], "machine": machine(),
                       "load_avg_1m_start_end": loads,
                       "interleaved_with": [k for k in envs if k != label],
                       "bench_seconds": round(time.monotonic() - started, 1), **result}
    write_result(NAME, {"unit": "wall seconds of a fresh process (median of repeats)",
                        "notes": NOTES, "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    main()
