"""One time step at a time: the stateful step API for generation and streaming.

A :class:`Stepper` runs a unidirectional layer stack for ONE time step, ``x`` ``(B, I)`` ->
``h`` ``(B, H)`` of the last layer, carrying the state in the layer's own format (``h``, or
``(h, c)``, each ``(num_layers, B, H)``). It is inference only (no autograd, dropout off).

Calling the whole layer on a ``(B, 1, I)`` input costs the layer's per-call overhead at every
step (for torch.nn's oneDNN kernel at batch 1 that is most of the time). The stepper instead
prepares everything once, while the weights stay unchanged:

* for LSTM on CPU float32, the whole stack's step is ONE C call
  (``lstm_stack_step`` in ``csrc/lstm.c``): the weights are packed once with each
  unit's four gates side by side, so the threads split the units and apply the cell as soon as
  their products are done; at batch 1 a step is memory bound (it reads every weight once);
* otherwise, per layer, ``W_ih`` and ``W_hh`` reordered once for oneDNN
  (:class:`gemm.Fixed`), their biases folded into the products, and the cell's own equations
  (``cell.combine``, or ``cell.step`` for cells whose reset gate acts before the recurrent
  product).

:meth:`Stepper.run` runs a whole chunk ``(B, T, I)`` (streaming) on the same prepared weights:
per layer the input projection of all ``T`` steps as one product, then the recurrence as one C
call (``*_seq_forward``, the fast path's own forward, here with weights packed once instead of
on every call) or, without the C library, one product and the cell's equations per step.
Families with no recurrent weight to prepare (minGRU, minLSTM) or with their own normalised
kernel (LayerNormLSTM) run the chunk on the layer's whole-sequence kernel.
:meth:`Stepper.run_ids` takes token ids and the embedding they index instead of ``x``: the
first layer's input projection of every token is then a row of a table
``embedding W_ih^T + b`` ``(V, G*H)``, built once per embedding, so a chunk's projection is a
row lookup instead of a product (a streamed chunk of 16 characters spends more time in that
small product than in its recurrence).

Freshness (whether the prepared weights are still the layer's): :meth:`Stepper.fresh` compares
each parameter's address and version counter, and the count of optimizer steps taken in this
process (a global ``torch.optim`` step hook: fused and foreach optimizers write the weights
without bumping their version counters); ``fresh(deep=True)`` also compares the weights' bytes
with a snapshot taken at build, which catches writes no counter sees (``p.data.mul_(2)``, a
numpy view). Streaming checks deeply at each session's first chunk and cheaply at every other
chunk (a deep check reads every weight, as much memory traffic as a 16-character chunk's whole
recurrence); the per-token callers (generation) check cheaply per step.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook

from rnnkit.kernels import bindings, gemm, native
from rnnkit.kernels.plan import Plan
from rnnkit.kernels.stack import Stack

CHUNK_MODES = ("lstm", "gru", "gru_reset_before", "rnn_tanh", "rnn_relu")  # run() prepares these
TABLE_MAX = 1 << 22  # floats (16 MiB) in run_ids' projection table at most; larger: a product
PLANS = 64  # chunk layouts (b, T) a stepper keeps
STACK_ROWS = 8  # an LSTM chunk of at most this many rows runs as stack steps (lstm_stack_run)

_OPTIMIZER_STEPS = [0]  # optimizer steps taken in this process (any optimizer, fused included)


def _count_step(*_: object) -> None:
    _OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_step)


class Stepper:
    """``stepper(x, state) -> (h_top, state)`` for a unidirectional ``layer``.

    Args:
        layer: a unidirectional stack (:class:`rnnkit.kernels.stack.Stack`, from
            :meth:`rnnkit.layers.Recurrent.describe_stack`).
        batch: rows ``B`` per step (the buffers are sized for it).

    ``x`` ``(B, I)``; ``state`` ``None`` (zeros) or the layer's state format; returns the last
    layer's new ``h`` ``(B, H)`` and the new state (fresh tensors, safe to keep).
    The stepper snapshots the weights: build a new one after they change
    (:meth:`rnnkit.layers.Recurrent.stepper` does that for you).
    """

    def __init__(self, layer: Stack, batch: int = 1) -> None:
        if layer.bidirectional:
            raise ValueError("a bidirectional layer cannot run one step at a time: its backward "
                             "direction needs the whole sequence")
        self.stack, self.B = layer, batch
        self.L, self.H = layer.num_layers, layer.hidden_size
        self.n_state = len(layer.state_names)
        p = next(iter(layer.parameters()))
        self.device, self.dtype = p.device, p.dtype
        self.version = _weights_version(layer)
        self.steps = _OPTIMIZER_STEPS[0]
        self.snapshot = [t.detach().clone(memory_format=torch.contiguous_format)
                         for t in layer.parameters()]
        self._chunk: list | None = None  # the chunk path's weights, prepared at its first use
        self._table: dict | None = None  # run_ids: the embedding, its version, bytes, tables
        self._plans: dict[tuple[int, int], Plan] = {}  # (b, T) -> a chunk's uniform layout
        self.split = [hasattr(c, "combine") and getattr(c, "reset_after", True)
                      for c in layer.cells]
        self.native = (layer.mode == "lstm" and all(self.split)
                       and native.usable(p) and p.is_contiguous())
        self.mats, self.biases = [], []
        with torch.no_grad():
            if self.native:  # W_ih, W_hh, bias per layer, packed for the C step
                packs = [[native.pack_units(c.weight_ih), native.pack_units(c.weight_hh),
                          native.pack_units(c.weight_hh.new_zeros(4 * self.H) if c.bias_ih is None
                                            else c.bias_ih + c.bias_hh)] for c in layer.cells]
                self.packs = bindings.StackWeights(*zip(*packs, strict=True), I=layer.input_size,
                                            H=self.H)
            for cell, split in zip(layer.cells, self.split, strict=True):
                if self.native or not split:
                    self.mats.append(None)
                    self.biases.append(None)
                else:  # two products: the cell's equations need W_hh h + b_hh on its own
                    self.mats.append((gemm.Fixed(cell.weight_ih.detach().t(), batch),
                                      gemm.Fixed(cell.weight_hh.detach().t(), batch)))
                    self.biases.append((cell.bias_ih, cell.bias_hh))

    def fresh(self, deep: bool = False) -> bool:
        """Whether the layer's weights are still those the stepper was built from: same
        tensors, same version counters, no optimizer step since (any optimizer in this
        process; when its weights turn out unchanged, the stepper stays); ``deep``: also the
        same bytes (writes that bump no counter, e.g. through ``.data``)."""
        if _weights_version(self.stack) != self.version:
            return False
        if self.steps != _OPTIMIZER_STEPS[0] or deep:
            if not all(_same(a, b) for a, b in zip(self.stack.parameters(), self.snapshot,
                                                   strict=True)):
                return False
            self.steps = _OPTIMIZER_STEPS[0]
        return True

    def serves(self, rows: int) -> bool:
        """Whether one step of ``rows`` rows runs here: the batch it was built for, or, on the
        C LSTM step (which takes any count), fewer (a beam search whose finished sentences
        left the batch)."""
        return rows == self.B or (self.native and 0 < rows < self.B)

    @torch.no_grad()
    def __call__(self, x: Tensor, state: Tensor | tuple[Tensor, ...] | None = None
                 ) -> tuple[Tensor, Tensor | tuple[Tensor, ...]]:
        B, H = (x.shape[0] if x.dim() == 2 and self.serves(x.shape[0]) else self.B), self.H
        if x.dim() != 2 or x.shape[0] != B or x.shape[1] != self.stack.input_size:
            raise ValueError(f"Stepper expects x of shape ({B}, {self.stack.input_size}), got "
                             f"{tuple(x.shape)}")
        if state is None:
            old = tuple(x.new_zeros(self.L, B, H) for _ in range(self.n_state))
        else:
            old = (state,) if isinstance(state, Tensor) else tuple(state)
            want = (self.L, B, H)
            if len(old) != self.n_state or any(tuple(s.shape) != want for s in old):
                names = " and ".join(self.stack.state_names)
                raise ValueError(f"Stepper expects the state as {names}, each of shape {want}, "
                                 f"got {[tuple(s.shape) for s in old]}")
        x = x.to(self.dtype).contiguous()  # (the C step reads rows as they lie in memory)
        old = tuple(s.to(self.dtype).contiguous() for s in old)
        new = tuple(torch.empty_like(s) for s in old)
        if self.native:
            bindings.lstm_stack_step(x, self.packs, old[0], old[1], new[0], new[1], B)
            return new[0][-1], new
        inp = x
        for k, cell in enumerate(self.stack.cells):
            st = tuple(s[k] for s in old)
            if self.split[k]:
                m_ih, m_hh = self.mats[k]
                b_ih, b_hh = self.biases[k]
                out, _ = cell.combine(m_ih.product(inp, b_ih), m_hh.product(st[0], b_hh), st)
                for s, v in zip(new, out, strict=True):
                    s[k] = v
            else:
                out, _ = cell.step(inp, st)
                for s, v in zip(new, out, strict=True):
                    s[k] = v
            inp = new[0][k]
        return inp, (new[0] if self.n_state == 1 else new)


    # -- a whole chunk -----------------------------------------------------------------------
    @torch.no_grad()
    def run(self, x: Tensor, state: Tensor | tuple[Tensor, ...] | None = None,
            lengths: Tensor | None = None) -> tuple[Tensor, Tensor | tuple[Tensor, ...]]:
        """A chunk of ``T`` steps for any number of rows: ``x`` ``(b, T, I)``, ``state`` as
        for :meth:`__call__` but ``(L, b, H)`` each, ``lengths`` ``(b,)`` in ``[1, T]`` or
        None -> the last layer's outputs ``(b, T, H)`` (zero past each length) and each row's
        state at its own last step. Equal to the layer's forward to float rounding."""
        I = self.stack.input_size
        if x.dim() != 3 or x.shape[2] != I or x.shape[1] == 0 or x.shape[0] == 0:
            raise ValueError(f"Stepper.run expects x of shape (b, T, {I}) with b, T >= 1, got "
                             f"{tuple(x.shape)}")
        b, T, _ = x.shape
        old = self._state(state, b, x)
        lengths = self._lengths(lengths, b, T)
        if self.stack.mode not in CHUNK_MODES:  # nothing recurrent to prepare: the layer's own
            from rnnkit import kernels  # (kernels imports this module)
            out, new, _, _ = kernels.run(dataclasses.replace(self.stack, training=False),
                                         x.to(self.dtype), old, lengths, False)
            return out, (new[0] if self.n_state == 1 else new)
        if self._stacked(b, lengths):
            return self._stack_run(x.to(self.dtype).transpose(0, 1).contiguous(), None, old)
        self._prepare_chunk()
        plan = self._plan(lengths, b, T, x.device)
        return self._run(plan, plan.pack(x.to(self.dtype)), None, old)

    @torch.no_grad()
    def run_ids(self, ids: Tensor, embedding: Tensor,
                state: Tensor | tuple[Tensor, ...] | None = None, lengths: Tensor | None = None,
                verify: bool = False) -> tuple[Tensor, Tensor | tuple[Tensor, ...]]:
        """:meth:`run` on ``x = embedding[ids]``: ``ids`` ``(b, T)`` integer token ids,
        ``embedding`` ``(V, I)`` (an ``nn.Embedding``'s weight). The first layer's input
        projection of each token is read from a table ``embedding W_ih^T + b`` ``(V, G*H)``
        built at the first call and kept while ``embedding`` is the same tensor with the same
        version counter (``verify``: and the same bytes, one pass over them); equal to
        :meth:`run` to float rounding. Without a table (a family :meth:`run` does not prepare,
        the Cho-form GRU without the C library, or more than :data:`TABLE_MAX` floats) it is
        :meth:`run` on the looked-up rows."""
        I = self.stack.input_size
        if ids.dim() != 2 or 0 in ids.shape or ids.is_floating_point():
            raise ValueError(f"Stepper.run_ids expects integer ids of shape (b, T) with b, "
                             f"T >= 1, got {ids.dtype} {tuple(ids.shape)}")
        if embedding.dim() != 2 or embedding.shape[1] != I:
            raise ValueError(f"Stepper.run_ids expects an embedding of shape (V, {I}), got "
                             f"{tuple(embedding.shape)}")
        b, T = ids.shape
        lengths = self._lengths(lengths, b, T)
        stacked = self._stacked(b, lengths)
        table = self._projection_table(embedding, verify, "units" if stacked else "rows")
        if table is None:
            return self.run(embedding.detach()[ids], state, lengths)
        old = self._state(state, b, table)
        if stacked:  # time-major rows of the table
            xp = table.index_select(0, ids.t().reshape(-1).to(torch.int64))
            return self._stack_run(None, xp.view(T, b, -1), old)
        plan = self._plan(lengths, b, T, ids.device)
        rows = plan.pack(ids.to(torch.int64).unsqueeze(-1)).view(-1)
        return self._run(plan, None, table.index_select(0, rows), old)

    def _stacked(self, b: int, lengths: Tensor | None) -> bool:
        """Whether a chunk runs as stack steps (LSTM with the C library, a few rows, one
        length): per step the threads split the units, where the whole-sequence kernel would
        split the rows (one row: one thread)."""
        return self.native and lengths is None and b <= STACK_ROWS

    def _stack_run(self, x: Tensor | None, xp: Tensor | None, old: tuple[Tensor, ...]
                   ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``lstm_stack_run`` over ``x`` ``(T, b, I)`` or layer 0's pre-activations ``xp``
        ``(T, b, np * PW)`` from the state ``old`` -> outputs ``(b, T, H)``, ``(h, c)``."""
        src = x if x is not None else xp
        T, b = src.shape[:2]
        h, c = (s.contiguous().clone() for s in old)
        Y = src.new_empty(T, b, self.H)
        bindings.lstm_stack_run(x, xp, self.packs, h, c, torch.empty_like(h),
                                torch.empty_like(c), Y, T, b)
        return Y.transpose(0, 1).contiguous(), (h, c)

    def _plan(self, lengths: Tensor | None, b: int, T: int, device: torch.device) -> Plan:
        """The packed layout of a chunk; without ``lengths`` kept per ``(b, T)`` (at most
        :data:`PLANS`, however many chunks; its C step tensors are made once with it)."""
        if lengths is not None:
            return Plan.make(lengths, b, T, device)
        plan = self._plans.get((b, T))
        if plan is None:
            plan = Plan.make(None, b, T, device)
            if len(self._plans) >= PLANS:
                self._plans.pop(next(iter(self._plans)))
            self._plans[(b, T)] = plan
        return plan

    def _projection_table(self, emb: Tensor, verify: bool, order: str) -> Tensor | None:
        """``emb W_ih^T + b`` ``(V, G*H)`` for layer 0 (the bias its projection adds), cached
        with ``emb``'s identity, version and bytes; ``order`` ``"units"``: its columns in
        :func:`~rnnkit.kernels.native.pack_units`' order (the stack steps'). None where no
        table applies."""
        if self.stack.mode not in CHUNK_MODES or emb.dtype != self.dtype:
            return None
        self._prepare_chunk()
        d = self._chunk[0]
        if not (d["c"] or self.split[0]) or emb.shape[0] * d["width"] > TABLE_MAX:
            return None
        t = self._table
        if t is None or t["emb"] is not emb or t["version"] != emb._version or (
                verify and not _same(emb.detach(), t["bytes"])):
            w = emb.detach().contiguous()
            t = self._table = {"emb": emb, "version": emb._version, "bytes": w.clone(),
                               "rows": d["ih"].product(w, d["proj_bias"])}
        if order not in t:
            t[order] = native.pack_units_rows(t["rows"])
        return t[order]

    def _prepare_chunk(self) -> None:
        if self._chunk is None:
            self._chunk = [self._prepare(cell, split) for cell, split in
                           zip(self.stack.cells, self.split, strict=True)]

    def _lengths(self, lengths: Tensor | None, b: int, T: int) -> Tensor | None:
        if lengths is not None:
            lengths = torch.as_tensor(lengths).to(torch.int64)
            if tuple(lengths.shape) != (b,) or bool(((lengths < 1) | (lengths > T)).any()):
                raise ValueError(f"Stepper.run expects lengths of shape ({b},) in [1, {T}], "
                                 f"got {lengths.tolist()}")
        return lengths

    def _run(self, plan: Plan, X: Tensor | None, xp0: Tensor | None, old: tuple[Tensor, ...]
             ) -> tuple[Tensor, Tensor | tuple[Tensor, ...]]:
        """The prepared layers over packed rows ``X`` ``(N, I)``, or, for layer 0, its input
        projection ``xp0`` ``(N, G*H)`` already made."""
        old = tuple(plan.sort(s) for s in old)
        finals: list[list[Tensor]] = [[] for _ in old]
        steps = plan.steps() if self._chunk[0]["c"] else None
        for k, cell in enumerate(self.stack.cells):
            X, fin = self._layer(k, cell, X, tuple(s[k] for s in old), plan, steps,
                                 xp0 if k == 0 else None)
            for f, v in zip(finals, fin, strict=True):
                f.append(v)
        new = tuple(plan.unsort(torch.stack(f)) for f in finals)
        return plan.unpack(X), (new[0] if self.n_state == 1 else new)

    def _state(self, state: Tensor | tuple[Tensor, ...] | None, b: int, x: Tensor
               ) -> tuple[Tensor, ...]:
        want = (self.L, b, self.H)
        if state is None:
            return tuple(x.new_zeros(want, dtype=self.dtype) for _ in range(self.n_state))
        old = (state,) if isinstance(state, Tensor) else tuple(state)
        if len(old) != self.n_state or any(tuple(s.shape) != want for s in old):
            names = " and ".join(self.stack.state_names)
            raise ValueError(f"Stepper.run expects the state as {names}, each of shape {want}, "
                             f"got {[tuple(s.shape) for s in old]}")
        return tuple(s.to(self.dtype) for s in old)

    def _prepare(self, cell, split: bool) -> dict:
        """One layer's weights for the chunk path: the input projection ``ih`` (its weight
        reordered once) with its bias ``b_ih``, and the recurrent weights packed once for the
        C recurrence (``c``) or reordered for the per-step products (``hh``, ``b_hh``)."""
        H, mode = self.H, self.stack.mode
        use_c = native.usable(*cell.parameters())
        w_ih, w_hh = cell.weight_ih.detach(), cell.weight_hh.detach()
        d: dict = {"c": use_c, "ih": gemm.Fixed(w_ih.t(), self.B), "width": w_ih.shape[0]}
        if mode == "gru_reset_before":
            d["b_ih"] = d["proj_bias"] = cell.bias_rzn
            if use_c:
                d["wrz"], d["wn"] = native.pack(w_hh[:2 * H].t()), native.pack(w_hh[2 * H:].t())
            return d
        if mode.startswith("rnn") and use_c:  # both biases in the projection
            d["b_ih"] = None if cell.bias_ih is None else (cell.bias_ih + cell.bias_hh).detach()
        else:
            d["b_ih"] = cell.bias_ih
        if not use_c:
            d["hh"], d["b_hh"] = gemm.Fixed(w_hh.t(), self.B), cell.bias_hh
        elif mode == "lstm":
            d["wx"], d["wh"] = native.pack(w_ih.t()), native.pack(w_hh.t())
            d["bias"] = (w_ih.new_zeros(4 * H) if cell.bias_ih is None
                         else (cell.bias_ih + cell.bias_hh).detach().contiguous())
        else:
            d["wh"] = native.pack(w_hh.t())
            if mode == "gru":
                d["b_hh"] = (w_hh.new_zeros(3 * H) if cell.bias_hh is None
                             else cell.bias_hh.detach().contiguous())
        d["proj_bias"] = d["bias"] if mode == "lstm" and use_c else d["b_ih"]  # xp's bias
        return d

    def _layer(self, k: int, cell, X: Tensor | None, st: tuple[Tensor, ...], plan: Plan,
               steps: tuple[Tensor, Tensor] | None, xp: Tensor | None = None
               ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Layer ``k`` over packed rows ``X`` ``(N, I_k)`` (or their input projection ``xp``
        ``(N, G*H)``, bias included, ``X`` None) from the sorted state ``st`` (each
        ``(B, H)``): packed outputs ``(N, H)`` and the final state. ``steps``: the plan's
        sizes and offsets for the C recurrence."""
        d, mode, H, B, N, T = self._chunk[k], self.stack.mode, self.H, plan.B, plan.N, plan.T
        if d["c"]:
            sizes, offs = steps
            like = X if xp is None else xp
            HH = like.new_empty(B + N, H)
            HH[:B] = st[0]
            if mode == "lstm":
                CC = like.new_empty(B + N, H)
                CC[:B] = st[1]
                wx, bias, X = ((d["wx"], d["bias"], X.contiguous()) if xp is None
                               else (None, None, xp.contiguous()))
                bindings.lstm_seq_forward(X, wx, bias, d["wh"], HH, CC,
                                          X.new_empty(N, 4 * H), X.new_empty(N, H), sizes,
                                          offs, T, B, H, X.shape[1])
                return HH[B:], (plan.final(HH), plan.final(CC))
            xp = d["ih"].product(X, d["b_ih"]) if xp is None else xp.contiguous()
            if mode == "gru":
                bindings.gru_seq_forward(xp, d["wh"], d["b_hh"], HH, HH.new_empty(N, 3 * H),
                                         HH.new_empty(N, 3 * H), sizes, offs, T, B, H)
            elif mode == "gru_reset_before":
                bindings.gru_cho_seq_forward(xp, d["wrz"], d["wn"], HH, HH.new_empty(N, 3 * H),
                                             HH.new_empty(N, H), sizes, offs, T, B, H)
            else:
                bindings.rnn_seq_forward(xp, d["wh"], HH, HH.new_empty(N, H), sizes, offs, T,
                                         B, H, mode == "rnn_relu")
            return HH[B:], (plan.final(HH),)
        # no C library: per step, the recurrent product on the reordered weight and the cell
        run = tuple(s.clone() for s in st)  # each row's latest state (rows sorted by length)
        Y = st[0].new_empty(N, H)
        xi = d["ih"].product(X, d["b_ih"]) if self.split[k] and xp is None else xp
        for b, s in zip(plan.sizes, plan.offs, strict=True):
            cur = tuple(r[:b] for r in run)
            if self.split[k]:
                out, _ = cell.combine(xi[s:s + b], d["hh"].product(cur[0], d["b_hh"]), cur)
            else:
                out, _ = cell.step(X[s:s + b], cur)
            for r, v in zip(run, out, strict=True):
                r[:b] = v
            Y[s:s + b] = out[0]
        return Y, run


def _weights_version(layer: Stack) -> tuple:
    return bindings.versions(layer.parameters())


def _same(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` holds exactly the bytes of ``b`` (same shape and dtype; NaN equals
    itself): memcmp on CPU (several times faster than torch.equal), else torch.equal on
    integer views."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.device.type == "cpu" and a.is_contiguous() and b.is_contiguous():
        return bindings.same_bytes(a, b)
    return torch.equal(a.detach().contiguous().view(torch.uint8).cpu(),
                       b.contiguous().view(torch.uint8).cpu())
