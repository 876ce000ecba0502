"""One checkpoint format for every task: a folder that loads no code.

A checkpoint is a directory holding

* ``model.safetensors``   the weights (tied tensors stored once, aliases in its metadata);
* ``config.json``         the task's configuration (task name, model sizes, tokenizer JSON, the
                          training configuration) — enough to rebuild the model;
* ``trainer.json``        step, metrics and, for a resumable checkpoint, the trainer state
                          (optimizer scalars, schedule, data position) as JSON;
* ``trainer.safetensors`` the trainer state's tensors (optimizer moments, RNG states as uint8,
                          recurrent state carried between batches), only in resumable ones.

A run folder holds ``config.json``, ``metrics.jsonl``, ``loss.png`` and two checkpoints:
``last/`` (resumable) and ``best/`` (best validation metric so far).

Nothing is ever unpickled: files are read with ``safetensors`` and ``json`` only, and a file
that holds a pickle (``torch.save`` output, renamed or not) is refused with a clear error.
Checkpoints are written atomically: files go to a temporary sibling folder, are fsynced, and the
folder is swapped in with ``os.replace``; a crash at any moment leaves the previous checkpoint
loadable (:func:`resolve` finds it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from torch import Tensor, nn

MODEL = "model.safetensors"
CONFIG = "config.json"
TRAINER_JSON = "trainer.json"
TRAINER_TENSORS = "trainer.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


# -- low-level: atomic files, pickle refusal ----------------------------------------------------
def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    data = data.encode() if isinstance(data, str) else data
    try:
        _write_synced(tmp, data)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, f"no space left on the device to write {path} "
                          f"({len(data):,} bytes needed); the previous file there is "
                          f"unchanged. Free some space and try again") from None
        raise
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _is_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file starts with its JSON header's length (u64 little-endian) and then the
    header's ``{``; a header length whose low byte is 0x80 looks like a pickle's first byte."""
    n = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    return head[8:9] == b"{" and 0 < n <= size - 8


def _refuse_pickle(path: Path, head: bytes) -> None:
    if _is_safetensors(head, path.stat().st_size if path.is_file() else 0):
        return
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        kind = "a zip archive (torch.save format)" if head[:2] == b"PK" else "a pickle"
        raise ValueError(f"{path} contains {kind}; rnnkit never unpickles (it can run arbitrary "
                         f"code). Expected a safetensors file; convert trusted weights with "
                         f"safetensors.torch.save_file(torch.load(f, weights_only=True), ...)")


def _readable(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a Path, after checking that it is a file (FileNotFoundError naming
    ``what``) and not a pickle (ValueError)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")
    with open(path, "rb") as f:
        head = f.read(16)
    _refuse_pickle(path, head)
    return path


def read_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file. A pickle / torch.save file is refused."""
    path = _readable(path, "checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise ValueError(f"{path} is not a valid safetensors file ({e})") from None
    return tensors, meta


def _tensor_bytes(tensors: dict[str, Tensor], meta: dict[str, str] | None = None) -> bytes:
    return st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=meta)


# -- flattening nested state (optimizer, RNG, data position) into JSON + tensors ----------------
def flatten(obj: Any, tensors: dict[str, Tensor], prefix: str = "t") -> Any:
    """A JSON-able copy of ``obj`` with every tensor moved into ``tensors`` (named by its path).
    Dicts with non-string keys and tuples are tagged so :func:`unflatten` restores them."""
    if isinstance(obj, Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and "__tensor__" not in obj:
            return {k: flatten(v, tensors, f"{prefix}.{k}") for k, v in obj.items()}
        return {"__items__": [[k, flatten(v, tensors, f"{prefix}.{i}")]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint (at {prefix}); "
                    f"use tensors, numbers, strings, lists, tuples and dicts")


def unflatten(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {k: unflatten(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
        return {k: unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


# -- model weights ------------------------------------------------------------------------------
def _dedupe(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tied parameters (same storage) are stored once; returns (tensors, alias -> stored name)."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    out, aliases = {}, {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key in seen and v.numel():
            aliases[k] = seen[key]
        else:
            seen[key] = k
            out[k] = v
    return out, aliases


def model_bytes(model: nn.Module) -> bytes:
    tensors, aliases = _dedupe(dict(model.state_dict()))
    return _tensor_bytes(tensors, {"aliases": json.dumps(aliases)})


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load ``model.safetensors`` (or a checkpoint folder) into ``model``, strictly: a missing,
    unexpected or differently shaped tensor is a ``ValueError`` naming it (and both shapes)."""
    path = Path(path)
    if path.is_dir():
        path = resolve(path) / MODEL
    tensors, meta = read_tensors(path)
    for alias, name in json.loads(meta.get("aliases", "{}")).items():
        tensors[alias] = tensors[name]
    own = model.state_dict()
    for k, v in own.items():
        if k not in tensors:
            raise ValueError(f"{path} has no tensor {k!r} that the model needs (shape "
                             f"{tuple(v.shape)}): the checkpoint is for a different model")
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise ValueError(f"{path}: tensor {k!r} has shape {tuple(tensors[k].shape)} in the "
                             f"checkpoint but {tuple(v.shape)} in the model: the checkpoint is "
                             f"for a different model shape")
    extra = sorted(set(tensors) - set(own))
    if extra:
        raise ValueError(f"{path} has tensors the model lacks: {', '.join(extra[:5])}: the "
                         f"checkpoint is for a different model")
    for k, _ in model.named_parameters():  # buffers may hold -inf (masks) by design
        t = tensors.get(k)
        if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{path}: weight {k!r} holds {bad:,} non-finite value(s) (NaN or "
                             f"inf) of {t.numel():,}: the checkpoint is damaged or comes from a "
                             f"run that diverged; use another checkpoint (best/ or last/)")
    model.load_state_dict({k: tensors[k] for k in own})
    return model


def check_shapes(build: Callable[[], nn.Module], path: str | os.PathLike[str]) -> Path:
    """Check, on the meta device (no memory), that the model ``build()`` makes from a run's
    config has the shapes of the checkpoint at ``path`` (a folder or its ``model.safetensors``;
    only the file's header is read). A config that does not build (a missing or wrong field, a
    negative size) or that describes other shapes (a tampered ``vocab_size``) is a
    ``ValueError`` naming the file and the tensor, before anything is allocated. Returns the
    ``model.safetensors`` file checked."""
    path = Path(path)
    file = path if path.is_file() else resolve(path) / MODEL  # a folder, or a swap cut short
    try:
        with torch.device("meta"):
            shape_model = build()
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{file.parent / CONFIG} does not describe a model this rnnkit can "
                         f"build ({type(e).__name__}: {e})") from None
    _refuse_pickle(file, file.read_bytes()[:16] if file.is_file() else b"")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"{file} is not a valid safetensors file ({e})") from None
    for alias, name in json.loads(meta.get("aliases", "{}")).items():
        shapes[alias] = shapes[name]
    for k, v in shape_model.state_dict().items():
        if k in shapes and shapes[k] != tuple(v.shape):
            raise ValueError(f"{file}: tensor {k!r} has shape {shapes[k]} in the checkpoint but "
                             f"{tuple(v.shape)} in the model its config.json describes: the "
                             f"config was changed or belongs to another model")
    return file


def build_checked(build: Callable[[], nn.Module], path: str | os.PathLike[str]) -> nn.Module:
    """The model ``build()`` makes from a run's config, with the weights of the checkpoint at
    ``path`` (a folder or its ``model.safetensors``), the config checked first by
    :func:`check_shapes` (nothing allocated for a config that does not fit the checkpoint)."""
    file = check_shapes(build, path)  # before build() allocates anything
    return load_weights(build(), file)


# -- the run folder: one process at a time, no stale temporaries -------------------------------
LOCK = ".lock"
_held: dict[str, int] = {}  # run folder -> how many times this process holds its lock


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive OS lock on ``run_dir`` (``flock`` on ``run_dir/.lock``, created with
    the folder) while the block runs. Another process holding it is a ValueError naming its
    PID; a killed holder releases it by dying. Re-entrant within one process."""
    d = Path(run_dir)
    key = str(d.resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield d
        finally:
            _held[key] -= 1
        return
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(f"{d} is in use by another rnnkit process (PID {holder}); wait "
                             f"for it to finish or stop it, then try again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[key] = 1
        try:
            yield d
        finally:
            del _held[key]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def clean_stale(run_dir: str | os.PathLike[str]) -> list[str]:
    """Remove the temporaries a killed process left in ``run_dir`` (``.last.tmp<PID>/``,
    ``.config.json.tmp<PID>``, ...); call it while holding :func:`run_lock`. Returns their
    names."""
    d = Path(run_dir)
    if not d.is_dir():
        return []
    gone = []
    for p in d.iterdir():
        if p.name.startswith(".") and ".tmp" in p.name:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(p.name)
    return sorted(gone)


# -- checkpoint folders -------------------------------------------------------------------------
def _old(d: Path) -> Path:
    return d.with_name(f".{d.name}.old")


def resolve(path: str | os.PathLike[str]) -> Path:
    """The checkpoint folder to read for ``path``: ``path`` itself if it holds a model, else its
    ``best/`` then ``last/`` (a run folder). A swap interrupted by a crash is recovered."""
    p = Path(path)
    if not p.exists() and not _old(p).exists():
        raise FileNotFoundError(f"{path}: no such run or checkpoint folder")
    for d in (p, p / "best", p / "last"):
        for cand in (d, _old(d)):
            if (cand / MODEL).is_file():
                return cand
    pickles = sorted(f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES) if p.is_dir() \
        else []
    if pickles:
        raise ValueError(f"{path} holds {', '.join(pickles)} but no {MODEL}: rnnkit never "
                         f"unpickles checkpoints (pickle runs arbitrary code)")
    raise FileNotFoundError(f"{path} holds no checkpoint: expected {MODEL} there or in its "
                            f"best/ or last/ folder")


def save(path: str | os.PathLike[str], model: nn.Module, config: dict[str, Any],
         info: dict[str, Any] | None = None, state: Any = None) -> Path:
    """Write a checkpoint folder atomically. ``info`` (step, metrics: JSON) goes to
    ``trainer.json``; ``state`` (any nesting of dicts/lists/tensors/numbers) is split between
    ``trainer.json`` and ``trainer.safetensors``."""
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    old, tmp = _old(dst), dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    if not dst.exists() and old.exists():  # finish a swap a crash interrupted
        os.replace(old, dst)
    shutil.rmtree(tmp, ignore_errors=True)
    record = dict(info or {})
    files = {MODEL: model_bytes(model), CONFIG: json.dumps(config, indent=1).encode()}
    if state is not None:
        tensors: dict[str, Tensor] = {}
        record["state"] = flatten(state, tensors)
        files[TRAINER_TENSORS] = _tensor_bytes(tensors)
    files[TRAINER_JSON] = json.dumps(record, indent=1).encode()
    try:
        tmp.mkdir()
        for name, data in files.items():
            _write_synced(tmp / name, data)
        _fsync_dir(tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            need = sum(len(b) for b in files.values())
            raise OSError(e.errno, f"no space left on the device to save the checkpoint "
                          f"{dst} ({need:,} bytes needed); the previous checkpoint there is "
                          f"unchanged. Free some space and resume") from None
        raise
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    _fsync_dir(dst.parent)
    shutil.rmtree(old, ignore_errors=True)
    return dst


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = _readable(path, "file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` of a run or checkpoint folder."""
    p = Path(path)
    if (p / CONFIG).is_file():
        return read_json(p / CONFIG)
    return read_json(resolve(p) / CONFIG)


def load_trainer(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``trainer.json`` of a checkpoint folder with its ``state`` (if any) rebuilt, tensors
    included."""
    d = resolve(path)
    record = read_json(d / TRAINER_JSON)
    if "state" in record:
        tensors, _ = read_tensors(d / TRAINER_TENSORS)
        record["state"] = unflatten(record["state"], tensors)
    return record
