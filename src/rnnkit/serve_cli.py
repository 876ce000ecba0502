"""``rnnkit serve RUN [RUN ...]``: trained classifiers over HTTP and WebSocket (see
:mod:`rnnkit.serve` for the endpoints). Binds to 127.0.0.1 unless ``--host`` says otherwise.
A run may be named: ``rnnkit serve sms=runs/sms``; otherwise it is named by its folder.

Also ``python -m rnnkit.serve_cli RUN ...``. Sessions live in one process: for several
processes, run one server per port behind a load balancer that routes by session id (HTTP)
and keeps each WebSocket on its connection (sticky routing)."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from rnnkit.runtime import keep_freed_memory
from rnnkit.tasks.args import POS_INT, number, parser_kwargs

HELP = {
    "max_sessions": "live streaming sessions, HTTP and WebSocket together (429 beyond)",
    "idle_timeout": "seconds a session may stay unfed before it is dropped",
    "max_chunk_chars": "characters per streamed chunk (413 beyond)",
    "max_text_chars": "characters per text to predict (413 beyond)",
    "max_body_bytes": "bytes per request body (413 beyond)",
    "max_texts": "texts per predict request (413 beyond)",
    "max_batch": "micro-batching: concurrent sessions' chunks stepped together in one call "
                 "(1: one forward per chunk)",
    "max_sample_tokens": "lm: tokens per sample (413 beyond)",
    "max_beam": "translate: beam width (413 beyond)",
    "batch_wait_ms": "micro-batching: extra wait for a batch to fill, beyond what arrives "
                     "while the previous one computes",
}


def _pos_float(s: str) -> float:
    v = float(s)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {s}")
    return v


def add_args(p: argparse.ArgumentParser) -> None:
    from rnnkit.serve import Limits

    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder (or NAME=RUN)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, "
                   "loopback only)")
    p.add_argument("--port", type=number(int, lo=0, hi=65535), default=8000,
                   help="port (default: 8000; 0 = any free)")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default: info)")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                   help="one JSON line per request and per closed stream on stderr "
                   "(default: on)")
    g = p.add_argument_group("limits")
    for f in fields(Limits):
        g.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=f.default,
                       type=_pos_float if f.type in ("float", float) else POS_INT,
                       metavar="S" if f.name == "idle_timeout" else "N",
                       help=f"{HELP[f.name]} (default: {f.default:g})")


def models_of(runs: list[str]) -> dict[str, str]:
    from pathlib import Path

    out: dict[str, str] = {}
    for r in runs:
        name, _, path = r.rpartition("=") if "=" in r else (Path(r).name, "", r)
        if name in out:
            raise ValueError(f"two runs named {name!r}: name them, e.g. {name}2={path}")
        out[name] = path
    return out


def return_freed_memory() -> None:
    """A server lives long with varying batch shapes: undo ``rnnkit.cli``'s training setting
    (keep all freed memory) so glibc trims again, and cap its arenas (threads) at 2, keeping
    RSS flat once sessions close. Linux/glibc only; a no-op elsewhere."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
    mallopt(M_TRIM_THRESHOLD, 128 * 1024)
    mallopt(M_MMAP_MAX, 65536)
    mallopt(M_ARENA_MAX, 2)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise ValueError("rnnkit serve needs FastAPI and uvicorn: pip install "
                         "'rnnkit[serve]'") from None

    from rnnkit.serve import Limits, make_app

    return_freed_memory()
    limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
    app = make_app(models_of(args.runs), limits)
    access = logging.getLogger("rnnkit.serve.access")
    if not access.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(h)
    access.setLevel(logging.INFO if args.access_log else logging.WARNING)
    access.propagate = False
    print(f"rnnkit serve: {', '.join(app.state.served)} on http://{args.host}:{args.port}/",
          file=sys.stderr)
    # replies are ~100-byte JSON objects: compressing each (permessage-deflate) costs more
    # server time than it saves on a local network
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=False, timeout_graceful_shutdown=10, ws_per_message_deflate=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve trained classifiers over HTTP and WebSocket",
                       **parser_kwargs(__doc__))
    add_args(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rnnkit serve", **parser_kwargs(__doc__))
    add_args(p)
    args = p.parse_args(argv)
    keep_freed_memory()  # as `rnnkit serve`: batches reuse freed memory, no page faults per call
    try:
        return run(args)
    except (ValueError, OSError) as e:
        print(f"rnnkit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
