"""Encoder–decoder speed, measured in one run (run it under ``flock /work/.cpu.lock``):

* teacher-forced training throughput (sentences/s, forward + backward + AdamW step) of
  rnnkit's attention decoder against (a) the same model written as a plain PyTorch loop
  (``nn.LSTM`` packed encoder, ``nn.LSTMCell`` decoder with input feeding, batched) and
  (b) one sentence at a time, as in the PyTorch seq2seq tutorial;
* beam-5 decoding sentences/s: batched :func:`rnnkit.seq2seq.beam_search` against the same
  beam search run one sentence at a time, every sentence to the same length (the target
  length) and to its own maximum (1.5 x its source length + 5, the shape translation's
  maximum takes: the finished sentences leave the batch).

Freed memory is kept for reuse, as every ``rnnkit`` command keeps it.

    python bench/seq2seq_bench.py [--batch 64] [--src 12] [--tgt 14] [--hidden 256]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from rnnkit.runtime import keep_freed_memory
from rnnkit.seq2seq import Seq2Seq, beam_search


class Plain(nn.Module):
    """The same equations in plain PyTorch, with its own copy of ``m``'s weights."""

    def __init__(self, m: Seq2Seq) -> None:
        super().__init__()
        enc, dec = m.encoder, m.decoder
        self.src_emb = nn.Embedding.from_pretrained(enc.embed.weight.detach().clone(), freeze=False)
        self.lstm = enc.rnn.to_torch().train()
        self.lstm.batch_first = True
        self.bridge = nn.ModuleList(nn.Linear(b.in_features, b.out_features) for b in dec.bridge)
        self.bridge.load_state_dict(dec.bridge.state_dict())
        self.emb = nn.Embedding.from_pretrained(dec.embed.weight.detach().clone(), freeze=False)
        c = dec.rnn.cells[0]
        self.cell = nn.LSTMCell(c.input_size, c.hidden_size)
        self.cell.load_state_dict({k: getattr(c, k).detach() for k in
                                   ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
        self.w = nn.Linear(dec.attn.w.in_features, dec.attn.w.out_features, bias=False)
        self.w.load_state_dict(dec.attn.w.state_dict())
        self.combine = nn.Linear(dec.combine.in_features, dec.combine.out_features, bias=False)
        self.combine.load_state_dict(dec.combine.state_dict())
        self.gen = nn.Linear(dec.generator.in_features, dec.generator.out_features)
        self.gen.load_state_dict(dec.generator.state_dict())
        self.O = dec.output_size

    def forward(self, src, L, y):
        packed = nn.utils.rnn.pack_padded_sequence(self.src_emb(src), L, batch_first=True,
                                                   enforce_sorted=False)
        out, (h, c) = self.lstm(packed)
        memory, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                     total_length=src.shape[1])
        summary = torch.cat([h[-2], h[-1], c[-2], c[-1]], -1)
        h, c = (torch.tanh(b(summary)) for b in self.bridge)
        keys = self.w(memory)
        mask = torch.arange(src.shape[1]) < L[:, None]
        feed = memory.new_zeros(src.shape[0], self.O)
        outs = []
        for t in range(y.shape[1]):
            h, c = self.cell(torch.cat([self.emb(y[:, t]), feed], -1), (h, c))
            a = torch.softmax(torch.bmm(keys, h.unsqueeze(-1)).squeeze(-1)
                              .masked_fill(~mask, -float("inf")), -1)
            ctx = torch.bmm(a.unsqueeze(1), memory).squeeze(1)
            feed = torch.tanh(self.combine(torch.cat([ctx, h], -1)))
            outs.append(feed)
        return self.gen(torch.stack(outs, 1))


def train_rate(model, data, per_sentence=False, reps=3):
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    loss_fn = nn.CrossEntropyLoss(ignore_index=0)

    def step(src, L, y, tgt):
        loss = loss_fn(model(src, L, y).flatten(0, 1), tgt.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()

    src, L, y, tgt = data
    step(src[:2], L[:2], y[:2], tgt[:2])  # warm up
    t = time.perf_counter()
    for _ in range(reps):
        if per_sentence:
            for b in range(src.shape[0]):
                step(src[b:b + 1, :L[b]], L[b:b + 1], y[b:b + 1], tgt[b:b + 1])
        else:
            step(src, L, y, tgt)
    return reps * src.shape[0] / (time.perf_counter() - t)


def beam_rate(m, src, L, per_sentence, K=5, max_len=None):
    m.eval()
    lens = [int(1.5 * n) + 5 for n in L] if max_len is None else [max_len] * len(L)
    kw = dict(beam=K, bos=m.bos, eos=m.eos, alpha=0.6, forbid=(0, 1, m.bos))
    t = time.perf_counter()
    if per_sentence:
        for b in range(src.shape[0]):
            beam_search(*m.decoding(src[b:b + 1, :L[b]], L[b:b + 1], K), lens[b:b + 1], **kw)
    else:
        beam_search(*m.decoding(src, L, K), lens, **kw)
    return src.shape[0] / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--src", type=int, default=12)
    ap.add_argument("--tgt", type=int, default=14)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=4000)
    a = ap.parse_args()
    keep_freed_memory()  # as the rnnkit command does: no page faults for each step's buffers
    torch.manual_seed(0)
    V = a.vocab
    m = Seq2Seq(V, V + 2, bos=V, eos=V + 1, embed=128, hidden=a.hidden, attention="general",
                dropout=0.0)
    B = a.batch
    L = torch.randint(a.src // 2, a.src + 1, (B,))
    src = torch.randint(2, V, (B, a.src)) * (torch.arange(a.src) < L[:, None])
    y = torch.randint(2, V, (B, a.tgt))
    y[:, 0] = V
    tgt = torch.randint(2, V, (B, a.tgt))
    data = (src, L, y, tgt)
    plain = Plain(m)
    r_ours = train_rate(m.train(), data)
    r_plain = train_rate(plain.train(), data)
    r_one = train_rate(plain.train(), tuple(t[:8] for t in data), per_sentence=True, reps=1)
    print(f"teacher-forced training, batch {B}, source {a.src}, target {a.tgt}, hidden "
          f"{a.hidden}, vocabulary {V}, {torch.get_num_threads()} thread(s)")
    print(f"  rnnkit        {r_ours:8.1f} sentences/s")
    print(f"  (a) plain nn.LSTMCell loop, batched  {r_plain:8.1f}  -> rnnkit "
          f"{r_ours / r_plain:.2f}x")
    print(f"  (b) one sentence at a time           {r_one:8.1f}  -> rnnkit "
          f"{r_ours / r_one:.1f}x")
    for name, n in ((f"{a.tgt} steps each", a.tgt), ("1.5 x source + 5 steps", None)):
        bb = beam_rate(m, src, L, False, max_len=n)
        bs = beam_rate(m, src[:16], L[:16], True, max_len=n)
        print(f"beam 5, {name}: batched {bb:.1f} sentences/s, one at a time {bs:.1f} "
              f"-> {bb / bs:.1f}x")


if __name__ == "__main__":
    main()
