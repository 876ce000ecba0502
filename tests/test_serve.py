"""rnnkit serve: the FastAPI app against the classifier's own one-shot predictions (TestClient),
its limits and bad input, and one real uvicorn server in a subprocess spoken to with httpx and
websockets."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
websockets = pytest.importorskip("websockets")

from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from rnnkit.cli import main  # noqa: E402
from rnnkit.serve import Limits, make_app  # noqa: E402
from rnnkit.tasks import classify  # noqa: E402

POS = ["great", "good", "lovely", "fun"]
NEG = ["bad", "awful", "boring", "poor"]
FILL = "the movie was really quite a story with actors".split()
TRANSCRIPT = "hello the movie was really great, quite a lovely story. but the actors were bad"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("serve")
    rng = random.Random(0)
    with open(d / "train.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        for _ in range(60):
            y = rng.random() < 0.5
            words = [rng.choice(FILL) for _ in range(rng.randint(2, 6))]
            words.insert(rng.randrange(len(words) + 1), rng.choice(POS if y else NEG))
            w.writerow(["pos" if y else "neg", " ".join(words)])
    out = d / "run"
    assert main(["train", "classify", "--data", str(d / "train.csv"), "--steps", "4",
                 "--hidden", "8", "--embed", "8", "--quiet", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def clf(run_dir):
    return classify.load(run_dir)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def chunks(text: str, seed: int) -> list[str]:
    rng, out, i = random.Random(seed), [], 0
    while i < len(text):
        n = rng.randint(1, 9)
        out.append(text[i:i + n])
        i += n
    return out


def assert_probs(got: dict[str, float], want: np.ndarray, labels: list[str]) -> None:
    assert list(got) == labels
    np.testing.assert_allclose([got[k] for k in labels], want, atol=1e-5)


def test_predict_equals_one_shot(run_dir, clf) -> None:
    c = TestClient(make_app(run_dir))
    texts = ["great movie", "bad actors", "", "a story ünïcødé ☎"]
    r = c.post("/v1/run/predict", json={"texts": texts})
    assert r.status_code == 200
    res = r.json()["results"]
    want = clf.predict_proba(texts)
    assert [x["label"] for x in res] == clf.predict(texts)
    for x, w in zip(res, want, strict=True):
        assert_probs(x["probs"], w, clf.labels)
    one = c.post("/v1/run/predict", json={"text": "great movie"}).json()["results"]
    assert one[0]["label"] == res[0]["label"]  # batched or alone: the same (to float error)
    assert_probs(one[0]["probs"], want[0], clf.labels)


def test_info_and_health(run_dir, clf) -> None:
    c = TestClient(make_app({"sms": run_dir}, Limits(max_sessions=7)))
    info = c.get("/v1/models").json()
    m = info["models"][0]
    assert m["name"] == "sms" and m["task"] == "classify" and m["labels"] == clf.labels
    assert m["params"] == sum(p.numel() for p in clf.model.parameters())
    assert m["threshold"] == pytest.approx(clf.threshold)
    assert m["positive"] == clf.labels[clf.positive]
    assert info["limits"]["max_sessions"] == 7
    assert c.get("/info").json() == info
    h = c.get("/healthz").json()
    assert h["status"] == "ok" and h["sessions"] == 0 and h["models"] == ["sms"]
    page = c.get("/")
    assert page.status_code == 200 and "/stream" in page.text and "http" not in \
        page.text.replace("location.protocol", "").replace("https:", "")  # no CDN


def test_websocket_stream_equals_one_shot_of_every_prefix(run_dir, clf) -> None:
    c = TestClient(make_app(run_dir))
    parts = chunks(TRANSCRIPT, 1)
    with c.websocket_connect("/v1/run/stream") as ws:
        hello = ws.receive_json()
        assert hello["seq"] == 0 and hello["session"]
        sofar = ""
        for i, p in enumerate(parts, 1):
            ws.send_text(p)
            sofar += p
            r = ws.receive_json()
            assert r["seq"] == i and r["chars"] == len(sofar)
            want = clf.predict_proba([sofar])
            assert_probs(r["probs"], want[0], clf.labels)
            assert r["label"] == clf.predict([sofar])[0]
    assert c.get("/healthz").json()["sessions"] == 0  # closed with the socket


def test_many_http_sessions_are_independent(run_dir, clf) -> None:
    c = TestClient(make_app(run_dir))
    texts = [TRANSCRIPT, "bad boring poor actors", "fun fun fun", "the story"]
    ids = [c.post("/v1/run/sessions").json()["session"] for _ in texts]
    assert len(set(ids)) == len(ids)
    parts = [chunks(t, k) for k, t in enumerate(texts)]
    sofar = [""] * len(texts)
    for step in range(max(map(len, parts))):  # interleaved feeding
        for k, sid in enumerate(ids):
            if step < len(parts[k]):
                sofar[k] += parts[k][step]
                r = c.post(f"/v1/sessions/{sid}/feed", json={"text": parts[k][step]})
                assert r.status_code == 200 and r.json()["seq"] == step + 1
                assert_probs(r.json()["probs"], clf.predict_proba([sofar[k]])[0], clf.labels)
    r = c.delete(f"/v1/sessions/{ids[0]}")
    assert r.json() == {"closed": ids[0], "chunks": len(parts[0]), "chars": len(texts[0])}
    r = c.post(f"/v1/sessions/{ids[0]}/feed", json={"text": "x"})
    assert r.status_code == 404 and "unknown session" in r.json()["error"]
    assert c.post(f"/v1/sessions/{ids[1]}/feed", json={"text": "!"}).status_code == 200


def test_limits_give_4xx_naming_the_limit(run_dir) -> None:
    lim = Limits(max_sessions=2, max_chunk_chars=10, max_text_chars=20, max_body_bytes=300,
                 max_texts=3)
    c = TestClient(make_app(run_dir, lim))
    a = c.post("/v1/run/sessions").json()["session"]
    c.post("/v1/run/sessions")
    r = c.post("/v1/run/sessions")
    assert r.status_code == 429 and r.json()["limit"] == "max_sessions"
    assert "max_sessions is 2" in r.json()["error"]
    with c.websocket_connect("/v1/run/stream") as ws:  # full as well
        assert ws.receive_json()["limit"] == "max_sessions"
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_json()
        assert e.value.code == 1013
    r = c.post(f"/v1/sessions/{a}/feed", json={"text": "x" * 11})
    assert r.status_code == 413 and r.json()["limit"] == "max_chunk_chars"
    assert "11 characters" in r.json()["error"]
    r = c.post("/v1/run/predict", json={"texts": ["a"] * 4})
    assert r.status_code == 413 and r.json()["limit"] == "max_texts"
    r = c.post("/v1/run/predict", json={"texts": ["a" * 21]})
    assert r.status_code == 413 and r.json()["limit"] == "max_text_chars"
    r = c.post("/v1/run/predict", content=json.dumps({"texts": ["a" * 400]}))
    assert r.status_code == 413 and r.json()["limit"] == "max_body_bytes"
    c.delete(f"/v1/sessions/{a}")
    with c.websocket_connect("/v1/run/stream") as ws:  # room again; too long a chunk closes
        ws.receive_json()
        ws.send_text("y" * 11)
        assert ws.receive_json()["limit"] == "max_chunk_chars"
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_json()
        assert e.value.code == 1009


def test_bad_input_gives_clear_errors(run_dir) -> None:
    c = TestClient(make_app(run_dir))
    cases = [
        (b'{"texts": ["ok"', 400, "not valid JSON"),
        (b'{"texts": ["\xff\xfe"]}', 400, "not valid UTF-8"),
        (b'["a"]', 422, "JSON object"),
        (b'{"texts": "one string"}', 422, "non-empty list"),
        (b'{"texts": []}', 422, "non-empty list"),
        (b'{"texts": ["a", 3]}', 422, "texts[1] must be a string, got int"),
    ]
    for body, status, msg in cases:
        r = c.post("/v1/run/predict", content=body)
        assert r.status_code == status and msg in r.json()["error"], (body, r.json())
    r = c.post("/v1/nope/predict", json={"texts": ["a"]})
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    assert "served: run" in r.json()["error"]
    sid = c.post("/v1/run/sessions").json()["session"]
    r = c.post(f"/v1/sessions/{sid}/feed", json={"text": 5})
    assert r.status_code == 422 and "'text' must be a string" in r.json()["error"]
    r = c.post(f"/v1/sessions/{sid}/feed", json={"chunk": "a"})
    assert r.status_code == 422 and "feed needs" in r.json()["error"]
    with c.websocket_connect("/v1/nope/stream") as ws:
        assert "unknown model" in ws.receive_json()["error"]
    with c.websocket_connect("/v1/run/stream") as ws:
        ws.receive_json()
        ws.send_bytes(b"\x00\x01")
        assert "binary frames" in ws.receive_json()["error"]
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_json()
        assert e.value.code == 1003
    # the session opened before the faults still works
    assert c.post(f"/v1/sessions/{sid}/feed", json={"text": "great"}).status_code == 200


def test_idle_sessions_expire(run_dir) -> None:
    clock = Clock()
    app = make_app(run_dir, Limits(max_sessions=1, idle_timeout=10), clock=clock)
    c = TestClient(app)
    a = c.post("/v1/run/sessions").json()["session"]
    clock.t = 9
    assert c.post(f"/v1/sessions/{a}/feed", json={"text": "hi"}).status_code == 200
    clock.t = 18  # 9 s after the last feed: still alive, and the table is full
    assert c.post("/v1/run/sessions").status_code == 429
    clock.t = 19.5
    assert c.get("/healthz").json()["sessions"] == 0
    r = c.post(f"/v1/sessions/{a}/feed", json={"text": "hi"})
    assert r.status_code == 404 and "expired" in r.json()["error"]
    assert c.post("/v1/run/sessions").status_code == 201  # room again
    assert app.state.sessions.expired == 1


def test_idle_server_hands_memory_back_once_per_busy_spell(run_dir) -> None:
    """When the last session has closed, the sweeper trims the heap (once, until sessions come
    again); never while a session is live."""
    app = make_app(run_dir, sweep_every=0.02)

    def trims(c: TestClient, want: int) -> int:
        for _ in range(200):
            n = c.get("/healthz").json()["memory_trims"]
            if n >= want:
                break
            time.sleep(0.01)
        return n

    with TestClient(app) as c:
        a = c.post("/v1/run/sessions").json()["session"]
        c.post(f"/v1/sessions/{a}/feed", json={"text": "hello"})
        time.sleep(0.1)
        assert c.get("/healthz").json()["memory_trims"] == 0  # a live session: no trim
        c.delete(f"/v1/sessions/{a}")
        assert trims(c, 1) == 1
        time.sleep(0.1)
        assert c.get("/healthz").json()["memory_trims"] == 1  # idle since: not again
        b = c.post("/v1/run/sessions").json()["session"]
        c.delete(f"/v1/sessions/{b}")
        assert trims(c, 2) == 2


def test_bidirectional_model_predicts_but_refuses_to_stream(run_dir, clf) -> None:
    from rnnkit.tasks.classify.api import TextClassifier
    from rnnkit.tasks.classify.model import Classifier

    torch.manual_seed(0)
    m = Classifier(clf.tok.vocab_size, 2, embed=4, hidden=4, bidirectional=True, pool="mean")
    bi = TextClassifier(m, clf.tok, ["a", "b"])
    c = TestClient(make_app({"bi": bi}))
    assert c.post("/v1/bi/predict", json={"texts": ["x"]}).status_code == 200
    r = c.post("/v1/bi/sessions")
    assert r.status_code == 422 and "bidirectional" in r.json()["error"]


@pytest.mark.parametrize("cell,pool,kind", [("gru", "max", "char"), ("lstm", "attention", "word"),
                                            ("lstm", "last", "char"), ("gru", "mean", "word")])
def test_feed_many_equals_feed_and_one_shot(cell, pool, kind) -> None:
    """Micro-batching's batched step: ragged rows (empty chunks, held-back words) give what
    feeding each session alone gives, and the one-shot probabilities of each prefix."""
    from rnnkit.data.tokenizers import build_tokenizer
    from rnnkit.tasks.classify.api import StreamSession, TextClassifier
    from rnnkit.tasks.classify.model import Classifier

    torch.manual_seed(1)
    tok = build_tokenizer(kind, [TRANSCRIPT, *POS, *NEG, *FILL])
    m = Classifier(tok.vocab_size, 3, cell=cell, embed=6, hidden=5, layers=2, pool=pool)
    clf = TextClassifier(m, tok, ["a", "b", "c"], max_len=None)
    texts = [TRANSCRIPT, "bad boring", "", "fun lovely story the actors"]
    parts = [chunks(t, k) for k, t in enumerate(texts)]
    A, B = [clf.stream() for _ in texts], [clf.stream() for _ in texts]
    sofar = [""] * len(texts)
    for step in range(max(map(len, parts))):
        ch = [p[step] if step < len(p) else "" for p in parts]
        one = [a.feed(c) for a, c in zip(A, ch, strict=True)]
        many = StreamSession.feed_many(B, ch)
        sofar = [x + c for x, c in zip(sofar, ch, strict=True)]
        want = clf.predict_proba(sofar)
        for o, g, w in zip(one, many, want, strict=True):
            assert_probs(g, np.array(list(o.values())), clf.labels)
            assert_probs(g, w, clf.labels)
    with pytest.raises(ValueError, match="distinct sessions"):
        StreamSession.feed_many([B[0], B[0]], ["a", "b"])


def test_concurrent_websockets_are_batched_and_exact(run_dir, clf) -> None:
    app = make_app(run_dir, Limits(batch_wait_ms=20))
    n = 6
    parts = [chunks(TRANSCRIPT[k:], k) for k in range(n)]
    with TestClient(app) as c:
        socks = [c.websocket_connect("/v1/run/stream").__enter__() for _ in range(n)]
        for ws in socks:
            ws.receive_json()
        sofar = [""] * n
        for step in range(min(map(len, parts))):
            for k, ws in enumerate(socks):  # all sent before any reply is read
                ws.send_text(parts[k][step])
                sofar[k] += parts[k][step]
            for k, ws in enumerate(socks):
                r = ws.receive_json()
                assert r["seq"] == step + 1
                assert_probs(r["probs"], clf.predict_proba([sofar[k]])[0], clf.labels)
        for ws in socks:
            ws.__exit__(None, None, None)
        h = c.get("/healthz").json()
    assert h["batched_chunks"] == n * min(map(len, parts))
    assert h["batches"] < h["batched_chunks"]  # some chunks really went together


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(run_dir: Path, port: int, *flags: str):
    """``python -m rnnkit.serve_cli clf=RUN`` on ``port`` until the block ends."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "rnnkit.serve_cli", f"clf={run_dir}",
                             "--port", str(port), "--log-level", "warning", *flags], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("server did not start: " + proc.stdout.read().decode())
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_real_uvicorn_server(run_dir, clf) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with server(run_dir, port, "--max-sessions", "3") as proc:
        texts = ["great movie", "bad"]
        got = httpx.post(base + "/v1/clf/predict", json={"texts": texts}).json()["results"]
        assert [g["label"] for g in got] == clf.predict(texts)

        async def stream(seed: int) -> None:
            parts = chunks(TRANSCRIPT, seed)
            async with websockets.connect(f"ws://127.0.0.1:{port}/v1/clf/stream") as ws:
                assert json.loads(await ws.recv())["seq"] == 0
                sofar = ""
                for i, p in enumerate(parts, 1):
                    await ws.send(p)
                    sofar += p
                    r = json.loads(await ws.recv())
                    assert r["seq"] == i
                    assert_probs(r["probs"], clf.predict_proba([sofar])[0], clf.labels)

        async def drop_midway() -> None:  # a client that vanishes mid-session
            ws = await websockets.connect(f"ws://127.0.0.1:{port}/v1/clf/stream")
            await ws.recv()
            await ws.send("half a sent")
            ws.transport.abort()

        async def both() -> None:
            await drop_midway()
            await asyncio.gather(stream(1), stream(2))

        asyncio.run(both())
        for _ in range(50):  # the dropped session is freed
            if httpx.get(base + "/healthz").json()["sessions"] == 0:
                break
            time.sleep(0.1)
        assert httpx.get(base + "/healthz").json()["sessions"] == 0

        async def open_then_sigterm() -> int:  # graceful shutdown closes live streams
            async with websockets.connect(f"ws://127.0.0.1:{port}/v1/clf/stream") as ws:
                await ws.recv()
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(websockets.ConnectionClosed) as e:
                    await asyncio.wait_for(ws.recv(), 20)
                return e.value.rcvd.code

        assert asyncio.run(open_then_sigterm()) in (1001, 1012)
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
        log = proc.stdout.read().decode()
        assert "Traceback" not in log, log
        lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
        pred = [x for x in lines if x.get("path") == "/v1/clf/predict"]  # structured access log
        assert len(pred) == 1 and pred[0]["method"] == "POST" and pred[0]["status"] == 200
        ends = [x["end"] for x in lines if "ws" in x]
        assert "client disconnected" in ends and ends.count("client closed") >= 2


def test_lm_and_translate_predict_equal_their_api(tmp_path) -> None:
    from rnnkit.tasks import load

    txt = tmp_path / "t.txt"
    txt.write_text(TRANSCRIPT * 20, encoding="utf-8")
    lm_run, tr_run = tmp_path / "lm", tmp_path / "tr"
    assert main(["train", "lm", "--data", str(txt), "--steps", "2", "--hidden", "8", "--embed",
                 "8", "--batch-size", "4", "--seq", "20", "--quiet", "--out",
                 str(lm_run)]) == 0
    assert main(["train", "translate", "--out", str(tr_run), "--steps", "2", "--hidden", "8",
                 "--embed", "8", "--synthetic-size", "100", "--eval-sentences", "4",
                 "--beam", "2", "--quiet"]) == 0
    c = TestClient(make_app({"lm": lm_run, "tr": tr_run}, Limits(max_sample_tokens=50)))
    tasks = {m["name"]: m["task"] for m in c.get("/v1/models").json()["models"]}
    assert tasks == {"lm": "lm", "tr": "translate"}
    r = c.post("/v1/lm/predict", json={"prompts": ["the ", "hello"], "length": 30, "seed": 3})
    assert r.status_code == 200
    lm = load(lm_run)
    assert [x["sample"] for x in r.json()["results"]] == \
        [lm.sample("the ", 30, 0.8, seed=3), lm.sample("hello", 30, 0.8, seed=3)]
    r = c.post("/v1/lm/predict", json={"prompts": ["a"], "length": 51})
    assert r.status_code == 413 and r.json()["limit"] == "max_sample_tokens"
    r = c.post("/v1/lm/predict", json={"prompts": ["a"], "length": 5, "temperature": "hot"})
    assert r.status_code == 422 and "temperature" in r.json()["error"]
    src = ["open the file", "close the window"]
    r = c.post("/v1/tr/predict", json={"texts": src, "beam": 2})
    assert [x["translation"] for x in r.json()["results"]] == load(tr_run).translate(src, beam=2)
    r = c.post("/v1/tr/predict", json={"texts": src, "beam": 17})
    assert r.status_code == 413 and r.json()["limit"] == "max_beam"
    r = c.post("/v1/lm/sessions")
    assert r.status_code == 422 and "streaming scores are for classifiers" in r.json()["error"]


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _page_state(url: str, profile: Path, timeout: float = 60.0) -> dict:
    """Open `url` in headless Chromium and poll the page over the DevTools protocol.

    Returns the page's chunk count, label and drawn bars once a scored chunk has arrived (or
    whatever they are when `timeout` seconds have passed). Real time, not virtual time: Chromium's
    --virtual-time-budget runs ahead of WebSocket traffic, so a --dump-dom can never see a reply.
    """
    from websockets.sync.client import connect

    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                             "--disable-background-networking", "--disable-quic", "--no-first-run",
                             "--disable-component-update", "--disable-sync",
                             f"--user-data-dir={profile}", "--remote-debugging-port=0", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        port = None
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                raise AssertionError(f"chromium exited with {proc.returncode} before DevTools")
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            port = m and int(m.group(1))
        assert port, "chromium printed no DevTools address"
        page = None
        while page is None and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                page = next((t for t in json.load(r) if t["type"] == "page"), None)
            time.sleep(0.1)
        assert page, "chromium opened no page"
        expr = ("JSON.stringify({seq: +document.getElementById('seq').textContent, "
                "label: document.getElementById('label').textContent, "
                "bars: document.getElementById('bars').textContent, "
                "log: document.getElementById('log').textContent})")
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            for i in itertools.count(1):
                ws.send(json.dumps({"id": i, "method": "Runtime.evaluate",
                                    "params": {"expression": expr, "returnByValue": True}}))
                while (reply := json.loads(ws.recv(timeout=10))).get("id") != i:
                    pass
                value = reply["result"]["result"].get("value")
                if value is None:  # the page is still loading: no document to read yet
                    assert time.monotonic() < deadline, reply
                    time.sleep(0.2)
                    continue
                state = json.loads(value)
                if state["seq"] >= 1 or time.monotonic() > deadline:
                    return state
                time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    raise AssertionError("unreachable")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs chromium: apt-get install -y "
                    "chromium")
def test_page_streams_a_transcript_in_headless_chromium(run_dir, tmp_path) -> None:
    port = _free_port()
    with server(run_dir, port):
        url = f"http://127.0.0.1:{port}/#play=" + urllib.parse.quote("the movie was great fun")
        state = _page_state(url, tmp_path / "chromium")
    assert state["seq"] >= 1, state
    assert state["label"] in ("neg", "pos"), state
    assert re.search(r"\d\.\d{3}", state["bars"]), state  # a drawn probability


def test_register_adds_the_serve_command() -> None:
    import argparse

    from rnnkit import serve_cli

    p = argparse.ArgumentParser()
    serve_cli.register(p.add_subparsers(dest="command"))
    a = p.parse_args(["serve", "a=runs/x", "runs/y", "--max-sessions", "5", "--idle-timeout",
                      "2.5", "--max-batch", "1"])
    assert a.host == "127.0.0.1" and a.port == 8000 and a.func is serve_cli.run
    assert (a.max_sessions, a.idle_timeout, a.max_batch) == (5, 2.5, 1)
    assert serve_cli.models_of(a.runs) == {"a": "runs/x", "y": "runs/y"}
    with pytest.raises(ValueError, match="two runs named 'y'"):
        serve_cli.models_of(["runs/y", "other/y"])
    with pytest.raises(SystemExit):
        p.parse_args(["serve", "r", "--max-sessions", "0"])
