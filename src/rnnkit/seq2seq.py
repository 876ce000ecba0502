r"""Encoder–decoder with attention, and its decoding (greedy, beam search, sampling).

The reusable sequence-to-sequence model of rnnkit: translation (:mod:`rnnkit.tasks.translate`)
uses it with a token encoder; image captioning can use the :class:`Decoder` alone over any
``memory`` (image regions) with its ``mask`` and a ``summary`` vector. Library floor: it
imports only :mod:`rnnkit.layers` (beside ``inspect``), never a task.

Shapes: ``B`` sentences, ``S`` source steps, ``T`` target steps, ``E`` embedding, ``H``
decoder units, ``M`` memory features (``D * H_enc``), ``O`` attentional-vector size, ``V``
target vocabulary, ``N`` decoding rows (``B`` for greedy, ``B * K`` for a beam of ``K``).

One decoder step (Luong et al. 2015's flow; the score function is chosen by ``attention``)::

    x_t   = [emb(y_{t-1}); h~_{t-1}]                 input feeding (else emb(y_{t-1}))
    h_t   = RNN(x_t, h_{t-1})                         LSTM / GRU / RNN stack, top layer h_t
    e_ts  = score(h_t, m_s)                           additive: v·tanh(W_q h_t + W_m m_s + b)
                                                      (Bahdanau et al. 2015); dot: h_t·m_s;
                                                      general: h_t·(W m_s) (Luong et al.)
    a_t   = softmax_s(e_ts) over the real steps        padding gets exactly zero weight
    c_t   = Σ_s a_ts m_s
    h~_t  = tanh(W_c [c_t; h_t])                      the attentional vector (B, O)
    p(y_t | y_<t, x) = softmax(W_o h~_t + b_o)        W_o tied to emb when ``tie``

**Copying** (``copy=True``; the pointer-generator of See et al. 2017 over the same
attention): source positions that hold a target token (``copy_ids`` ``(B, S)``: its target
id, or -1) can be copied::

    g_t   = sigmoid(w_g·h~_t + b_g)                   how much to generate
    a'_ts = a_ts [copy_ids_s ≥ 0] / Σ_s a_ts [copy_ids_s ≥ 0]   attention on copyable steps
    p(y_t = w) = g_t softmax(W_o h~_t + b_o)_w + (1 − g_t) Σ_{s: copy_ids_s = w} a'_ts

(``g_t = 1`` for a sentence with no copyable step; ``b_g`` starts at -1, so an untrained
decoder copies about 73% of the time, its uniform attention giving the bag of the match's
pieces); the decoder then returns
``log p(y_t)`` where it would return logits (a log-softmax leaves them unchanged).

``attention="none"`` is the plain encoder–decoder (Sutskever et al. 2014): ``h~_t = h_t``,
everything the decoder knows of the source goes through the bridge. The **bridge** maps the
encoder's final state (``summary``, ``(B, Z)``) to the decoder's initial state:
``s_0 = tanh(W_b summary + b_b)`` per state (``h``, and ``c`` for an LSTM), one slice per
layer (``bridge_act="linear"``: ``W_b summary + b_b``, cs231n's image-captioning form);
``bridge="zero"`` starts from zeros.

Training runs the decoder teacher-forced, step by step on rnnkit's cells with the weights
prepared once per call: the embedding part of the first layer's input product is one matrix
product over all ``T`` steps, each step then adds only the input-feeding and recurrent
products (one product of ``[h~_{t-1}; h_{t-1}]`` for a cell that only sums them: LSTM, RNN)
and applies the cell's own equations (``cell.combine``); the output layer is one product
over all steps. Without input feeding no step needs an earlier step's attention,
so the stack runs over all ``T`` steps in one call (its whole-sequence kernel) and attention
is one batched product for every step. Decoding (no autograd) runs each step on the layer's
:class:`~rnnkit.kernels.step.Stepper` (for an LSTM on CPU, the whole stack's step is one C
call). Both give the same numbers (tested).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.layers import CELLS

ATTENTIONS = ("additive", "dot", "general", "none")
BRIDGES = ("linear", "zero")
BRIDGE_ACTS = ("tanh", "linear")
DECODER_CELLS = ("lstm", "gru", "rnn")
RNNState = tuple[Tensor, ...]  # each (L, N, H)


COPY_GATE_BIAS = -1.0


def _check(name: str, v: Any, choices: Sequence[str]) -> None:
    if v not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {v!r}")


# -- attention ----------------------------------------------------------------------------------
class Attention(nn.Module):
    """Scores of a query against every memory step, masked softmax, context.

    ``kind``: ``additive`` (Bahdanau: ``v·tanh(W_q q + W_m m + b)``, ``attn_size`` units),
    ``dot`` (``q·m``, needs ``query_size == memory_size``) or ``general`` (``q·(W m)``).
    Call :meth:`keys` once per source (``(B, S, M)`` → what the scores need), then
    ``forward(query (B, Q), keys, memory (B, S, M), mask (B, S) bool, True = real step)`` →
    ``(context (B, M), weights (B, S))``; weights are 0 on padding and sum to 1 over the real
    steps (every row needs at least one).
    """

    def __init__(self, kind: str, query_size: int, memory_size: int,
                 attn_size: int | None = None) -> None:
        super().__init__()
        _check("attention", kind, ATTENTIONS[:-1])
        if kind == "dot" and query_size != memory_size:
            raise ValueError(f"dot attention needs the decoder's units to equal the memory size; "
                             f"got {query_size} units and memory {memory_size} (use 'general' "
                             f"or 'additive', or make them equal)")
        self.kind = kind
        if kind == "additive":
            a = attn_size or query_size
            self.w_q = nn.Linear(query_size, a, bias=False)
            self.w_m = nn.Linear(memory_size, a)
            self.v = nn.Linear(a, 1, bias=False)
        elif kind == "general":
            self.w = nn.Linear(memory_size, query_size, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        """``(B, S, M)`` → ``(B, S, A)`` (additive: ``W_m m + b``), ``(B, S, Q)`` (general:
        ``W m``) or the memory itself (dot)."""
        if self.kind == "additive":
            return self.w_m(memory)
        if self.kind == "general":
            return self.w(memory)
        return memory

    def scores(self, query: Tensor, keys: Tensor) -> Tensor:
        """Unmasked scores: query ``(B, Q)`` → ``(B, S)``; ``(B, T, Q)`` (every step at
        once) → ``(B, T, S)``."""
        q = query if query.dim() == 3 else query.unsqueeze(1)              # (B, T, Q)
        if self.kind == "additive":
            e = self.v(torch.tanh(keys.unsqueeze(1) + self.w_q(q).unsqueeze(2))).squeeze(-1)
        else:
            e = torch.bmm(q, keys.transpose(1, 2))                         # (B, T, S)
        return e if query.dim() == 3 else e.squeeze(1)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor
                ) -> tuple[Tensor, Tensor]:
        """``query`` ``(B, Q)`` or ``(B, T, Q)`` → context ``(B, M)`` / ``(B, T, M)`` and
        weights ``(B, S)`` / ``(B, T, S)``."""
        m = mask if query.dim() == 2 else mask.unsqueeze(1)
        w = torch.softmax(self.scores(query, keys).masked_fill(~m, -math.inf), -1)
        if query.dim() == 2:
            return torch.bmm(w.unsqueeze(1), memory).squeeze(1), w
        return torch.bmm(w, memory), w


def length_mask(lengths: Tensor, S: int) -> Tensor:
    """``(B,)`` lengths → ``(B, S)`` bool, True on the real steps."""
    return torch.arange(S, device=lengths.device).view(1, S) < lengths.view(-1, 1)


# -- encoder ------------------------------------------------------------------------------------
class Encoder(nn.Module):
    """Token ids ``(B, S)`` with ``lengths`` ``(B,)`` → embedding → rnnkit RNN/LSTM/GRU stack
    (optionally bidirectional, run with ``lengths``, no packing) → ``memory`` ``(B, S, D*H)``
    (zero past each length), ``mask`` ``(B, S)`` and ``summary`` ``(B, n_state*D*H)``: the top
    layer's final state(s) at each sentence's own end, both directions concatenated."""

    def __init__(self, vocab_size: int, *, embed: int = 128, hidden: int = 256, layers: int = 1,
                 cell: str = "lstm", bidirectional: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        _check("encoder cell", cell, DECODER_CELLS)
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=0)
        self.rnn = CELLS[cell](embed, hidden, num_layers=layers, bidirectional=bidirectional,
                               dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.output_size = self.rnn.output_size
        self.summary_size = len(self.rnn.state_names) * self.rnn.output_size

    def forward(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if ids.dim() != 2:
            raise ValueError(f"source ids must be (B, S), got shape {tuple(ids.shape)}")
        if bool((lengths < 1).any()):
            raise ValueError("every source needs at least one token (got a length 0)")
        x = self.drop(self.embed(ids))                                    # (B, S, E)
        memory, state = self.rnn(x, lengths=lengths)                      # (B, S, D*H)
        st = state if isinstance(state, tuple) else (state,)
        D = self.rnn.num_directions
        summary = torch.cat([torch.cat(list(s[-D:]), -1) for s in st], -1)  # (B, Z)
        return self.drop(memory), length_mask(lengths, ids.shape[1]), summary


# -- decoder ------------------------------------------------------------------------------------
@dataclass
class DecodeState:
    """What a decoding step carries: the stack's state (each ``(L, N, H)``), the last
    attentional vector ``feed`` ``(N, O)``, and the source (``memory`` ``(N, S, M)``, its
    ``keys``, ``mask`` ``(N, S)``), already repeated per beam."""

    rnn: RNNState
    feed: Tensor | None
    memory: Tensor
    keys: Tensor | None
    mask: Tensor
    copy_ids: Tensor | None = None

    def reorder(self, idx: Tensor) -> DecodeState:
        """Rows ``idx`` ``(N',)`` of the recurrent state and the feed (beam reordering). The
        source is the same for every beam of a sentence and ``idx`` stays inside each
        sentence's beams, so it is not moved, unless rows leave (``N' < N``: finished
        sentences out of the batch), when the source's rows follow."""
        src = (self.memory, self.keys, self.mask, self.copy_ids)
        if idx.numel() != self.memory.shape[0]:
            src = tuple(None if t is None else t.index_select(0, idx) for t in src)
        return DecodeState(tuple(s.index_select(1, idx) for s in self.rnn),
                           None if self.feed is None else self.feed.index_select(0, idx), *src)


class Decoder(nn.Module):
    """Embedding → LSTM/GRU/RNN stack (input feeding optional) → attention over ``memory`` →
    attentional vector → output layer. See the module docstring for the equations.

    ``forward(y_in (B, T), memory (B, S, M), mask (B, S), summary (B, Z))`` → logits
    ``(B, T, V)`` and attention weights ``(B, T, S)`` (teacher forcing: ``y_in`` is the target
    shifted right, starting with BOS). Decoding: :meth:`start` then :meth:`step`. With
    ``copy``, both also take ``copy_ids`` ``(B, S)`` and return log-probabilities of the
    mixed distribution in place of logits (module docstring).
    """

    def __init__(self, vocab_size: int, *, memory_size: int, summary_size: int = 0,
                 embed: int = 128, hidden: int = 256, layers: int = 1, cell: str = "lstm",
                 attention: str = "general", attn_size: int | None = None,
                 input_feed: bool = True, bridge: str = "linear", tie: bool = False,
                 output_size: int | None = None, dropout: float = 0.0,
                 bridge_act: str = "tanh", copy: bool = False) -> None:
        super().__init__()
        _check("decoder cell", cell, DECODER_CELLS)
        _check("attention", attention, ATTENTIONS)
        _check("bridge", bridge, BRIDGES)
        _check("bridge_act", bridge_act, BRIDGE_ACTS)
        self.bridge_act = bridge_act
        if bridge == "linear" and summary_size <= 0:
            raise ValueError("a linear bridge needs summary_size > 0 (the encoder's final "
                             "state size); use bridge='zero' without one")
        self.attention = attention
        self.input_feed = bool(input_feed) and attention != "none"
        O = hidden if attention == "none" else (output_size or hidden)
        self.output_size, self.hidden, self.layers, self.embed_size = O, hidden, layers, embed
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=0)
        self.rnn = CELLS[cell](embed + (O if self.input_feed else 0), hidden, num_layers=layers,
                               dropout=dropout if layers > 1 else 0.0)
        self.n_state = len(self.rnn.state_names)
        if attention != "none":
            self.attn = Attention(attention, hidden, memory_size, attn_size)
            self.combine = nn.Linear(memory_size + hidden, O, bias=False)
        self.bridge = (nn.ModuleList(nn.Linear(summary_size, layers * hidden)
                                     for _ in range(self.n_state)) if bridge == "linear" else None)
        self.generator = nn.Linear(O, vocab_size)
        if copy and attention == "none":
            raise ValueError("copying points with the attention weights; it needs attention "
                             "(got attention='none')")
        self.copy_gate = nn.Linear(O, 1) if copy else None
        if self.copy_gate is not None:   # start copying most of the time (g_0 ~ 0.27): the
            nn.init.constant_(self.copy_gate.bias, COPY_GATE_BIAS)  # match's bag of pieces
        if tie:
            if O != embed:
                raise ValueError(f"a tied output layer needs the attentional vector's size to "
                                 f"equal the embedding's; got {O} and {embed} (set "
                                 f"output_size={embed} or the embedding to {O})")
            self.generator.weight = self.embed.weight
        self.drop = nn.Dropout(dropout)
        self.p_drop = dropout

    # -- initial state ----------------------------------------------------------------------
    def init_state(self, summary: Tensor | None, batch: int, like: Tensor) -> RNNState:
        """``summary`` ``(B, Z)`` → the stack's initial state, each ``(L, B, H)``."""
        if self.bridge is None or summary is None:
            z = like.new_zeros(self.layers, batch, self.hidden)
            return tuple(z.clone() for _ in range(self.n_state))
        act = torch.tanh if self.bridge_act == "tanh" else (lambda v: v)
        return tuple(act(b(summary)).view(batch, self.layers, self.hidden)
                     .transpose(0, 1).contiguous() for b in self.bridge)

    def _attend(self, h: Tensor, keys: Tensor | None, memory: Tensor, mask: Tensor
                ) -> tuple[Tensor, Tensor | None]:
        """Top layer ``h`` ``(N, H)`` → attentional vector ``(N, O)``, weights ``(N, S)``;
        or every step at once, ``(B, T, H)`` → ``(B, T, O)``, ``(B, T, S)``."""
        if self.attention == "none":
            return h, None
        ctx, w = self.attn(h, keys, memory, mask)
        return torch.tanh(self.combine(torch.cat([ctx, h], -1))), w

    def _copy_mix(self, logits: Tensor, out: Tensor, w: Tensor, copy_ids: Tensor | None
                  ) -> Tensor:
        """``log p`` of the pointer-generator mix (module docstring): ``logits`` ``(..., V)``,
        attentional vectors ``out`` ``(..., O)``, weights ``w`` ``(..., S)``, ``copy_ids``
        ``(N, S)`` with ``...`` = ``(N,)`` or ``(N, T)``."""
        if copy_ids is None:
            raise ValueError("a decoder with copy=True needs copy_ids (B, S): each source "
                             "step's target id, or -1")
        if copy_ids.shape != w.shape[:1] + w.shape[-1:]:
            raise ValueError(f"expected copy_ids of shape {tuple(w.shape[:1] + w.shape[-1:])}"
                             f", got {tuple(copy_ids.shape)}")
        ok = copy_ids >= 0                                                 # (N, S)
        ids = copy_ids.clamp_min(0)
        if w.dim() == 3:
            ok, ids = ok[:, None], ids[:, None].expand_as(w)
        wc = w.float() * ok
        tot = wc.sum(-1, keepdim=True)                                     # (..., 1)
        g = torch.sigmoid(self.copy_gate(out).float())
        g = torch.where(tot > 0, g, torch.ones_like(g))
        p = g * torch.softmax(logits.float(), -1)
        p = p.scatter_add(-1, ids, (1 - g) * wc / tot.clamp_min(1e-30))
        return torch.log(p.clamp_min(1e-30))

    # -- teacher forcing (training) ---------------------------------------------------------
    def forward(self, y_in: Tensor, memory: Tensor, mask: Tensor, summary: Tensor | None,
                copy_ids: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        B, T = y_in.shape
        E = self.embed_size
        x = self.drop(self.embed(y_in))                                    # (B, T, E)
        if not self.input_feed:   # no step depends on an earlier one's attention: the stack
            return self._forward_whole(x, memory, mask, summary, copy_ids)  # runs over time
        cells = list(self.rnn.cells)
        c0 = cells[0]
        xe = F.linear(x, c0.weight_ih[:, :E], c0.bias_ih)                 # (B, T, G*H) once
        w_feed = c0.weight_ih[:, E:]                                        # (G*H, O)
        # a cell that only sums its two products takes the feed's and the recurrent one as
        # one product of [feed; h] (B, O+H) with [W_feed W_hh] (G*H, O+H)
        w_fh = torch.cat([w_feed, c0.weight_hh], 1) if c0.sums_products else None
        keys = None if self.attention == "none" else self.attn.keys(memory)
        state = [tuple(s[k] for s in self.init_state(summary, B, x)) for k in range(self.layers)]
        feed = x.new_zeros(B, self.output_size)
        outs, weights = [], []
        for t in range(T):
            inp = None
            for k, cell in enumerate(cells):
                if k:
                    xi, hh = (F.linear(self.drop(inp), cell.weight_ih, cell.bias_ih),
                              F.linear(state[k][0], cell.weight_hh, cell.bias_hh))
                elif w_fh is not None:
                    xi, hh = xe[:, t], F.linear(torch.cat([feed, state[0][0]], 1), w_fh,
                                                c0.bias_hh)
                else:
                    xi, hh = (xe[:, t] + F.linear(feed, w_feed),
                              F.linear(state[0][0], c0.weight_hh, c0.bias_hh))
                st, _ = cell.combine(xi, hh, state[k])
                state[k] = st
                inp = st[0]
            out, w = self._attend(inp, keys, memory, mask)
            feed = self.drop(out)
            outs.append(out)
            weights.append(w)
        hs = torch.stack(outs, 1)                                          # (B, T, O)
        logits = self.generator(self.drop(hs))                             # (B, T, V)
        w_all = None if weights[0] is None else torch.stack(weights, 1)    # (B, T, S)
        if self.copy_gate is not None:
            logits = self._copy_mix(logits, hs, w_all, copy_ids)
        return logits, w_all

    def _forward_whole(self, x: Tensor, memory: Tensor, mask: Tensor, summary: Tensor | None,
                       copy_ids: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing without input feeding: the embedded targets ``x`` ``(B, T, E)``
        run through the stack in one call (its whole-sequence kernel, ``kernel="auto"``),
        then attention for all ``T`` steps at once: the same equations as the step loop."""
        st = self.init_state(summary, x.shape[0], x)
        h, _ = self.rnn(x, st if self.n_state > 1 else st[0])             # (B, T, H)
        hs, w_all = self._attend(h, None if self.attention == "none" else
                                 self.attn.keys(memory), memory, mask)    # (B, T, O)
        logits = self.generator(self.drop(hs))                             # (B, T, V)
        if self.copy_gate is not None:
            logits = self._copy_mix(logits, hs, w_all, copy_ids)
        return logits, w_all

    # -- one step at a time (decoding) ------------------------------------------------------
    def start(self, memory: Tensor, mask: Tensor, summary: Tensor | None, repeat: int = 1,
              copy_ids: Tensor | None = None) -> DecodeState:
        """The state before the first step, every sentence repeated ``repeat`` times (its
        beams: rows ``b*repeat .. b*repeat+repeat-1``)."""
        B = memory.shape[0]
        rnn = self.init_state(summary, B, memory)
        if repeat > 1:
            memory = memory.repeat_interleave(repeat, 0)
            mask = mask.repeat_interleave(repeat, 0)
            if copy_ids is not None:
                copy_ids = copy_ids.repeat_interleave(repeat, 0)
            rnn = tuple(s.repeat_interleave(repeat, 1) for s in rnn)
        N = B * repeat
        keys = None if self.attention == "none" else self.attn.keys(memory)
        feed = memory.new_zeros(N, self.output_size) if self.input_feed else None
        return DecodeState(rnn, feed, memory, keys, mask, copy_ids)

    @torch.no_grad()
    def step(self, y: Tensor, st: DecodeState) -> tuple[Tensor, DecodeState, Tensor | None]:
        """``y`` ``(N,)`` previous tokens → log-probabilities ``(N, V)``, the new state,
        attention weights ``(N, S)`` (None without attention). Runs the stack on its
        :class:`~rnnkit.kernels.step.Stepper` (weights prepared once, rebuilt when they
        change)."""
        N = y.shape[0]
        x = self.embed(y)
        if self.input_feed:
            x = torch.cat([x, st.feed], -1)
        stepper = self.rnn.stepper(N)
        h, new = stepper(x, st.rnn if self.n_state > 1 else st.rnn[0])
        new = new if isinstance(new, tuple) else (new,)
        out, w = self._attend(h, st.keys, st.memory, st.mask)
        logits = self.generator(out)
        logp = (self._copy_mix(logits, out, w, st.copy_ids) if self.copy_gate is not None
                else torch.log_softmax(logits.float(), -1))
        return logp, DecodeState(new, out if self.input_feed else None, st.memory, st.keys,
                                 st.mask, st.copy_ids), w


# -- the whole model ----------------------------------------------------------------------------
class Seq2Seq(nn.Module):
    """:class:`Encoder` + :class:`Decoder`. ``forward(src (B, S), src_len (B,), y_in (B, T))``
    → logits ``(B, T, V)``. A bidirectional encoder has ``hidden // 2`` units per direction,
    so the memory has ``M = hidden`` features, like the decoder (OpenNMT's convention; dot
    attention needs it). Target ids ``bos``/``eos`` mark a sentence's start and end
    (``pad`` = 0 everywhere). ``copy_offset``: source ids ``>= copy_offset`` stand for the
    target token ``id - copy_offset`` (a fuzzy match, :mod:`rnnkit.tasks.translate.memory`),
    and the decoder can copy them (``copy=True``); ``copy_below``: source ids ``2 ..
    copy_below - 1`` *are* target ids (a source read with the target's tokenizer), copied as
    themselves. With either, ``forward`` returns log-probabilities.
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, *, bos: int, eos: int, cell: str = "lstm",
                 embed: int = 128, hidden: int = 256, layers: int = 1,
                 bidirectional: bool = True, attention: str = "general",
                 attn_size: int | None = None, input_feed: bool = True, bridge: str = "linear",
                 tie: bool = False, output_size: int | None = None, dropout: float = 0.2,
                 copy_offset: int | None = None, copy_below: int | None = None) -> None:
        super().__init__()
        self.bos, self.eos = bos, eos
        if copy_offset is not None and not 0 < copy_offset < src_vocab:
            raise ValueError(f"copy_offset must lie inside the source vocabulary (1 .. "
                             f"{src_vocab - 1}), got {copy_offset}")
        if copy_below is not None and not 2 < copy_below <= min(src_vocab, tgt_vocab):
            raise ValueError(f"copy_below must lie in 3 .. {min(src_vocab, tgt_vocab)} (ids "
                             f"below it are source and target ids at once), got {copy_below}")
        if copy_below is not None and copy_offset is not None and copy_offset < copy_below:
            raise ValueError(f"copy_offset ({copy_offset}) must not be below copy_below "
                             f"({copy_below}): the two copyable ranges would overlap")
        self.copy_offset, self.copy_below = copy_offset, copy_below
        if bidirectional and hidden % 2:
            raise ValueError(f"a bidirectional encoder splits the units between its two "
                             f"directions; hidden must be even, got {hidden}")
        self.encoder = Encoder(src_vocab, embed=embed, hidden=hidden // (2 if bidirectional
                                                                         else 1),
                               layers=layers, cell=cell,
                               bidirectional=bidirectional, dropout=dropout)
        self.decoder = Decoder(tgt_vocab, memory_size=self.encoder.output_size,
                               summary_size=self.encoder.summary_size, embed=embed,
                               hidden=hidden, layers=layers, cell=cell, attention=attention,
                               attn_size=attn_size, input_feed=input_feed, bridge=bridge,
                               tie=tie, output_size=output_size, dropout=dropout,
                               copy=self.copies)

    def copy_ids(self, src: Tensor) -> Tensor | None:
        """``src`` ``(B, S)`` → the target id each step can be copied as, or -1 ``(B, S)``;
        None for a model that does not copy."""
        if not self.copies:
            return None
        out = torch.full_like(src, -1)
        if self.copy_below is not None:
            out = torch.where((src >= 2) & (src < self.copy_below), src, out)
        if self.copy_offset is not None:
            out = torch.where(src >= self.copy_offset, src - self.copy_offset, out)
        return out

    @property
    def copies(self) -> bool:
        """Whether the decoder can copy source steps (``forward`` gives log-probabilities)."""
        return self.copy_offset is not None or self.copy_below is not None

    def forward(self, src: Tensor, src_len: Tensor, y_in: Tensor) -> Tensor:
        memory, mask, summary = self.encoder(src, src_len)
        return self.decoder(y_in, memory, mask, summary, self.copy_ids(src))[0]

    def attention_weights(self, src: Tensor, src_len: Tensor, y_in: Tensor) -> Tensor | None:
        """Teacher-forced attention ``(B, T, S)``."""
        memory, mask, summary = self.encoder(src, src_len)
        return self.decoder(y_in, memory, mask, summary, self.copy_ids(src))[1]

    @torch.no_grad()
    def decoding(self, src: Tensor, src_len: Tensor, repeat: int = 1) -> tuple[
            Callable[[Tensor, DecodeState], tuple[Tensor, DecodeState, Tensor | None]],
            DecodeState]:
        """``(step, state)`` for :func:`greedy_search` / :func:`beam_search` /
        :func:`sample_search`, every sentence repeated ``repeat`` times."""
        memory, mask, summary = self.encoder(src, src_len)
        return self.decoder.step, self.decoder.start(memory, mask, summary, repeat,
                                                     self.copy_ids(src))


# -- decoding -----------------------------------------------------------------------------------
StepFn = Callable[[Tensor, Any], tuple[Tensor, Any, Tensor | None]]


@dataclass
class Hypothesis:
    """One decoded sequence: ``tokens`` (without BOS/EOS), ``logprob`` (sum of the token
    log-probabilities, EOS included when it ended), ``score`` (``logprob / lp``, GNMT length
    penalty; equal to ``logprob`` for greedy and sampling), ``attention`` ``(len, S)`` when
    asked (one row per emitted token, EOS included)."""

    tokens: list[int]
    logprob: float
    score: float
    attention: Tensor | None = field(default=None, repr=False)


def length_penalty(length: int, alpha: float) -> float:
    """GNMT (Wu et al. 2016): ``((5 + length) / 6) ** alpha``; 1 for ``alpha = 0``."""
    return ((5.0 + length) / 6.0) ** alpha


def max_lengths(src_len: Tensor, ratio: float, extra: int) -> list[int]:
    """Per sentence ``floor(ratio * source length + extra)``, at least 1."""
    return [max(1, int(ratio * int(n) + extra)) for n in src_len]


def _select(state: Any, idx: Tensor) -> Any:
    if isinstance(state, Tensor):
        return state.index_select(0, idx)
    if hasattr(state, "reorder"):
        return state.reorder(idx)
    return type(state)(_select(s, idx) for s in state)


def _forbid(logp: Tensor, forbid: Sequence[int]) -> Tensor:
    if forbid:
        logp[:, list(forbid)] = -math.inf
    return logp


def _extend(toks: list[list[int]], lp: list[float], done: list[bool], y: Tensor, gain: Tensor,
            t: int, max_lens: Sequence[int], eos: int,
            attention: tuple[list[list[Tensor]], Tensor] | None = None) -> bool:
    """Step ``t`` of a one-hypothesis-per-sentence search: each unfinished sentence ``b`` takes
    token ``y[b]`` (``(B,)``) and its log-probability ``gain[b]``, and with ``attention =
    (att, w)`` its weights ``w[b]``; it ends at EOS or at its maximum length. Returns whether
    every sentence has ended."""
    for b in range(len(toks)):
        if done[b]:
            continue
        lp[b] += float(gain[b])
        if attention is not None:
            attention[0][b].append(attention[1][b])
        if int(y[b]) == eos:
            done[b] = True
        else:
            toks[b].append(int(y[b]))
            done[b] = t + 1 >= max_lens[b]
    return all(done)


def greedy_search(step: StepFn, state: Any, max_lens: Sequence[int], *, bos: int, eos: int,
                  forbid: Sequence[int] = (), attention: bool = False) -> list[Hypothesis]:
    """The most probable token at every step, all ``B = len(max_lens)`` sentences at once,
    each until its EOS or its maximum length."""
    B = len(max_lens)
    dev = _device(state)
    y = torch.full((B,), bos, dtype=torch.long, device=dev)
    toks: list[list[int]] = [[] for _ in range(B)]
    lp, att = [0.0] * B, [[] for _ in range(B)]
    done = [False] * B
    for t in range(max(max_lens)):
        logp, state, w = step(y, state)
        logp = _forbid(logp, forbid)
        best, y = logp.max(-1)
        if _extend(toks, lp, done, y, best, t, max_lens, eos,
                   (att, w) if attention and w is not None else None):
            break
    return [Hypothesis(toks[b], lp[b], lp[b], torch.stack(att[b]) if att[b] else None)
            for b in range(B)]


def sample_search(step: StepFn, state: Any, max_lens: Sequence[int], *, bos: int, eos: int,
                  temperature: float = 1.0, top_k: int | None = None,
                  generator: torch.Generator | None = None, forbid: Sequence[int] = ()
                  ) -> list[Hypothesis]:
    """Each token drawn from ``softmax(logits / temperature)`` (restricted to the ``top_k``
    most probable when given); ``temperature = 0`` is greedy."""
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if temperature == 0:
        return greedy_search(step, state, max_lens, bos=bos, eos=eos, forbid=forbid)
    B = len(max_lens)
    y = torch.full((B,), bos, dtype=torch.long, device=_device(state))
    toks: list[list[int]] = [[] for _ in range(B)]
    lp, done = [0.0] * B, [False] * B
    for t in range(max(max_lens)):
        logp, state, _ = step(y, state)
        lg = _forbid(logp, forbid) / temperature
        if top_k is not None and top_k < lg.shape[-1]:
            lg = lg.masked_fill(lg < torch.topk(lg, top_k, -1).values[:, -1:], -math.inf)
        y = torch.multinomial(torch.softmax(lg, -1), 1, generator=generator).squeeze(1)
        if _extend(toks, lp, done, y, logp.gather(1, y[:, None])[:, 0], t, max_lens, eos):
            break
    return [Hypothesis(toks[b], lp[b], lp[b]) for b in range(B)]


def _device(state: Any) -> torch.device:
    if isinstance(state, Tensor):
        return state.device
    if isinstance(state, DecodeState):
        return state.memory.device
    for s in (vars(state).values() if hasattr(state, "__dict__") else state):
        if isinstance(s, Tensor):
            return s.device
    return torch.device("cpu")


def _blocked(hist: list[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram already in ``hist``."""
    if n <= 0 or len(hist) < n - 1:
        return set()
    if n == 1:
        return set(hist)
    tail = tuple(hist[len(hist) - n + 1:])
    return {hist[i + n - 1] for i in range(len(hist) - n + 1)
            if tuple(hist[i:i + n - 1]) == tail}


@torch.no_grad()
def beam_search(step: StepFn, state: Any, max_lens: Sequence[int], *, beam: int, bos: int,
                eos: int, alpha: float = 0.0, n_best: int = 1, block_ngram: int = 0,
                forbid: Sequence[int] = (), attention: bool = False) -> list[list[Hypothesis]]:
    """Beam search over ``B = len(max_lens)`` sentences at once; ``state`` holds ``B * beam``
    rows (sentence ``b``'s beams are rows ``b*beam ..``), e.g. from
    :meth:`Seq2Seq.decoding` with ``repeat=beam``.

    Every step extends each live hypothesis by every token, and per sentence keeps the
    ``2 * beam`` best candidates by their log-probability: those that end (EOS) within the
    top ``beam`` are set apart as finished, scored ``logprob / lp(length)`` (GNMT penalty
    with ``alpha``; the length counts EOS), and the best ``beam`` others live on; the
    recurrent state (and input-feeding vector) is reordered with them. ``block_ngram = n``
    forbids a token that would repeat an n-gram of the hypothesis. A sentence is done when it
    has ``beam`` finished hypotheses or reaches its maximum length (its live hypotheses then
    finish as they are). Returns, per sentence, its ``n_best`` hypotheses, best first.
    """
    B, K = len(max_lens), beam
    if K < 1 or n_best < 1 or n_best > K:
        raise ValueError(f"need beam >= 1 and 1 <= n_best <= beam, got beam {beam}, "
                         f"n_best {n_best}")
    dev = _device(state)
    y = torch.full((B * K,), bos, dtype=torch.long, device=dev)
    scores = torch.full((B, K), -math.inf, device=dev)
    scores[:, 0] = 0.0                         # one live hypothesis per sentence at the start
    hist = torch.zeros(B * K, 0, dtype=torch.long, device=dev)
    att: Tensor | None = None
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    live = list(range(B))  # the sentences still searched: row block i is sentence live[i]
    for t in range(max(max_lens)):
        Bl = len(live)
        logp, state, w = step(y, state)                                   # (Bl*K, V)
        logp = _forbid(logp, forbid)
        V = logp.shape[-1]
        if block_ngram:
            h = hist.tolist()
            for r in range(Bl * K):
                bl = _blocked(h[r], block_ngram)
                if bl:
                    logp[r, list(bl)] = -math.inf
        if attention and w is not None:
            att = w.unsqueeze(1) if att is None else torch.cat([att, w.unsqueeze(1)], 1)
        cand = (scores.view(Bl * K, 1) + logp).view(Bl, K * V)
        n_cand = min(2 * K, K * V)
        top, pos = cand.topk(n_cand, -1)                                   # (Bl, 2K)
        src_beam, tok = pos // V, pos % V
        is_eos = tok == eos
        top_l, beam_l, eos_l = top.tolist(), src_beam.tolist(), is_eos.tolist()
        n = hist.shape[1] + 1
        for i, b in enumerate(live):                                       # set apart the ends
            for j in range(min(K, n_cand)):
                if eos_l[i][j] and top_l[i][j] > -math.inf:
                    r = i * K + beam_l[i][j]
                    finished[b].append(Hypothesis(
                        hist[r].tolist(), top_l[i][j], top_l[i][j] / length_penalty(n, alpha),
                        None if att is None else att[r].clone()))
        # the best K candidates that do not end live on (stable: by rank)
        order = torch.sort(is_eos.to(torch.int8), dim=-1, stable=True).indices[:, :K]
        keep_s = top.gather(1, order)
        keep_s = keep_s.masked_fill(is_eos.gather(1, order), -math.inf)
        if keep_s.shape[1] < K:
            pad = K - keep_s.shape[1]
            keep_s = torch.cat([keep_s, keep_s.new_full((Bl, pad), -math.inf)], 1)
            order = torch.cat([order, order[:, :1].expand(Bl, pad)], 1)
        base = (torch.arange(Bl, device=dev) * K).view(Bl, 1)
        rows = (base + src_beam.gather(1, order)).view(-1)                # (Bl*K,)
        y = tok.gather(1, order).view(-1)
        hist = torch.cat([hist.index_select(0, rows), y.unsqueeze(1)], 1)
        scores = keep_s
        stay = []                 # the sentences that go on: the others leave the batch
        score_l = None
        for i, b in enumerate(live):
            if len(finished[b]) >= K:
                continue
            if t + 1 >= max_lens[b]:          # out of length: the live ones finish as they are
                score_l = scores.tolist() if score_l is None else score_l
                for k in range(K):
                    sc = score_l[i][k]
                    if sc > -math.inf:
                        r = int(rows[i * K + k])
                        finished[b].append(Hypothesis(
                            hist[i * K + k].tolist(), sc, sc / length_penalty(n, alpha),
                            None if att is None else att[r].clone()))
                continue
            stay.append(i)
        if not stay:
            break
        if len(stay) < Bl:        # rows of the sentences that stay, in their beams' order
            keep = torch.tensor(stay, device=dev)
            sel = (keep.view(-1, 1) * K + torch.arange(K, device=dev)).view(-1)
            rows, y, hist, scores = rows[sel], y[sel], hist[sel], scores[keep]
            live = [live[i] for i in stay]
        if att is not None:
            att = att.index_select(0, rows)
        state = _select(state, rows)
    out = []
    for b in range(B):
        hyps = sorted(finished[b], key=lambda h: -h.score)
        out.append(hyps[:n_best])
    return out
