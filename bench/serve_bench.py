"""Load on a real ``rnnkit serve`` (uvicorn in a subprocess, loopback only; bounded in sessions,
chunks and time, it stops by itself). Run it under ``flock /work/.cpu.lock``:

    python bench/serve_bench.py [--run RUN] [--sessions 200] [--chunks 100] [--timeout 900]
        [--max-batch 256 1] [--out bench/results/serve.json]

Without ``--run`` it trains the default-size classifier (GRU, hidden 256, embed 128, char
tokenizer) for 2 steps on synthetic text; speed does not depend on the weights.

Measures: one StreamSession.feed in-process (the floor); then ``--sessions`` concurrent
WebSocket sessions each streaming ``--chunks`` chunks of 20-80 characters, one in flight per
session (each reply's sequence number is checked: no lost or reordered chunk): latency per
chunk (p50, p99), chunks/s in all, and the CPU time per chunk of the load client and of the
server (both share the machine's cores); the same over HTTP sessions (POST feed); and the
server's RSS before, at peak, after the sessions close and after a second round. All of
it for each ``--max-batch`` (default 256 then 1: micro-batching's gain is the ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import websockets

WORDS = ("hello this is your bank calling about the account we noticed a suspicious payment "
         "please confirm your card number and the code we just sent you thanks for calling "
         "ok sure i can do that tomorrow lunch at noon see you").split()


def text_of(rng: random.Random, lo: int, hi: int) -> str:
    n, out = rng.randint(lo, hi), ""
    while len(out) < n:
        out += rng.choice(WORDS) + " "
    return out[:n]


def train_default(d: Path) -> Path:
    from rnnkit.cli import main

    rng = random.Random(0)
    with open(d / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        for i in range(200):
            w.writerow(["fraud" if i % 2 else "ok", text_of(rng, 30, 120)])
    out = d / "run"
    assert main(["train", "classify", "--data", str(d / "train.csv"), "--steps", "2",
                 "--quiet", "--out", str(out)]) == 0
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (``/proc/PID/stat``)."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def in_process(run: Path, chunks: list[str]) -> float:
    import torch

    from rnnkit.tasks import load

    torch.set_num_threads(1)
    s = load(run).stream()
    for c in chunks[:20]:
        s.feed(c)
    t = time.perf_counter()
    for c in chunks:
        s.feed(c)
    return (time.perf_counter() - t) / len(chunks) * 1e3


def rss_after_trim(base: str, pid: int, wait: float = 15.0) -> float:
    """The server's RSS once it has handed idle memory back (its sweeper does, within 5 s of
    the last session closing: ``memory_trims`` in /healthz goes up), or after ``wait``."""
    n0 = httpx.get(base + "/healthz").json().get("memory_trims", 0)
    t = time.monotonic()
    while time.monotonic() - t < wait:
        if httpx.get(base + "/healthz").json().get("memory_trims", 0) > n0:
            break
        time.sleep(0.2)
    return rss_mb(pid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def ws_load(port: int, sessions: int, chunks: int, seed: int) -> dict:
    lat: list[float] = []
    errors: list[str] = []

    async def one(k: int) -> None:
        rng = random.Random(seed * 100_003 + k)
        async with websockets.connect(f"ws://127.0.0.1:{port}/v1/bench/stream",
                                      max_queue=None) as ws:
            json.loads(await ws.recv())
            for i in range(1, chunks + 1):
                t = time.perf_counter()
                await ws.send(text_of(rng, 20, 80))
                r = json.loads(await ws.recv())
                lat.append(time.perf_counter() - t)
                if r.get("seq") != i:
                    errors.append(f"session {k}: expected seq {i}, got {r}")
                    return

    t = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(sessions)))
    wall = time.perf_counter() - t
    return summary(lat, wall, errors)


async def http_load(port: int, sessions: int, chunks: int, seed: int) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    base = f"http://127.0.0.1:{port}"
    limits = httpx.Limits(max_connections=sessions, max_keepalive_connections=sessions)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as c:
        async def one(k: int) -> None:
            rng = random.Random(seed * 100_003 + k)
            sid = (await c.post("/v1/bench/sessions")).json()["session"]
            for i in range(1, chunks + 1):
                t = time.perf_counter()
                r = (await c.post(f"/v1/sessions/{sid}/feed",
                                  json={"text": text_of(rng, 20, 80)})).json()
                lat.append(time.perf_counter() - t)
                if r.get("seq") != i:
                    errors.append(f"session {k}: expected seq {i}, got {r}")
                    return
            await c.delete(f"/v1/sessions/{sid}")

        t = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(sessions)))
        wall = time.perf_counter() - t
    return summary(lat, wall, errors)


def summary(lat: list[float], wall: float, errors: list[str]) -> dict:
    a = np.array(lat) * 1e3
    return {"chunks": len(lat), "wall_s": round(wall, 2),
            "chunks_per_s": round(len(lat) / wall, 1),
            "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "errors": errors[:5]}


def serve_once(run: Path, a: argparse.Namespace, max_batch: int) -> dict:
    """One server (``--max-batch max_batch``): the WebSocket and HTTP loads, RSS."""
    port = free_port()
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    n = max(a.sessions, a.http_sessions) + 10
    proc = subprocess.Popen([sys.executable, "-m", "rnnkit.serve_cli", f"bench={run}",
                             "--port", str(port), "--max-sessions", str(n), "--max-batch",
                             str(max_batch), "--log-level", "warning", "--no-access-log"],
                            env=env)
    res: dict = {}
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                httpx.get(base + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        res["rss_before_mb"] = round(rss_mb(proc.pid), 1)
        c0, s0 = time.process_time(), cpu_s(proc.pid)
        res["ws"] = asyncio.run(ws_load(port, a.sessions, a.chunks, 0))
        # where the 2 cores went: the load client (this process) and the server
        res["ws"]["client_cpu_ms_per_chunk"] = round(
            (time.process_time() - c0) / res["ws"]["chunks"] * 1e3, 3)
        res["ws"]["server_cpu_ms_per_chunk"] = round(
            (cpu_s(proc.pid) - s0) / res["ws"]["chunks"] * 1e3, 3)
        res["rss_peak_mb"] = round(rss_mb(proc.pid), 1)
        h = httpx.get(base + "/healthz").json()
        res["ws"]["mean_batch"] = round(h["batched_chunks"] / max(h["batches"], 1), 1)
        res["http"] = asyncio.run(http_load(port, a.http_sessions, a.http_chunks, 1))
        res["sessions_after"] = httpx.get(base + "/healthz").json()["sessions"]
        res["rss_after_mb"] = round(rss_after_trim(base, proc.pid), 1)
        # a second round of the same sessions: is memory flat once sessions close?
        asyncio.run(ws_load(port, a.sessions, 10, 2))
        res["rss_after_2nd_round_mb"] = round(rss_after_trim(base, proc.pid), 1)
        info = httpx.get(base + "/v1/models").json()["models"][0]
        res["model"] = {k: info[k] for k in ("cell", "hidden", "params")}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    print(json.dumps({f"max_batch={max_batch}": res}), flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="a classify run folder (default: train the default size)")
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--chunks", type=int, default=100)
    ap.add_argument("--http-sessions", type=int, default=50)
    ap.add_argument("--http-chunks", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=900, help="stop the whole run after this")
    ap.add_argument("--max-batch", type=int, nargs="+", default=[256, 1],
                    help="server --max-batch values to compare (gain = first / second)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: sys.exit("serve_bench: --timeout reached"))
    signal.alarm(int(a.timeout))

    tmp = tempfile.TemporaryDirectory()
    run = Path(a.run) if a.run else train_default(Path(tmp.name))
    rng = random.Random(1)
    floor = in_process(run, [text_of(rng, 20, 80) for _ in range(500)])

    res: dict = {"in_process_ms_per_chunk": round(floor, 3)}
    for mb in a.max_batch:
        res[f"max_batch={mb}"] = serve_once(run, a, mb)
    b, one = (res[f"max_batch={mb}"]["ws"]["chunks_per_s"] for mb in a.max_batch[:2]) \
        if len(a.max_batch) > 1 else (None, None)
    if b is not None:
        res["batching_gain"] = round(b / one, 2)
    res["config"] = {"sessions": a.sessions, "chunks": a.chunks,
                     "http_sessions": a.http_sessions, "http_chunks": a.http_chunks,
                     "chunk_chars": "20-80", "cpus": os.cpu_count()}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    bad = [k for k, v in res.items() if isinstance(v, dict) and "ws" in v
           and (v["ws"]["errors"] or v["http"]["errors"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
