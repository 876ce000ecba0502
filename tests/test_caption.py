"""Image captioning: the CNN encoder's grid, the reused seq2seq decoder and search, metrics
against sacrebleu, the teacher-forced loss against a plain PyTorch reference, reading a
folder with bad lines, and a tiny run through the CLI and rnnkit.load."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from torch import nn

import rnnkit
import rnnkit.seq2seq as s2s
from rnnkit.cli import main
from rnnkit.tasks.caption import (
    Captioner,
    CaptionStream,
    CNNEncoder,
    caption_ids,
    caption_scores,
    digit_strips,
    nearest_captions,
    read_folder,
)
from rnnkit.tasks.caption.data import to_rgb
from rnnkit.tasks.translate.metrics import scores


def _model(decoder="attend", cell="lstm", size=(12, 20), **kw):
    torch.manual_seed(0)
    return Captioner(9, bos=7, eos=8, image_size=size, decoder=decoder, cell=cell, embed=8,
                     hidden=12, channels=(4, 6), image_vector=10, **kw).eval()


@pytest.mark.parametrize("hw", [(7, 13), (16, 80), (1, 1)])
def test_cnn_grid_shape_odd_sizes_and_batch_independence(hw):
    torch.manual_seed(0)
    enc = CNNEncoder((4, 6, 5))
    x = torch.rand(3, 3, *hw)
    g = enc(x)
    H, W = hw
    assert g.shape == (3, -(-H // 8) * -(-W // 8), 5)
    for b in range(3):  # each image encoded alone gives its own rows
        torch.testing.assert_close(enc(x[b:b + 1])[0], g[b])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        enc(torch.rand(3, H, W))


def test_the_decoder_and_the_search_are_seq2seqs():
    m = _model()
    # the seq2seq decoder itself, no subclass (its linear bridge is Decoder's bridge_act)
    assert type(m.decoder) is s2s.Decoder
    assert m.decoder.attention == "additive" and m.decoder.input_feed
    st = _model("show-tell")
    assert isinstance(st.decoder, s2s.Decoder) and st.decoder.attention == "none"
    import rnnkit.tasks.caption.model as cm
    assert cm.beam_search is s2s.beam_search and cm.greedy_search is s2s.greedy_search


@pytest.mark.parametrize("decoder", ["attend", "show-tell"])
def test_blind_model_is_a_language_model(decoder):
    """Image features zeroed: two different images give the same outputs."""
    m = _model(decoder)
    y = torch.tensor([[7, 2, 3, 4]])
    a, b = torch.rand(1, 3, 12, 20), torch.rand(1, 3, 12, 20)
    torch.testing.assert_close(m(a, y, blind=True), m(b, y, blind=True))
    assert not torch.allclose(m(a, y), m(b, y))


@pytest.mark.parametrize("decoder", ["attend", "show-tell"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_beam_one_equals_greedy(decoder, cell):
    m = _model(decoder, cell)
    x = torch.rand(5, 3, 12, 20)
    g = caption_ids(m, x, beam=1, max_len=6)
    b = [
        h[0] for h in s2s.beam_search(*m.decoding(x, repeat=1), [6] * 5, beam=1, bos=7,
                                      eos=8, forbid=(0, 1, 7))]
    assert [h.tokens for h in g] == [h.tokens for h in b]
    for h1, h2 in zip(g, b, strict=True):
        assert h1.logprob == pytest.approx(h2.logprob, abs=1e-5)
    wide = caption_ids(m, x, beam=4, max_len=6)  # beam search never scores below greedy
    for h1, h2 in zip(g, wide, strict=True):
        assert h2.logprob >= h1.logprob - 1e-5 or len(h2.tokens) != len(h1.tokens)


def _reference_logits(m: Captioner, x, y):
    """Plain PyTorch: conv/relu/maxpool by F, nn.LSTMCell loop, additive attention by hand."""
    h = x
    for layer in m.encoder.net:
        if isinstance(layer, nn.Conv2d):
            h = F.conv2d(h, layer.weight, layer.bias, padding=1)
        elif isinstance(layer, nn.ReLU):
            h = h.clamp_min(0)
        else:
            h = F.max_pool2d(h, 2, ceil_mode=True)
    g = h.flatten(2).transpose(1, 2)                                       # (B, N, D)
    v = (g.flatten(1) @ m.fc.weight.t() + m.fc.bias).clamp_min(0)
    dec = m.decoder
    cell = dec.rnn.cells[0]
    ref = nn.LSTMCell(cell.input_size, dec.hidden)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        setattr(ref, name, getattr(cell, name))
    hs = torch.tanh(v @ dec.bridge[0].weight.t() + dec.bridge[0].bias)
    cs = torch.tanh(v @ dec.bridge[1].weight.t() + dec.bridge[1].bias)
    state, feed, out = (hs, cs), torch.zeros(x.shape[0], dec.output_size), []
    a = dec.attn
    for t in range(y.shape[1]):
        state = ref(torch.cat([dec.embed.weight[y[:, t]], feed], -1), state)
        q = state[0]
        e = torch.einsum("bsa,a->bs", torch.tanh(g @ a.w_m.weight.t() + a.w_m.bias
                                                 + (q @ a.w_q.weight.t())[:, None]),
                         a.v.weight[0])
        w = torch.softmax(e, -1)
        ctx = torch.einsum("bs,bsm->bm", w, g)
        feed = torch.tanh(torch.cat([ctx, q], -1) @ dec.combine.weight.t())
        out.append(feed @ dec.generator.weight.t() + dec.generator.bias)
    return torch.stack(out, 1)


def test_teacher_forced_loss_equals_plain_pytorch_reference():
    m = _model().train()
    x = torch.rand(3, 3, 12, 20)
    y_in = torch.tensor([[7, 2, 3, 4], [7, 5, 0, 0], [7, 6, 2, 0]])
    y_out = torch.tensor([[2, 3, 4, 8], [5, 8, 0, 0], [6, 2, 8, 0]])
    lg = m(x, y_in)
    ref = _reference_logits(m, x, y_in)
    torch.testing.assert_close(lg, ref, rtol=1e-5, atol=1e-5)
    loss = F.cross_entropy(lg.flatten(0, 1), y_out.flatten(), ignore_index=0)
    ref_loss = F.cross_entropy(ref.flatten(0, 1), y_out.flatten(), ignore_index=0)
    torch.testing.assert_close(loss, ref_loss)
    g1 = torch.autograd.grad(loss, m.encoder.net[0].weight)[0]
    g2 = torch.autograd.grad(ref_loss, m.encoder.net[0].weight)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_scores_equal_sacrebleu_single_and_multi_reference():
    hyps = ["three seven one", "two", "nine nine"]
    refs = [["three seven one"], ["two four"], ["nine eight"]]
    s = caption_scores(hyps, refs)
    one = scores(hyps, [r[0] for r in refs])
    assert s["bleu"] == one["bleu"] and s["chrf"] == one["chrf"]
    assert s["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [[r[0] for r in refs]]).score)
    assert s["exact"] == pytest.approx(1 / 3)
    multi = [["a dog runs", "the dog is running"], ["a cat"], ["two birds", "birds", "a bird"]]
    h = ["a dog is running", "the cat", "birds"]
    m = caption_scores(h, multi)
    streams = [["a dog runs", "a cat", "two birds"], ["the dog is running", "a cat", "birds"],
               ["a dog runs", "a cat", "a bird"]]
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(h, streams).score)
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(h, streams).score)
    assert m["exact"] == pytest.approx(1 / 3)


def test_digit_strips_and_nearest_neighbour():
    d = digit_strips(40, 0)
    assert d.images.shape == (40, 3, 16, 80) and 0 <= float(d.images.min()) <= 1
    for caps in d.captions:
        assert 1 <= len(caps[0].split()) <= 5
    got = nearest_captions(d.images, [c[0] for c in d.captions], d.images[:5])
    assert got == [c[0] for c in d.captions[:5]]  # an image is its own nearest neighbour


def test_stream_ranks_share_the_global_batch():
    pairs = [(i % 4, [2] * (1 + i % 3)) for i in range(10)]
    ims = torch.rand(4, 3, 2, 2)
    one = next(CaptionStream(ims, pairs, 4, 0, 7, 8))
    r0, r1 = (next(CaptionStream(ims, pairs, 4, 0, 7, 8, r, 2)) for r in (0, 1))
    assert float(r0["tokens"]) * 2 == float(one["tokens"]) == float((one["y_out"] != 0).sum())
    torch.testing.assert_close(torch.cat([r0["images"], r1["images"]]).sort(0).values,
                               one["images"].sort(0).values)


def test_folder_bad_lines_are_counted_and_images_converted(tmp_path):
    rng = np.random.default_rng(0)
    mpimg.imsave(tmp_path / "a.png", rng.random((10, 14, 3)))
    mpimg.imsave(tmp_path / "b.png", rng.random((20, 28)), cmap="gray")   # other size, gray
    mpimg.imsave(tmp_path / "c.png", rng.random((10, 14, 4)))             # RGBA
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "captions.tsv").write_text(
        "image\tcaption\na.png\ta red thing\na.png\tsomething red\nb.png\ta gray one\n"
        "c.png\t \nc.png\tsee through\nmissing.png\tnothing\nbad.png\tbroken\nno tab here\n")
    d = read_folder(tmp_path)
    assert d.images.shape == (3, 3, 10, 14)
    assert d.captions == [["a red thing", "something red"], ["a gray one"], ["see through"]]
    assert d.skipped == {"no_tab": 1, "empty_caption": 1, "missing_file": 1, "unreadable": 1}
    x = to_rgb(np.full((2, 2, 4), [1.0, 0.0, 0.0, 0.5], dtype=np.float32))
    np.testing.assert_allclose(x[:, 0, 0], [1.0, 0.5, 0.5])  # over white
    with pytest.raises(ValueError, match="expected an image"):
        to_rgb(np.zeros((2, 2, 2)))
    with pytest.raises(FileNotFoundError, match=r"captions\.tsv"):
        read_folder(tmp_path / "nowhere")


def test_tiny_run_then_eval_caption_and_load(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "caption", "--data-size", "60", "--hidden", "8", "--embed", "8",
                 "--channels", "4,4", "--image-vector", "8", "--batch-size", "8",
                 "--steps", "4", "--eval-every", "2", "--eval-images", "4", "--beam", "2",
                 "--quiet", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "nearest neighbour (pixels)" in out and "attend beam 2" in out
    assert (run / "captions.png").is_file() and (run / "attention.png").is_file()
    split = json.loads((run / "split.json").read_text())
    assert len(split["test_images"]) == 6
    assert main(["eval", str(run), "--beam", "2"]) == 0
    assert "beam 2" in capsys.readouterr().out
    cap = rnnkit.load(run)
    imgs = digit_strips(60, 0).images[:2]
    c = cap.caption(imgs, beam=1)
    assert len(c) == 2 and all(isinstance(s, str) for s in c)
    f = tmp_path / "one.png"
    mpimg.imsave(f, imgs[0].permute(1, 2, 0).numpy())
    assert cap.caption([str(f)], beam=1) == c[:1]
    assert main(["caption", str(run), str(f), "--beam", "1"]) == 0
    assert capsys.readouterr().out == f"{f}\t{c[0]}\n"
    with pytest.raises(ValueError, match="cannot read"):
        (tmp_path / "junk.png").write_bytes(b"junk")
        cap.caption([str(tmp_path / "junk.png")])


def test_vector_norm_is_layer_norm_of_the_flattened_grid_and_keeps_blind_blind():
    import torch

    from rnnkit.tasks.caption import Captioner

    torch.manual_seed(0)
    m = Captioner(9, bos=7, eos=8, image_size=(12, 12), channels=(4, 6), embed=8, hidden=12,
                  image_vector=10, decoder="show-tell", vector_norm=True).eval()
    x = torch.rand(2, 3, 12, 12)
    _, _, v = m.encode(x)
    ref = torch.nn.functional.layer_norm(m.fc(m.encoder(x).flatten(1)), (10,),
                                         m.vector_norm.weight, m.vector_norm.bias)
    torch.testing.assert_close(v, ref)
    y = torch.tensor([[7, 2, 3], [7, 2, 3]])
    out = m(x, y, blind=True)
    torch.testing.assert_close(out[0], out[1])
    assert not torch.allclose(m(x, y)[0], m(x, y)[1])
    # the linear bridge (cs231n): h_0 = W_b v + b_b, c_0 likewise; tanh of it otherwise
    lin = Captioner(9, bos=7, eos=8, image_size=(12, 12), channels=(4, 6), embed=8, hidden=12,
                    image_vector=10, decoder="show-tell", vector_norm=True,
                    bridge_act="linear").eval()
    _, _, v = lin.encode(x)
    h0, c0 = lin.decoder.init_state(v, 2, v)
    torch.testing.assert_close(h0[0], lin.decoder.bridge[0](v))
    torch.testing.assert_close(c0[0], lin.decoder.bridge[1](v))
    th = m.decoder.init_state(m.encode(x)[2], 2, x)
    torch.testing.assert_close(th[0][0], torch.tanh(m.decoder.bridge[0](m.encode(x)[2])))
    with pytest.raises(ValueError, match="bridge_act"):
        Captioner(9, bos=7, eos=8, image_size=(12, 12), bridge_act="relu")
    # a model saved before the options (none in its config) keeps the ReLU and the tanh
    old = Captioner(9, bos=7, eos=8, image_size=(12, 12), channels=(4, 6), embed=8, hidden=12,
                    image_vector=10, decoder="show-tell")
    assert old.vector_norm is None and "vector_norm.weight" not in old.state_dict()


def test_korean_captions_are_drawn_with_a_hangul_font(tmp_path) -> None:
    """A grid of Korean captions draws every glyph (matplotlib warns of each one a font lacks)."""
    import warnings

    from rnnkit.tasks.caption.plot import plot_grid
    from rnnkit.tasks.common import cjk_font, font_for

    assert font_for(["two cats"]) == (None, "")
    if cjk_font() is None:
        assert "fonts-noto-cjk" in font_for(["고양이"])[1]
        pytest.skip("no Hangul font installed (Debian package fonts-noto-cjk)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_grid(torch.rand(2, 3, 8, 8), ["웃는 얼굴", "고양이"], ["웃는 얼굴", "강아지"],
                  tmp_path / "ko.png", cols=2)
    assert not [w for w in caught if "missing from font" in str(w.message)]
    assert mpimg.imread(tmp_path / "ko.png").shape[0] > 0
