"""Live scores over HTTP and WebSocket (FastAPI on uvicorn): ``rnnkit serve RUN``.

A trained classifier answers one-shot batches and, for text that arrives piece by piece (a
call's transcript from speech-to-text), keeps one :class:`~rnnkit.tasks.classify.StreamSession`
per client: after every chunk the reply holds the probabilities of everything sent so far,
equal to the one-shot prediction of that text, at a cost proportional to the chunk.

Endpoints (``{model}`` is a served model's name, see ``GET /v1/models``):

  GET    /healthz  (/health)             {"status": "ok", "sessions": n}
  GET    /v1/models  (/info)              name, task, labels, positive, threshold, params, cell
  POST   /v1/{model}/predict              {"texts": [str, ...]} -> labels and probabilities
  POST   /v1/{model}/sessions             -> {"session": id}   (429 when full)
  POST   /v1/sessions/{id}/feed           {"text": chunk} -> {"seq", "probs", "label", "chars"}
  DELETE /v1/sessions/{id}                -> {"closed": id, "chunks": n}
  WS     /v1/{model}/stream               text frames are chunks; each reply is the JSON above
  GET    /                                a self-contained page that streams typed text

Limits (:class:`Limits`, each a ``rnnkit serve`` flag): at most ``max_sessions`` live sessions
(HTTP and WebSocket together; 429, or WebSocket close 1013), a session idle for
``idle_timeout`` seconds is dropped (404 afterwards; a WebSocket is closed with 1001),
``max_chunk_chars`` per chunk and ``max_text_chars`` per predicted text (413, WebSocket 1009),
``max_body_bytes`` per request body (413, checked while reading) and ``max_texts`` texts per
predict (413). Concurrent sessions' chunks are stepped together (:class:`Batcher`, at most
``max_batch`` rows per recurrent call). Bodies must be strict UTF-8 JSON (400 otherwise);
wrong fields or types are 422.
Every error is ``{"error": message, "limit": name-or-null}``.

Sessions live in the process that created them: with several server processes behind a load
balancer, route by session id (HTTP) and keep a WebSocket on its connection (sticky routing).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rnnkit.runtime import release_freed_memory

try:  # the serve extra; without it, Limits and the command's help still work
    from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
    from fastapi.responses import HTMLResponse, JSONResponse
except ImportError:  # pragma: no cover - exercised by a plain `pip install rnnkit`
    FastAPI = None  # type: ignore[assignment,misc]

HTML_PAGE = Path(__file__).with_name("serve_page.html")
ACCESS = logging.getLogger("rnnkit.serve.access")  # one JSON object per request / stream


def _log(**kw: Any) -> None:
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info(json.dumps(kw, separators=(",", ":")))


@dataclass
class Limits:
    """What keeps a server up; every field is a ``rnnkit serve`` flag."""

    max_sessions: int = 1000       # live streaming sessions (HTTP + WebSocket)
    idle_timeout: float = 300.0    # seconds a session may stay unfed
    max_chunk_chars: int = 4096    # characters per streamed chunk
    max_text_chars: int = 100_000  # characters per text to predict
    max_body_bytes: int = 1 << 20  # bytes per request body
    max_texts: int = 256           # texts per predict request
    max_batch: int = 256           # sessions' chunks stepped together (micro-batching)
    batch_wait_ms: float = 0.0     # extra wait for a batch to fill (0: what queued meanwhile)
    max_sample_tokens: int = 2000  # lm: tokens per sample
    max_beam: int = 16             # translate: beam width

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or \
                    (v == 0 and k != "batch_wait_ms"):
                raise ValueError(f"limit {k} must be a positive number, got {v!r}")


class ServeError(Exception):
    """An error reply: HTTP ``status`` with ``{"error": message, "limit": limit}``."""

    def __init__(self, status: int, message: str, limit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.limit = status, message, limit


def _state_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_state_bytes(v) for v in obj.values())
    if isinstance(obj, tuple | list):
        return sum(_state_bytes(v) for v in obj)
    return 0


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _int_field(b: dict[str, Any], key: str, default: int, hi: int, limit: str) -> int:
    v = b.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ServeError(422, f"{key!r} must be a positive integer, got {v!r}")
    if v > hi:
        raise ServeError(413, f"{key!r} of {v} exceeds {limit} ({hi})", limit)
    return v


def _texts(b: dict[str, Any], key: str, limits: Limits) -> list[str]:
    one = key[:-1]
    texts = [b[one]] if one in b and key not in b else b.get(key)
    if not isinstance(texts, list) or not texts:
        raise ServeError(422, f"predict needs {{{key!r}: [string, ...]}} (a non-empty list) "
                         f"or {{{one!r}: string}}; got {sorted(b)!r}")
    if len(texts) > limits.max_texts:
        raise ServeError(413, f"batch of {len(texts)} texts exceeds max_texts "
                         f"({limits.max_texts})", "max_texts")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ServeError(422, f"{key}[{i}] must be a string, got {type(t).__name__}")
        if len(t) > limits.max_text_chars:
            raise ServeError(413, f"{key}[{i}] has {len(t)} characters, over "
                             f"max_text_chars ({limits.max_text_chars})", "max_text_chars")
    return texts


class Served:
    """One served model: a name and its task's API object — a TextClassifier (predict and
    stream), a LanguageModel (predict = samples) or a Translator (predict = translations)."""

    def __init__(self, name: str, obj: Any, source: str = "") -> None:
        from rnnkit.tasks.classify.api import TextClassifier
        from rnnkit.tasks.lm.api import LanguageModel
        from rnnkit.tasks.translate.api import Translator

        self.name, self.obj, self.source = name, obj, source
        self.streams = False
        if isinstance(obj, TextClassifier):
            self.task, m = "classify", obj.model
            self.clf = obj
            self.streams = not m.rnn.bidirectional
            extra = {"labels": list(obj.labels),
                     "positive": None if obj.positive is None else obj.labels[obj.positive],
                     "threshold": obj.threshold, "cell": type(m.rnn).__name__,
                     "hidden": m.rnn.hidden_size, "bidirectional": bool(m.rnn.bidirectional)}
        elif isinstance(obj, LanguageModel):
            self.task, m = "lm", obj.model
            extra = {"cell": obj.config.get("model", {}).get("cell"),
                     "hidden": obj.config.get("model", {}).get("hidden")}
        elif isinstance(obj, Translator):
            self.task, m = "translate", obj.model
            extra = {}
        else:
            raise ValueError(f"rnnkit serve serves classify, lm and translate models; "
                             f"{source or name} is a {type(obj).__name__}")
        self.info = {"name": name, "task": self.task, "params": _params(m),
                     "streaming": self.streams, **extra, "source": source}

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        probs = self.clf.predict_proba(texts)
        labels = self.clf.decide(probs)
        return [{"label": self.clf.labels[int(k)],
                 "probs": dict(zip(self.clf.labels, map(float, p), strict=True))}
                for k, p in zip(labels, probs, strict=True)]

    def answer(self, b: dict[str, Any], limits: Limits) -> Callable[[], list[Any]]:
        """The checked request ``b`` as a call (run in a worker thread)."""
        if self.task == "classify":
            texts = _texts(b, "texts", limits)
            return lambda: self.predict(texts)
        if self.task == "translate":
            texts = _texts(b, "texts", limits)
            beam = _int_field(b, "beam", 5, limits.max_beam, "max_beam")
            return lambda: [{"translation": t} for t in self.obj.translate(texts, beam=beam)]
        prompts = _texts(b, "prompts", limits)
        n = _int_field(b, "length", 200, limits.max_sample_tokens, "max_sample_tokens")
        temp = b.get("temperature", 0.8)
        if isinstance(temp, bool) or not isinstance(temp, int | float) or not temp > 0:
            raise ServeError(422, f"'temperature' must be a number > 0, got {temp!r}")
        seed = b.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ServeError(422, f"'seed' must be an integer or null, got {seed!r}")
        return lambda: [{"sample": self.obj.sample(p, n, float(temp), seed=seed)}
                        for p in prompts]


class Session:
    """A live stream: the classifier's StreamSession plus bookkeeping."""

    def __init__(self, sid: str, served: Served, now: float) -> None:
        self.id, self.served = sid, served
        self.stream = served.clf.stream()
        self.seq, self.chars, self.last = 0, 0, now
        self.lock = asyncio.Lock()  # one chunk in flight per session, in order

    def done(self, chunk: str, probs: dict[str, float], now: float) -> dict[str, Any]:
        self.seq += 1
        self.chars += len(chunk)
        self.last = now
        return {"seq": self.seq, "probs": probs, "label": self.stream.label(probs),
                "chars": self.chars}

    def state_bytes(self) -> int:
        s = self.stream
        return _state_bytes(s.state) + _state_bytes(s.pool) + len(s.held.encode())


class Sessions:
    """Bounded session table with idle expiry (``clock`` is injectable for tests)."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits, self.clock = limits, clock
        self.live: dict[str, Session] = {}
        self.expired = 0
        self.opened = 0  # sessions opened since start

    def sweep(self) -> list[Session]:
        now, gone = self.clock(), []
        for sid, s in list(self.live.items()):
            if now - s.last > self.limits.idle_timeout:
                gone.append(self.live.pop(sid))
        self.expired += len(gone)
        return gone

    def open(self, served: Served) -> Session:
        if not served.streams:
            if served.task != "classify":
                raise ServeError(422, f"model {served.name!r} is a {served.task!r} model; "
                                 "streaming scores are for classifiers")
            raise ServeError(422, f"model {served.name!r} is bidirectional and cannot stream: "
                             "a bidirectional model reads each text backwards from its end; "
                             "use POST /v1/{model}/predict, or train with --no-bidirectional")
        self.sweep()
        if len(self.live) >= self.limits.max_sessions:
            raise ServeError(429, f"too many live sessions: max_sessions is "
                             f"{self.limits.max_sessions}; close one (DELETE "
                             f"/v1/sessions/ID) or wait for idle ones to expire after "
                             f"{self.limits.idle_timeout:g} s", "max_sessions")
        s = Session(secrets.token_urlsafe(12), served, self.clock())
        self.live[s.id] = s
        self.opened += 1
        return s

    def get(self, sid: str) -> Session:
        self.sweep()
        if sid not in self.live:
            raise ServeError(404, f"unknown session {sid!r} (never opened, closed, or expired "
                             f"after {self.limits.idle_timeout:g} s idle)")
        return self.live[sid]

    def close(self, sid: str) -> Session:
        s = self.get(sid)
        del self.live[sid]
        return s


class Batcher:
    """Micro-batching: chunks of concurrent sessions are stepped together by
    :meth:`StreamSession.feed_many` in a worker thread; what arrives while a batch computes
    (plus ``batch_wait_ms``) forms the next one, at most ``max_batch`` rows. Each session has
    at most one chunk queued (its lock), so the queue is bounded by ``max_sessions``."""

    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self.limits, self.clock = limits, clock
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.batches, self.rows = 0, 0
        self.trims = 0  # times idle memory was handed back (after the last session closed)
        # one compute thread for all model calls: one malloc arena, so memory stays flat
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rnnkit-step")

    async def feed(self, s: Session, chunk: str) -> dict[str, Any]:
        async with s.lock:
            loop = asyncio.get_running_loop()
            if self.task is None or self.loop is not loop or self.task.done():
                self.loop = loop
                self.queue = asyncio.Queue()
                self.task = asyncio.create_task(self._work())
            fut = loop.create_future()
            self.queue.put_nowait((s, chunk, fut))
            return await fut

    async def _work(self) -> None:
        q, lim = self.queue, self.limits
        while True:
            batch = [await q.get()]
            end = time.monotonic() + lim.batch_wait_ms / 1e3
            while len(batch) < lim.max_batch:
                if not q.empty():
                    batch.append(q.get_nowait())
                    continue
                left = end - time.monotonic()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(q.get(), left))
                except TimeoutError:
                    break
            try:
                results = await asyncio.get_running_loop().run_in_executor(
                    self.pool, self._compute, batch)
            except Exception as e:  # a model failure answers its batch, never kills the loop
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            now = self.clock()
            for (s, chunk, fut), probs in zip(batch, results, strict=True):
                reply = s.done(chunk, probs, now)  # counted even if its client has gone
                if not fut.done():
                    fut.set_result(reply)
            self.batches, self.rows = self.batches + 1, self.rows + len(batch)

    @staticmethod
    def _compute(batch: list) -> list[dict[str, float]]:
        from rnnkit.tasks.classify.api import StreamSession

        groups: dict[int, list[int]] = {}
        for i, (s, _, _) in enumerate(batch):
            groups.setdefault(id(s.served), []).append(i)
        out: list[Any] = [None] * len(batch)
        for idx in groups.values():
            probs = StreamSession.feed_many([batch[i][0].stream for i in idx],
                                            [batch[i][1] for i in idx])
            for i, p in zip(idx, probs, strict=True):
                out[i] = p
        return out

    def trim(self) -> None:
        """Hand free heap memory back to the system (:func:`rnnkit.runtime.release_freed_memory`
        ), after the last session closed."""
        if release_freed_memory():
            self.trims += 1

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.pool.shutdown(wait=False)


def check_chunk(chunk: Any, limits: Limits, field: str = "text") -> str:
    if not isinstance(chunk, str):
        raise ServeError(422, f"{field!r} must be a string, got {type(chunk).__name__}")
    if len(chunk) > limits.max_chunk_chars:
        raise ServeError(413, f"chunk of {len(chunk)} characters exceeds max_chunk_chars "
                         f"({limits.max_chunk_chars}); send it in smaller pieces",
                         "max_chunk_chars")
    return chunk


def _as_served(models: Any) -> dict[str, Served]:
    from rnnkit.tasks import load

    if isinstance(models, str | Path) or not isinstance(models, dict | list | tuple):
        models = [models]
    if isinstance(models, list | tuple):
        named: dict[str, Any] = {}
        for m in models:
            name = Path(m).name if isinstance(m, str | Path) else "model"
            base, k = name, 2
            while name in named:
                name, k = f"{base}-{k}", k + 1
            named[name] = m
        models = named
    out = {}
    for name, m in models.items():
        src = str(m) if isinstance(m, str | Path) else ""
        out[name] = Served(name, load(m) if isinstance(m, str | Path) else m, src)
    if not out:
        raise ValueError("rnnkit serve needs at least one model")
    return out


def make_app(models: Any, limits: Limits | None = None, *,
             clock: Callable[[], float] = time.monotonic, sweep_every: float = 5.0) -> Any:
    """The FastAPI app serving ``models``: a run folder, a loaded TextClassifier, a list of
    them (named by folder), or a dict ``{name: run folder or classifier}``."""
    if FastAPI is None:
        raise ValueError("rnnkit serve needs FastAPI and uvicorn: pip install 'rnnkit[serve]'")
    served = _as_served(models)
    limits = limits or Limits()
    sessions = Sessions(limits, clock)
    batcher = Batcher(limits, clock)
    sockets: set[WebSocket] = set()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def sweeper() -> None:
            trimmed_at = 0  # sessions.opened when the heap was last handed back
            while True:
                await asyncio.sleep(sweep_every)
                sessions.sweep()
                if not sessions.live and sessions.opened != trimmed_at:
                    # idle after serving: give the batches' peak memory back to the system,
                    # in the compute thread, so never during a batch
                    trimmed_at = sessions.opened
                    await asyncio.get_running_loop().run_in_executor(batcher.pool, batcher.trim)
        task = asyncio.create_task(sweeper())
        try:
            yield
        finally:
            task.cancel()
            batcher.stop()
            for ws in list(sockets):  # shutting down: close live streams with a reason
                with contextlib.suppress(Exception):
                    await ws.close(1001, "server shutting down")

    app = FastAPI(title="rnnkit serve", lifespan=lifespan)
    app.state.sessions, app.state.limits, app.state.served = sessions, limits, served
    app.state.batcher = batcher

    @app.middleware("http")
    async def access_log(request: Request, call_next: Any) -> Any:
        t = time.perf_counter()
        response = await call_next(request)
        _log(method=request.method, path=request.url.path, status=response.status_code,
             ms=round((time.perf_counter() - t) * 1e3, 2),
             client=request.client.host if request.client else None)
        return response

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, e: ServeError) -> JSONResponse:
        return JSONResponse({"error": e.message, "limit": e.limit}, status_code=e.status)

    def model(name: str) -> Served:
        if name not in served:
            raise ServeError(404, f"unknown model {name!r}; served: {', '.join(served)}")
        return served[name]

    async def body(request: Request) -> dict[str, Any]:
        n = request.headers.get("content-length")
        too_big = ServeError(413, f"request body exceeds max_body_bytes "
                             f"({limits.max_body_bytes})", "max_body_bytes")
        if n is not None and n.isdigit() and int(n) > limits.max_body_bytes:
            raise too_big
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > limits.max_body_bytes:
                raise too_big
        try:
            text = bytes(raw).decode("utf-8", errors="strict")
        except UnicodeDecodeError as e:
            raise ServeError(400, f"request body is not valid UTF-8: byte {e.start} "
                             f"(0x{raw[e.start]:02x})") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ServeError(400, f"request body is not valid JSON: {e.msg} at line "
                             f"{e.lineno} column {e.colno}") from None
        if not isinstance(obj, dict):
            raise ServeError(422, f"request body must be a JSON object, got "
                             f"{type(obj).__name__}")
        return obj

    @app.get("/healthz")
    @app.get("/health")
    async def health() -> dict[str, Any]:
        sessions.sweep()
        return {"status": "ok", "sessions": len(sessions.live), "models": list(served),
                "state_bytes": sum(x.state_bytes() for x in sessions.live.values()),
                "batches": batcher.batches, "batched_chunks": batcher.rows,
                "memory_trims": batcher.trims}

    @app.get("/v1/models")
    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {"models": [s.info for s in served.values()], "limits": asdict(limits)}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return HTML_PAGE.read_text(encoding="utf-8").replace("__MODEL__", next(iter(served)))

    @app.post("/v1/{name}/predict")
    async def predict(name: str, request: Request) -> dict[str, Any]:
        m = model(name)
        call = m.answer(await body(request), limits)
        res = await asyncio.get_running_loop().run_in_executor(batcher.pool, call)
        return {"model": name, "results": res}

    @app.post("/v1/{name}/sessions", status_code=201)
    async def open_session(name: str) -> dict[str, Any]:
        s = sessions.open(model(name))
        return {"session": s.id, "model": name, "idle_timeout": limits.idle_timeout,
                "state_bytes": s.state_bytes()}

    @app.post("/v1/sessions/{sid}/feed")
    async def feed(sid: str, request: Request) -> dict[str, Any]:
        b = await body(request)
        s = sessions.get(sid)
        if "text" not in b:
            raise ServeError(422, f"feed needs {{\"text\": chunk}}; got {sorted(b)!r}")
        return await batcher.feed(s, check_chunk(b["text"], limits))

    @app.delete("/v1/sessions/{sid}")
    async def close(sid: str) -> dict[str, Any]:
        s = sessions.close(sid)
        return {"closed": s.id, "chunks": s.seq, "chars": s.chars}

    @app.websocket("/v1/{name}/stream")
    async def stream(ws: WebSocket, name: str) -> None:
        await ws.accept()
        why = ""

        async def refuse(e: ServeError, code: int) -> None:
            nonlocal why
            why = e.message[:120]
            await ws.send_json({"error": e.message, "limit": e.limit, "status": e.status})
            await ws.close(code, e.message[:120])

        try:
            s = sessions.open(model(name))
        except ServeError as e:
            await refuse(e, 1013 if e.status == 429 else 1008)
            return
        sockets.add(ws)
        t0, why = time.perf_counter(), "client closed"
        try:
            await ws.send_json({"session": s.id, "model": name, "seq": 0})
            while True:
                try:
                    msg = await asyncio.wait_for(ws.receive(), limits.idle_timeout)
                except TimeoutError:
                    await refuse(ServeError(408, f"idle for {limits.idle_timeout:g} s "
                                            "(idle_timeout)", "idle_timeout"), 1001)
                    return
                if msg["type"] == "websocket.disconnect":
                    return
                if msg.get("text") is None:
                    await refuse(ServeError(422, "binary frames are not accepted: send each "
                                            "chunk as a UTF-8 text frame"), 1003)
                    return
                if s.id not in sessions.live:  # expired by the sweeper meanwhile
                    await refuse(ServeError(404, "session expired (idle_timeout)",
                                            "idle_timeout"), 1001)
                    return
                try:
                    chunk = check_chunk(msg["text"], limits)
                except ServeError as e:
                    await refuse(e, 1009)
                    return
                await ws.send_json(await batcher.feed(s, chunk))
        except WebSocketDisconnect:
            why = "client disconnected"
            return
        finally:
            sockets.discard(ws)
            sessions.live.pop(s.id, None)
            _log(ws=ws.url.path, session=s.id, chunks=s.seq, chars=s.chars, end=why,
                 s=round(time.perf_counter() - t0, 3))

    return app
