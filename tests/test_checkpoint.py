"""Checkpoints: safetensors + JSON only, pickles refused, atomic writes that survive a crash,
tied weights, clear errors for a different model shape."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from rnnkit import checkpoint as ckpt


class Tied(nn.Module):
    def __init__(self, V: int = 5, H: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, H)
        self.head = nn.Linear(H, V)
        self.head.weight = self.emb.weight


def test_roundtrip_with_tied_weights_and_state(tmp_path):
    m = Tied()
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m.emb.weight.sum().backward()
    opt.step()
    rng = torch.get_rng_state()
    state = {"optimizer": opt.state_dict(), "rng": rng,
             "carry": (torch.ones(1, 2, 3), torch.zeros(1, 2, 3)), "pos": 7, "none": None}
    ckpt.save(tmp_path / "c", m, {"task": "x"}, {"step": 3}, state)
    m2 = Tied()
    ckpt.load_weights(m2, tmp_path / "c")
    assert torch.equal(m2.emb.weight, m.emb.weight)
    assert m2.head.weight is m2.emb.weight  # still tied
    rec = ckpt.load_trainer(tmp_path / "c")
    assert rec["step"] == 3
    st = rec["state"]
    assert isinstance(st["carry"], tuple) and torch.equal(st["carry"][0], torch.ones(1, 2, 3))
    assert st["rng"].dtype == torch.uint8 and torch.equal(st["rng"], rng)
    assert st["pos"] == 7 and st["none"] is None
    opt2 = torch.optim.AdamW(m2.parameters(), lr=0.1)
    opt2.load_state_dict(st["optimizer"])  # int keys of the optimizer state survive
    a, b = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ckpt.load_config(tmp_path / "c") == {"task": "x"}


def test_pickle_checkpoint_refused(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    torch.save(Tied().state_dict(), d / ckpt.MODEL)  # a torch.save file under the right name
    with pytest.raises(ValueError, match="never unpickles"):
        ckpt.load_weights(Tied(), d / ckpt.MODEL)
    (d / ckpt.MODEL).write_bytes(b"\x80\x04\x95" + b"\0" * 20)  # a raw pickle stream
    with pytest.raises(ValueError, match="contains a pickle"):
        ckpt.read_tensors(d / ckpt.MODEL)
    (d / ckpt.MODEL).unlink()
    torch.save({}, d / "model.pt")
    with pytest.raises(ValueError, match=r"model\.pt.*never unpickles"):
        ckpt.resolve(d)


def test_not_safetensors_and_missing(tmp_path):
    (tmp_path / ckpt.MODEL).write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        ckpt.read_tensors(tmp_path / ckpt.MODEL)
    with pytest.raises(FileNotFoundError, match="no such run"):
        ckpt.resolve(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        ckpt.resolve(tmp_path / "empty")


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    ckpt.save(tmp_path / "c", Tied(H=4), {})
    with pytest.raises(ValueError, match=r"'emb.weight' has shape \(5, 4\).*but \(5, 8\)"):
        ckpt.load_weights(Tied(H=8), tmp_path / "c")
    with pytest.raises(ValueError, match=r"has no tensor 'extra\.weight'"):
        m = Tied()
        m.extra = nn.Linear(2, 2)
        ckpt.load_weights(m, tmp_path / "c")


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    m = Tied()
    ckpt.save(tmp_path / "last", m, {"v": 1}, {"step": 1})
    good = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        m.emb.weight.add_(1.0)
    real = ckpt._write_synced

    def crash_on_json(path, data):
        if path.name == ckpt.TRAINER_JSON:
            raise OSError("disk full (simulated)")
        real(path, data)

    monkeypatch.setattr(ckpt, "_write_synced", crash_on_json)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save(tmp_path / "last", m, {"v": 2}, {"step": 2})
    monkeypatch.undo()
    m2 = Tied()
    ckpt.load_weights(m2, tmp_path / "last")
    assert torch.equal(m2.emb.weight, good["emb.weight"])
    assert ckpt.load_trainer(tmp_path / "last")["step"] == 1

    # a crash between the two renames of the swap: the old folder is found and restored
    os.replace(tmp_path / "last", tmp_path / ".last.old")
    assert ckpt.resolve(tmp_path / "last") == tmp_path / ".last.old"
    assert ckpt.load_trainer(tmp_path / "last")["step"] == 1
    ckpt.save(tmp_path / "last", m, {"v": 3}, {"step": 3})
    assert json.loads((tmp_path / "last" / ckpt.CONFIG).read_text()) == {"v": 3}
    assert not (tmp_path / ".last.old").exists()
    assert not any(p.name.startswith(".last.tmp") for p in tmp_path.iterdir())


def test_flatten_refuses_arbitrary_objects():
    with pytest.raises(TypeError, match="cannot store object"):
        ckpt.flatten({"x": object()}, {})
