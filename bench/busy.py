"""LM training throughput on a busy machine: quiet vs next to one competing CPU-bound process.

    flock /work/.cpu.lock python bench/busy.py            # ~2-3 minutes on 2 cores
    python bench/busy.py --minutes 0.2 --max-chars 200000  # a quick check of the script

Each condition is one ``rnnkit train lm`` run in its own process (the OpenMP wait policy is read
when torch loads, so it can only differ between processes), on rnnkit's own source (``src/``
as text, capped to ``--max-chars``; quicker to load than the stdlib corpus), for ``--minutes``
of training, no baseline n-gram and no sample. Its
throughput is the median ``items_per_s`` (characters/s) of its log intervals after the first
(``metrics.jsonl``). The competing job is a pure-Python ``while True`` loop (one core's worth),
started by this script before the training run and killed after it. Conditions:

* ``quiet``: rnnkit's defaults (idle OpenMP threads spin ``GOMP_SPINCOUNT`` = 1,000
  iterations, then sleep; threads = all cores), nothing else started;
* ``busy``: rnnkit's defaults next to the competing job;
* ``quiet, passive (before)`` / ``busy, passive (before)``: ``OMP_WAIT_POLICY=PASSIVE``
  (threads sleep at once), rnnkit's setting before the bounded spin;
* ``busy, torch defaults``: libgomp's own spin (300,000 iterations), what a run got before
  rnnkit set anything.

Prints a markdown table of chars/s and steps with ``ratio = busy / quiet`` (target for the
default ``busy`` row: >= 0.4x; ideal 0.5x on 2 cores), and writes it to ``--out``.
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

ROOT = Path(__file__).resolve().parents[1]
BUSY_LOOP = "while True:\n    pass\n"


def run_lm(out: Path, minutes: float, max_chars: int, env_extra: dict[str, str],
           flags: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep +
           os.environ.get("PYTHONPATH", "")}
    for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS"):
        env.pop(k, None)
    env.update(env_extra)
    cmd = [sys.executable, "-m", "rnnkit.cli", "train", "lm", "--out", str(out), "--minutes",
           str(minutes), "--max-chars", str(max_chars), "--data", str(ROOT / "src"),
           "--baseline-order", "0",
           "--sample-length", "0", "--eval-every", "100000", "--log-every", "10", "--quiet",
           *flags]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"training failed:\n{r.stderr[-3000:]}")
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    rates = [r["items_per_s"] for r in recs if "items_per_s" in r]
    rates = rates[1:] or rates
    steps = max(r.get("step", 0) for r in recs)
    notice = any("notice: training slowed" in line for line in r.stderr.splitlines())
    threads = next((line for line in r.stderr.splitlines() if line.startswith("threads:")), "")
    return {"chars_per_s": statistics.median(rates) if rates else float("nan"),
            "steps": steps, "notice": notice, "threads_line": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=0.4, help="training minutes per run")
    ap.add_argument("--max-chars", type=int, default=300_000)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--skip-old", action="store_true", help="skip the torch-defaults rows")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "busy-cpu.md"))
    a = ap.parse_args()

    conds = [("quiet", False, {}, []), ("busy", True, {}, [])]
    if not a.skip_old:
        passive = {"OMP_WAIT_POLICY": "PASSIVE"}
        conds += [("quiet, passive (before)", False, passive, []),
                  ("busy, passive (before)", True, passive, []),
                  ("busy, torch defaults", True, {"GOMP_SPINCOUNT": "300000"}, [])]
    res: dict[str, dict] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, busy, env, flags) in enumerate(conds):
            hog = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
            try:
                if hog is not None:
                    time.sleep(1.0)  # the other job is already running when training starts
                res[name] = run_lm(Path(tmp) / f"run{i}", a.minutes, a.max_chars, env, flags)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
            print(f"{name}: {res[name]}", file=sys.stderr, flush=True)
    quiet = res["quiet"]["chars_per_s"]
    lines = [f"LM training (rnnkit train lm, {a.minutes:g} min per run, max {a.max_chars:,} "
             f"chars), {a.cores} cores; competing job: one pure-Python busy loop; "
             f"{time.perf_counter() - t0:.0f} s in all",
             "", "| condition | chars/s | steps | vs quiet | target | notice |",
             "|---|---:|---:|---:|---:|---|"]
    for name, r in res.items():
        ratio = r["chars_per_s"] / quiet
        tgt = "≥ 0.40× " + ("✓" if ratio >= 0.4 else "✗") if name.startswith("busy") else ""
        lines.append(f"| {name} {r['threads_line']} | {r['chars_per_s']:,.0f} | "
                     f"{r['steps']:,} | **{ratio:.2f}×** | {tgt} | "
                     f"{'yes' if r['notice'] else ''} |")
    text = "\n".join(lines)
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text + "\n")
    Path(a.out).with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
