"""C for the fast paths, built at first use and cached: LSTM and LayerNormLSTM over whole
sequences (forward and backward, recurrent products included), the LSTM step the sampler uses,
and minGRU/minLSTM's whole pass over time.

Why whole sequences: per time step an LSTM has one small product ``(B, H) @ (H, 4H)`` and six
to eight elementwise ops. Through torch each is a call with a fixed cost (a few microseconds
for an op, ~12 for a oneDNN product), and at ``B = 32, H = 256`` those fixed costs are as large
as the arithmetic. Here one call runs all ``T`` steps: each thread of torch's OpenMP team owns
fixed blocks of batch rows for the whole sequence (a row's state at ``t`` needs only its own
state at ``t - 1``, so the threads never wait for each other), multiplies them against weights
packed once into 32-column panels (an AVX-512 FMA kernel, 8 rows x 32 columns), and applies the
cell's elementwise math while the step's rows are still in cache. The input projection
(forward) and the input's gradient (backward) are products of the same rows and are made there
too; what only the backward reads (gates, products, ``dA^T``) goes out with streaming stores.
The weight gradients stay one large oneDNN product over all steps
(:func:`rnnkit.kernels.gemm.products_t`), for which the backward writes its operand transposed.

:func:`lib` compiles the source below with the system C compiler (``$CC`` or ``cc``; ``-O3``,
AVX-512 or AVX2/FMA as torch reports them; no ``-ffast-math``) into ``$RNNKIT_CACHE``
(default ``~/.cache/rnnkit``) once per source/flags, in 2–3 seconds, and loads it with
ctypes. Built with ``-fopenmp`` where that links, the loops run on torch's own OpenMP thread
team (``libgomp.so.1`` resolves to the copy torch has loaded: one runtime, the thread count
torch.set_num_threads set). Without a compiler, or with ``RNNKIT_NATIVE=0``, :func:`lib`
returns ``None`` and the fast path runs the same math in torch ops (per-step products through
:class:`rnnkit.kernels.gemm.Fixed`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

PW = 32  # the C products' panel width: columns per packed panel, two AVX-512 vectors

SOURCE = r"""
/* rnnkit's C kernels: RNN, LSTM, GRU and LayerNormLSTM over whole sequences, the LSTM stack's
 * single step, minGRU/minLSTM's pass over time; float32, rows contiguous, gate blocks in
 * torch.nn's order (LSTM i, f, g, o; GRU r, z, n). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
/* Built with -fopenmp, rows are split over the threads of torch's own OpenMP team, from 8 rows
 * on. ROWS_PARALLEL(n): the loop over n rows that follows. The whole-sequence kernels open one
 * parallel region in which each thread takes its own rows (my_rows) and adds its sums to its
 * own row MY_THREAD of an accumulator (deterministic, whatever the schedule). Without OpenMP
 * the region runs once, as thread 0 of 1. */
#define PRAGMA(x) _Pragma(#x)
#ifdef _OPENMP
#include <omp.h>
#define ROWS_PARALLEL(n) PRAGMA(omp parallel for schedule(static) if ((n) >= 8))
#define MY_THREAD omp_get_thread_num()
#define TEAM omp_get_num_threads()
#define REPORT(flag) PRAGMA(omp atomic write) flag = 1  /* any thread may report a failure */
#else
#define ROWS_PARALLEL(n)
#define MY_THREAD 0
#define TEAM 1
#define REPORT(flag) flag = 1
#endif

/* How many threads a parallel loop here uses (torch.set_num_threads sets it), 1 without
 * OpenMP. */
int rnnkit_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* exp and tanh as straight-line float code the compiler vectorises (Cephes' expf and tanhf:
 * about 1 ulp, like the SLEEF functions torch uses), so the loops below run 8 lanes at a time
 * without -ffast-math, which would reorder sums and set flush-to-zero process-wide. */
static inline float exp_(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float sigm(float x) { return 1.0f / (1.0f + exp_(-x)); }

static inline float tanh_(float x) {
    float a = fabsf(x), z = x * x;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                    + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    float big = copysignf(1.0f - 2.0f / (exp_(2.0f * a) + 1.0f), x);
    return a < 0.625f ? small : big;
}

/* One LSTM row's step: gates from the pre-activations (i, f, g, o blocks of H), then
 * c = f c_prev + i g, tc = tanh(c), h = o tc. */
static void fwd_row(const float *restrict pre, float *restrict gi, float *restrict gf,
                    float *restrict gg, float *restrict go, const float *restrict cp,
                    float *restrict c, float *restrict tc, float *restrict h, long H) {
    for (long j = 0; j < H; j++) {
        float i = sigm(pre[j]), f = sigm(pre[H + j]), g = tanh_(pre[2 * H + j]);
        float o = sigm(pre[3 * H + j]);
        gi[j] = i; gf[j] = f; gg[j] = g; go[j] = o;
        float cn = f * cp[j] + i * g, t = tanh_(cn);
        c[j] = cn; tc[j] = t; h[j] = o * t;
    }
}

/* One row's step back: dh = run_h + dy reaches h_t, dc = run_c + dh o (1 - tc^2) reaches c_t;
 * writes the pre-activation gradients ai..ao, run_c = dc f (reaching c_{t-1}) and adds them to
 * the bias gradient db (4H). */
static void bwd_row(const float *restrict gi, const float *restrict gf,
                    const float *restrict gg, const float *restrict go,
                    const float *restrict cp, const float *restrict tc,
                    const float *restrict run_h, const float *restrict dy,
                    float *restrict run_c, float *restrict ai, float *restrict af,
                    float *restrict ag, float *restrict ao, float *restrict db, long H) {
    for (long j = 0; j < H; j++) {
        float i = gi[j], f = gf[j], g = gg[j], o = go[j], t = tc[j];
        float dh = run_h[j] + dy[j];
        float dc = run_c[j] + dh * o * (1.0f - t * t);
        float a_i = dc * g * i * (1.0f - i), a_f = dc * cp[j] * f * (1.0f - f);
        float a_g = dc * i * (1.0f - g * g), a_o = dh * t * o * (1.0f - o);
        ai[j] = a_i; af[j] = a_f; ag[j] = a_g; ao[j] = a_o;
        db[j] += a_i; db[H + j] += a_f; db[2 * H + j] += a_g; db[3 * H + j] += a_o;
        run_c[j] = dc * f;
    }
}

/* ---- Whole sequences in one call: the recurrent product in C too ----------------------------
 * Per step the recurrent product is small ((b, H) @ (H, 4H)); called through a library it
 * costs more in per-call overhead than in arithmetic, and the step's rows would wait for every
 * thread at each call. Here each thread owns fixed blocks of rows (my_rows) for the whole
 * sequence: a row's state at t depends only on its own state at t - 1, so the threads run
 * through time without ever waiting for each other. The input projection (forward) and the
 * input's gradient (backward) are products of the same rows, so they are made here too. The
 * product multiplies MR rows at a time against a weight packed once into panels of PW columns
 * ((np, K, PW): panel j holds columns j PW .. j PW + PW - 1, zero padded), panel-outer so a
 * panel is read from memory once per step and reused by all of the thread's rows. The kernels
 * for the other cells (GRU, RNN, LayerNormLSTM) below follow the same frame. */
#define MR 8
#define PW @PW@  /* rnnkit.kernels.native.PW */
#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* c[r][0:PW] (rows ldc apart) += sum_k a[r][k] w[k][0:PW], r < nr <= MR; zero: c starts at 0 */
static inline __attribute__((always_inline)) void kern(const float *const *a, const float *w,
                                                       float *c, long ldc, long K, int nr,
                                                       int zero) {
#ifdef __AVX512F__
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 8
    for (int r = 0; r < nr; r++) {
        c0[r] = zero ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * ldc);
        c1[r] = zero ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * ldc + 16);
    }
    for (long k = 0; k < K; k++) {
        __m512 w0 = _mm512_loadu_ps(w + k * PW), w1 = _mm512_loadu_ps(w + k * PW + 16);
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++) {
            __m512 x = _mm512_set1_ps(a[r][k]);
            c0[r] = _mm512_fmadd_ps(x, w0, c0[r]);
            c1[r] = _mm512_fmadd_ps(x, w1, c1[r]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < nr; r++) {
        _mm512_storeu_ps(c + r * ldc, c0[r]);
        _mm512_storeu_ps(c + r * ldc + 16, c1[r]);
    }
#else
    for (int r = 0; r < nr; r++) {
        float acc[PW];
        for (int j = 0; j < PW; j++) acc[j] = zero ? 0.0f : c[r * ldc + j];
        for (long k = 0; k < K; k++) {
            float x = a[r][k];
            for (int j = 0; j < PW; j++) acc[j] += x * w[k * PW + j];
        }
        for (int j = 0; j < PW; j++) c[r * ldc + j] = acc[j];
    }
#endif
}

/* out (n rows, np PW wide) (+)= rows a[0..n) (K each) @ the packed weight wp (np, K, PW). */
static void rows_mm(const float *const *a, long n, const float *wp, long K, long np,
                    float *out, int zero) {
    long ld = np * PW;
    for (long j = 0; j < np; j++) {
        const float *w = wp + j * K * PW;
        for (long i = 0; i < n; i += MR) {
            const float *const *ai = a + i;
            float *c = out + i * ld + j * PW;
            switch (n - i < MR ? n - i : MR) {
#define KERN_CASE(m) case m: kern(ai, w, c, ld, K, m, zero); break;
                KERN_CASE(8) KERN_CASE(7) KERN_CASE(6) KERN_CASE(5)
                KERN_CASE(4) KERN_CASE(3) KERN_CASE(2) KERN_CASE(1)
#undef KERN_CASE
            }
        }
    }
}

/* The rows of step t (the first b of B, sorted by length) this thread owns, into rows: blocks
 * of MR rows, or of 2 MR once every thread gets that many (a thread's 16 floats of a row of
 * dA^T are then a whole cache line: two threads writing halves of one line fight over it). */
static long my_rows(long b, long B, long *rows) {
    long n = 0, blk = B >= 2 * MR * TEAM ? 2 * MR : MR;
    for (long g = MY_THREAD; g * blk < b; g += TEAM)
        for (long r = g * blk; r < b && r < g * blk + blk; r++) rows[n++] = r;
    return n;
}

/* The thread's rows (rows[0..n), their values src[i * ld + k], k < K) written as columns
 * s + rows[i] of dst (K, N): dst^T's rows, for the weight gradients. Each run of 16 consecutive
 * rows is one whole 64-byte line of each dst row; where aligned it goes out with a streaming
 * store (no read of the line first: these 4H x N matrices are larger than the caches). */
static void put_t(float *dst, long N, long s, const long *rows, long n, const float *src,
                  long ld, long K) {
    for (long i0 = 0, m; i0 < n; i0 += m) {
        for (m = 1; i0 + m < n && m < 16 && rows[i0 + m] == rows[i0] + m; m++) {}
        float *d = dst + s + rows[i0];
        const float *v = src + i0 * ld;
#ifdef __AVX512F__
        if (m == 16 && N % 16 == 0 && (uintptr_t)d % 64 == 0) {
            __m512i idx = _mm512_mullo_epi32(
                _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                _mm512_set1_epi32((int)ld));
            for (long k = 0; k < K; k++)
                _mm512_stream_ps(d + k * N, _mm512_i32gather_ps(idx, v + k, 4));
            continue;
        }
#endif
        for (long k = 0; k < K; k++)
            for (long i = 0; i < m; i++) d[k * N + i] = v[i * ld + k];
    }
}

/* dst[0..n) = src[0..n): with streaming stores where whole aligned lines (rows kept only for
 * the backward pass, which comes after they have left the caches anyway). */
static void put_row(float *dst, const float *src, long n) {
#ifdef __AVX512F__
    if (n % 16 == 0 && (uintptr_t)dst % 64 == 0) {
        for (long j = 0; j < n; j += 16) _mm512_stream_ps(dst + j, _mm512_loadu_ps(src + j));
        return;
    }
#endif
    memcpy(dst, src, (size_t)n * sizeof(float));
}

/* Streaming stores are weakly ordered: made visible before the thread's work counts as done. */
static inline void stores_done(void) {
#ifdef __AVX512F__
    _mm_sfence();
#endif
}

/* A thread's buffers in one zeroed allocation: nf floats (f, which the kernel carves up), two
 * arrays of B row pointers (a, a2) and B row numbers (rows). Returns 0 when out of memory:
 * the kernel then reports failure and the caller raises. Free f when done. */
typedef struct { float *f; const float **a, **a2; long *rows; } Work;

static int work_get(Work *w, size_t nf, long B) {
    size_t fb = (nf * sizeof(float) + 63) & ~(size_t)63, pb = (size_t)B * sizeof(float *);
    char *m = calloc(1, fb + 2 * pb + (size_t)B * sizeof(long));
    if (!m) return 0;
    w->f = (float *)m;
    w->a = (const float **)(m + fb);
    w->a2 = (const float **)(m + fb + pb);
    w->rows = (long *)(m + fb + 2 * pb);
    return 1;
}

/* The gradient reaching h_{t-1} of each of the thread's rows, back into run (B, H): the
 * product's row (pr, rows ld apart) plus, where keep is given, what reaches h_{t-1} directly
 * (keep, rows H apart). */
static void put_run(float *run, const long *rows, long n, long H, const float *pr, long ld,
                    const float *keep) {
    for (long i = 0; i < n; i++) {
        float *restrict rn = run + rows[i] * H;
        const float *restrict p = pr + i * ld, *restrict k = keep ? keep + i * H : NULL;
        if (k)
            for (long j = 0; j < H; j++) rn[j] = p[j] + k[j];
        else
            memcpy(rn, p, (size_t)H * sizeof(float));
    }
}

/* Packed rows (rnnkit.kernels.fast.Plan): step t owns rows offs[t] .. offs[t] + sizes[t] - 1
 * of X (N, I); HH, CC (B + N, H) hold h0, c0 then every step's h, c. Per step and row:
 * pre = bias + x W_ih^T + h_prev W_hh^T (wx, wh: W_ih^T, W_hh^T packed into ceil(4H / PW)
 * panels of (I, PW) and (H, PW); bias (4H)), then the cell; writes gates G (N, 4H) and TC. */
int lstm_seq_forward(const float *X, const float *wx, const float *bias, const float *wh,
                     float *HH, float *CC, float *G, float *TC, const int64_t *sizes,
                     const int64_t *offs, long T, long B, long H, long I) {
    long N4 = 4 * H, np = (N4 + PW - 1) / PW, ld = np * PW;
    int failed = 0;
    PRAGMA(omp parallel if (B > MR))
    {
        Work ws;
        if (!work_get(&ws, (size_t)(B * ld + N4), B)) {
            REPORT(failed);
        } else {
            float *scr = ws.f, *gt = scr + B * ld;  /* gt: a row's gates */
            const float **a = ws.a, **ax = ws.a2;
            long *rows = ws.rows;
            for (long t = 0; t < T; t++) {
                long b = sizes[t], s = offs[t], p = t ? B + offs[t - 1] : 0, q = B + s;
                long n = my_rows(b, B, rows);
                for (long i = 0; i < n; i++) {
                    ax[i] = X + (s + rows[i]) * I;
                    a[i] = HH + (p + rows[i]) * H;
                    memcpy(scr + i * ld, bias, (size_t)N4 * sizeof(float));
                }
                rows_mm(ax, n, wx, I, np, scr, 0);
                rows_mm(a, n, wh, H, np, scr, 0);
                for (long i = 0; i < n; i++) {
                    long r = rows[i];
                    fwd_row(scr + i * ld, gt, gt + H, gt + 2 * H, gt + 3 * H, CC + (p + r) * H,
                            CC + (q + r) * H, TC + (s + r) * H, HH + (q + r) * H, H);
                    put_row(G + (s + r) * N4, gt, N4);
                }
            }
            stores_done();
            free(ws.f);
        }
    }
    return failed;
}

/* Back through the whole sequence: run_h, run_c (B, H) hold the gradients reaching the final
 * states and end as those reaching h0, c0; dY (N, H) reaches each step's h. Per step and row
 * the gate pre-activations' gradient dA (4H) is formed, then [dh_prev | dx] = dA [W_hh | W_ih]
 * (w: that (4H, H + I) matrix packed into ceil((H + I) / PW) panels of (4H, PW); I = 0: no
 * dx). Writes dA transposed, dAT (4H, N) (the weight gradients' operand), dX (N, I), and adds
 * dA's column sums to db (ndb rows of 4H, one per thread). */
int lstm_seq_backward(const float *G, const float *CC, const float *TC, const float *dY,
                      const float *w, float *run_h, float *run_c, float *dAT, float *dX,
                      float *db, long ndb, const int64_t *sizes, const int64_t *offs, long T,
                      long B, long H, long I) {
    long N4 = 4 * H, np = (H + I + PW - 1) / PW, ld = np * PW, N = offs[T - 1] + sizes[T - 1];
    int failed = 0;
    PRAGMA(omp parallel num_threads(ndb) if (B > MR && ndb > 1))
    {
        float *my = db + MY_THREAD * N4;
        Work ws;
        if (!work_get(&ws, (size_t)(B * ld + B * N4), B)) {
            REPORT(failed);
        } else {
            float *scr = ws.f, *dA = scr + B * ld;
            const float **a = ws.a;
            long *rows = ws.rows;
            for (long t = T - 1; t >= 0; t--) {
                long b = sizes[t], s = offs[t], p = t ? B + offs[t - 1] : 0;
                long n = my_rows(b, B, rows);
                for (long i = 0; i < n; i++) {
                    long r = rows[i], o = s + r;
                    const float *g = G + o * N4;
                    float *d = dA + i * N4;
                    bwd_row(g, g + H, g + 2 * H, g + 3 * H, CC + (p + r) * H, TC + o * H,
                            run_h + r * H, dY + o * H, run_c + r * H, d, d + H, d + 2 * H,
                            d + 3 * H, my, H);
                    a[i] = d;
                }
                put_t(dAT, N, s, rows, n, dA, N4, N4);
                rows_mm(a, n, w, N4, np, scr, 1);
                put_run(run_h, rows, n, H, scr, ld, NULL);
                for (long i = 0; i < n && I; i++)
                    memcpy(dX + (s + rows[i]) * I, scr + i * ld + H, (size_t)I * sizeof(float));
            }
            stores_done();
            free(ws.f);
        }
    }
    return failed;
}

/* torch.lerp(start, end, w), its two-sided formula (GRU: h = lerp(n, h_prev, z)). */
static inline float lerp_(float start, float end, float w) {
    return w < 0.5f ? start + w * (end - start) : end - (end - start) * (1.0f - w);
}

/* A GRU row's step (gru_seq_forward): gates g = [r, z, n] and h from xp row x, product q. */
static void gru_fwd_row(const float *restrict x, const float *restrict q,
                        const float *restrict hp, float *restrict g, float *restrict h, long H) {
    for (long j = 0; j < H; j++) {
        float rg = sigm(x[j] + q[j]), zg = sigm(x[H + j] + q[H + j]);
        float ng = tanh_(x[2 * H + j] + rg * q[2 * H + j]);
        g[j] = rg; g[H + j] = zg; g[2 * H + j] = ng;
        h[j] = lerp_(ng, hp[j], zg);
    }
}

/* A GRU row's step back (gru_seq_backward): dxp row dx, dq row d (added to db), dh z to k. */
static void gru_bwd_row(const float *restrict g, const float *restrict q,
                        const float *restrict hp, const float *restrict dy,
                        const float *restrict run, float *restrict dx, float *restrict d,
                        float *restrict db, float *restrict k, long H) {
    for (long j = 0; j < H; j++) {
        float rg = g[j], zg = g[H + j], ng = g[2 * H + j], dh = run[j] + dy[j];
        float pn = (1.0f - zg) * (1.0f - ng * ng);
        float pz = (hp[j] - ng) * zg * (1.0f - zg);
        float pr = pn * q[2 * H + j] * rg * (1.0f - rg);
        dx[j] = dh * pr; dx[H + j] = dh * pz; dx[2 * H + j] = dh * pn;
        d[j] = dh * pr; d[H + j] = dh * pz; d[2 * H + j] = dh * pn * rg;
        db[j] += d[j]; db[H + j] += d[H + j]; db[2 * H + j] += d[2 * H + j];
        k[j] = dh * zg;
    }
}

/* GRU (torch.nn's form, reset after the product) over whole sequences, the rows as in
 * lstm_seq_forward. xp (N, 3H) = x W_ih^T + b_ih (blocks r, z, n); wh = W_hh^T packed
 * (ceil(3H / PW) panels of (H, PW)), bh (3H). Per step and row: q = h_prev W_hh^T + bh,
 * r = s(xr + qr), z = s(xz + qz), n = tanh(xn + r qn), h = lerp(n, h_prev, z). Writes q to
 * R (N, 3H), the gates r, z, n to G (N, 3H) and h to HH (B + N, H) after h0. */
int gru_seq_forward(const float *xp, const float *wh, const float *bh, float *HH, float *G,
                    float *R, const int64_t *sizes, const int64_t *offs, long T, long B,
                    long H) {
    long N3 = 3 * H, np = (N3 + PW - 1) / PW, ld = np * PW;
    int failed = 0;
    PRAGMA(omp parallel if (B > MR))
    {
        Work ws;
        if (!work_get(&ws, (size_t)(B * ld + N3), B)) {
            REPORT(failed);
        } else {
            float *scr = ws.f, *gt = scr + B * ld;  /* gt: a row's gates */
            const float **a = ws.a;
            long *rows = ws.rows;
            for (long t = 0; t < T; t++) {
                long b = sizes[t], s = offs[t], p = t ? B + offs[t - 1] : 0, q = B + s;
                long n = my_rows(b, B, rows);
                for (long i = 0; i < n; i++) {
                    a[i] = HH + (p + rows[i]) * H;
                    memcpy(scr + i * ld, bh, (size_t)N3 * sizeof(float));
                }
                rows_mm(a, n, wh, H, np, scr, 0);
                for (long i = 0; i < n; i++) {
                    long r = rows[i], o = s + r;
                    const float *qq = scr + i * ld;
                    gru_fwd_row(xp + o * N3, qq, HH + (p + r) * H, gt, HH + (q + r) * H, H);
                    put_row(G + o * N3, gt, N3);
                    put_row(R + o * N3, qq, N3);
                }
            }
            stores_done();
            free(ws.f);
        }
    }
    return failed;
}

/* Back through the whole sequence (buffers as gru_seq_forward wrote them): run (B, H) holds
 * the gradient reaching the final state and ends as that reaching h0; dY (N, H) reaches each
 * step's h. Per row: dh = run + dy; dxp = dh [Pr, Pz, Pn] with Pn = (1 - z)(1 - n^2),
 * Pz = (h_prev - n) z (1 - z), Pr = Pn qn r (1 - r), written to dXP (N, 3H); the gradient of
 * q, dq = dh [Pr, Pz, Pn r], written transposed to DQT (3H, N) (for dW_hh) and summed into db
 * (ndb rows of 3H, one per thread: the gradient of b_hh); run = dq W_hh + dh z (w = W_hh
 * packed: ceil(H / PW) panels of (3H, PW)). */
int gru_seq_backward(const float *G, const float *R, const float *HH, const float *dY,
                     const float *w, float *run, float *dXP, float *DQT, float *db, long ndb,
                     const int64_t *sizes, const int64_t *offs, long T, long B, long H) {
    long N3 = 3 * H, np = (H + PW - 1) / PW, ld = np * PW, N = offs[T - 1] + sizes[T - 1];
    int failed = 0;
    PRAGMA(omp parallel num_threads(ndb) if (B > MR && ndb > 1))
    {
        float *my = db + MY_THREAD * N3;
        Work ws;
        if (!work_get(&ws, (size_t)(B * ld + B * N3 + B * H), B)) {
            REPORT(failed);
        } else {
            float *scr = ws.f, *dq = scr + B * ld, *dhz = dq + B * N3;
            const float **a = ws.a;
            long *rows = ws.rows;
            for (long t = T - 1; t >= 0; t--) {
                long b = sizes[t], s = offs[t], p = t ? B + offs[t - 1] : 0;
                long n = my_rows(b, B, rows);
                for (long i = 0; i < n; i++) {
                    long r = rows[i], o = s + r;
                    gru_bwd_row(G + o * N3, R + o * N3, HH + (p + r) * H, dY + o * H,
                                run + r * H, dXP + o * N3, dq + i * N3, my, dhz + i * H, H);
                    a[i] = dq + i * N3;
                }
                put_t(DQT, N, s, rows, n, dq, N3, N3);
                rows_mm(a, n, w, N3, np, scr, 1);
                put_run(run, rows, n, H, scr, ld, dhz);
            }
            stores_done();
            free(ws.f);
        }
    }
    return failed;
}

/* Cho GRU rows: [r, z] activated in place in the products' row a (2H); rh = r h_prev. */
static void cho_gates_row(float *restrict a, const float *restrict hp, float *restrict rh,
                          long H) {
    for (long j = 0; j < 2 * H; j++) a[j] = sigm(a[j]);
    for (long j = 0; j < H; j++) rh[j] = a[j] * hp[j];
}

/* n = tanh(pn), gates g = [r, z, n] from rz and pn, h = lerp(n, h_prev, z). */
static void cho_cell_row(const float *restrict rz, const float *restrict pn,
                         const float *restrict hp, float *restrict g, float *restrict h,
                         long H) {
    for (long j = 0; j < H; j++) {
        float zg = rz[H + j], ng = tanh_(pn[j]);
        g[j] = rz[j]; g[H + j] = zg; g[2 * H + j] = ng;
        h[j] = lerp_(ng, hp[j], zg);
    }
}

/* Step back, first half: dz, dn into d (blocks r, z, n of 3H) and k = dh z. */
static void cho_back_zn(const float *restrict g, const float *restrict hp,
                        const float *restrict dy, const float *restrict run,
                        float *restrict d, float *restrict k, long H) {
    for (long j = 0; j < H; j++) {
        float zg = g[H + j], ng = g[2 * H + j], dh = run[j] + dy[j];
        d[H + j] = dh * (hp[j] - ng) * zg * (1.0f - zg);
        d[2 * H + j] = dh * (1.0f - zg) * (1.0f - ng * ng);
        k[j] = dh * zg;
    }
}

/* Second half, given drh = dn W_hn: dr into d, k += drh r. */
static void cho_back_r(const float *restrict g, const float *restrict hp,
                       const float *restrict drh, float *restrict d, float *restrict k,
                       long H) {
    for (long j = 0; j < H; j++) {
        float rg = g[j];
        d[j] = drh[j] * hp[j] * rg * (1.0f - rg);
        k[j] += drh[j] * rg;
    }
}

/* GRU with its reset gate before the product (Cho et al. 2014; rnnkit's reset_after=False),
 * the rows as in lstm_seq_forward. xp (N, 3H) = x W_ih^T + all biases (blocks r, z, n);
 * wrz = W_hrz^T packed (ceil(2H / PW) panels of (H, PW)), wn = W_hn^T (ceil(H / PW) panels of
 * (H, PW)). Per step and row: [r, z] = s(xp_rz + h_prev W_hrz^T), n = tanh(xp_n + (r h_prev)
 * W_hn^T), h = lerp(n, h_prev, z). Writes the gates to G (N, 3H), r h_prev to RH (N, H), h to
 * HH (B + N, H) after h0. */
int gru_cho_seq_forward(const float *xp, const float *wrz, const float *wn, float *HH,
                        float *G, float *RH, const int64_t *sizes, const int64_t *offs, long T,
                        long B, long H) {
    long N3 = 3 * H, n1 = (2 * H + PW - 1) / PW, l1 = n1 * PW, n2 = (H + PW - 1) / PW;
    long l2 = n2 * PW;
    int failed = 0;
    PRAGMA(omp parallel if (B > MR))
    {
        Work ws;
        if (!work_get(&ws, (size_t)(B * (l1 + l2 + H) + N3), B)) {
            REPORT(failed);
        } else {
            float *s1 = ws.f, *s2 = s1 + B * l1, *rh = s2 + B * l2, *gt = rh + B * H;
            const float **a = ws.a, **ar = ws.a2;
            long *rows = ws.rows;
            for (long t = 0; t < T; t++) {
                long b = sizes[t], s = offs[t], p = t ? B + offs[t - 1] : 0, q = B + s;
                long n = my_rows(b, B, rows);
                for (long i = 0; i < n; i++) {
                    a[i] = HH + (p + rows[i]) * H;
                    ar[i] = rh + i * H;
                    memcpy(s1 + i * l1, xp + (s + rows[i]) * N3, (size_t)(2 * H) * sizeof(float));
                    memcpy(s2 + i * l2, xp + (s + rows[i]) * N3 + 2 * H, (size_t)H * sizeof(float));
                }
                rows_mm(a, n, wrz, H, n1, s1, 0);
                for (long i = 0; i < n; i++)
                    cho_gates_row(s1 + i * l1, a[i], rh + i * H, H);
                rows_mm(ar, n, wn, H, n2, s2, 0);
                for (long i = 0; i < n; i++) {
                    long o = s + rows[i];
                    cho_cell_row(s1 + i * l1, s2 + i * l2, a[i], gt, HH + (q + rows[i]) * H, H);
                    put_row(G + o * N3, gt, N3);
                    put_row(RH + o * H, rh + i * H, H);
                }
            }
            stores_done();
            free(ws.f);
        }
    }
    return failed;
}

/* Back through the whole sequence (buffers as gru_cho_seq_forward wrote them): run (B, H)
 * holds the gradient reaching the final state and ends as that reaching h0; dY (N, H) reaches
 * each step's h. Per row: dh = run + dy; dn = dh (1 - z)(1 - n^2), dz = dh (h_prev - n) z (1 - z);
 * d(r h) = dn W_hn (wn = W_hn packed: ceil(H / PW) panels of (H, PW)); dr = d(r h) h_prev
 * r (1 - r); dA = [dr, dz, dn] (the gradient of xp) to dA (N, 3H) and transposed to DAT (3H, N);
 * run = [dr, dz] W_hrz + dh z + d(r h) r (wrz = W_hrz packed: ceil(H / PW) panels of
 * (2H, PW)). */
int gru_cho_seq_backward(const float *G, const float *HH, const float *dY, const float *wrz,
                         const float *wn, float *run, float *dA, float *DAT,
                         const int64_t *sizes, const int64_t *offs, long T, long B, long H) {
    long N3 = 3 * H, np = (H + PW - 1) / PW, ld = np * PW, N = offs[T - 1] + sizes[T - 1];
    int failed = 0;
    PRAGMA(omp parallel if (B > MR))
    {
        Work ws;
        if (!work_get(&ws, (size_t)(2 * B * ld + B * N3 + B * H), B)) {
            REPORT(failed);
        } else {
            float *s1 = ws.f, *s2 = s1 + B * ld, *da = s2 + B * ld, *kp = da + B * N3;
            const float **a = ws.a, **an = ws.a2;
            long *rows = ws.rows;
            for (long t = T - 1; t >= 0; t--) {
                long b = sizes[t], s = offs[t], p = t ? B + offs[t - 1] : 0;
                long n = my_rows(b, B, rows);
                for (long i = 0; i < n; i++) {
                    long r = rows[i], o = s + r;
                    cho_back_zn(G + o * N3, HH + (p + r) * H, dY + o * H, run + r * H,
                                da + i * N3, kp + i * H, H);
                    a[i] = da + i * N3;
                    an[i] = da + i * N3 + 2 * H;
                }
                rows_mm(an, n, wn, H, np, s2, 1);  /* d(r h) = dn W_hn */
                for (long i = 0; i < n; i++) {
                    long r = rows[i], o = s + r;
                    cho_back_r(G + o * N3, HH + (p + r) * H, s2 + i * ld, da + i * N3,
                               kp + i * H, H);
                    memcpy(dA + o * N3, da + i * N3, (size_t)N3 * sizeof(float));
                }
                put_t(DAT, N, s, rows, n, da, N3, N3);
                rows_mm(a, n, wrz, 2 * H, np, s1, 1);  /* [dr, dz] W_hrz */
                put_run(run, rows, n, H, s1, ld, kp);
            }
            stores_done();
            free(ws.f);
        }
    }
    return failed;
}

/* An Elman RNN row's step: h = tanh(a), or max(a, 0) with relu. */
static void rnn_fwd_row(const float *restrict a, float *restrict h, long H, int relu) {
    if (relu)
        for (long j = 0; j < H; j++) h[j] = a[j] > 0.0f ? a[j] : 0.0f;
    else
        for (long j = 0; j < H; j++) h[j] = tanh_(a[j]);
}

/* Its step back: d = (run + dy) f'(a), from h = f(a): 1 - h^2, or h > 0 with relu. */
static void rnn_bwd_row(const float *restrict h, const float *restrict dy,
                        const float *restrict run, float *restrict d, long H, int relu) {
    if (relu)
        for (long j = 0; j < H; j++) d[j] = (run[j] + dy[j]) * (h[j] > 0.0f ? 1.0f : 0.0f);
    else
        for (long j = 0; j < H; j++) d[j] = (run[j] + dy[j]) * (1.0f - h[j] * h[j]);
}

/* Elman RNN over whole sequences, the rows as in lstm_seq_forward: per step and row
 * a = xp + h_prev W_hh^T (xp (N, H) = x W_ih^T + biases; wh = W_hh^T packed: ceil(H / PW)
 * panels of (H, PW)), h = tanh(a), or max(a, 0) with relu. Writes a to A (N, H) and h to HH
 * (B + N, H) after h0. */
int rnn_seq_forward(const float *xp, const float *wh, float *HH, float *A, const int64_t *sizes,
                    const int64_t *offs, long T, long B, long H, int relu) {
    long np = (H + PW - 1) / PW, ld = np * PW;
    int failed = 0;
    PRAGMA(omp parallel if (B > MR))
    {
        Work ws;
        if (!work_get(&ws, (size_t)(B * ld), B)) {
            REPORT(failed);
        } else {
            float *scr = ws.f;
            const float **a = ws.a;
            long *rows = ws.rows;
            for (long t = 0; t < T; t++) {
                long b = sizes[t], s = offs[t], p = t ? B + offs[t - 1] : 0, q = B + s;
                long n = my_rows(b, B, rows);
                for (long i = 0; i < n; i++) {
                    a[i] = HH + (p + rows[i]) * H;
                    memcpy(scr + i * ld, xp + (s + rows[i]) * H, (size_t)H * sizeof(float));
                }
                rows_mm(a, n, wh, H, np, scr, 0);
                for (long i = 0; i < n; i++) {
                    rnn_fwd_row(scr + i * ld, HH + (q + rows[i]) * H, H, relu);
                    put_row(A + (s + rows[i]) * H, scr + i * ld, H);
                }
            }
            stores_done();
            free(ws.f);
        }
    }
    return failed;
}

/* Back through the whole sequence: run (B, H) holds the gradient reaching the final state and
 * ends as that reaching h0; dY (N, H) reaches each step's h. Per row dA = (run + dy) f'(a)
 * (from h: 1 - h^2, or h > 0 with relu), written to dA (N, H) and transposed to DAT (H, N);
 * run = dA W_hh (w = W_hh packed: ceil(H / PW) panels of (H, PW)). */
int rnn_seq_backward(const float *HH, const float *dY, const float *w, float *run, float *dA,
                     float *DAT, const int64_t *sizes, const int64_t *offs, long T, long B,
                     long H, int relu) {
    long np = (H + PW - 1) / PW, ld = np * PW, N = offs[T - 1] + sizes[T - 1];
    int failed = 0;
    PRAGMA(omp parallel if (B > MR))
    {
        Work ws;
        if (!work_get(&ws, (size_t)(B * ld + B * H), B)) {
            REPORT(failed);
        } else {
            float *scr = ws.f, *dl = scr + B * ld;  /* dl: this thread's rows of dA */
            const float **a = ws.a;
            long *rows = ws.rows;
            for (long t = T - 1; t >= 0; t--) {
                long b = sizes[t], s = offs[t];
                long n = my_rows(b, B, rows);
                for (long i = 0; i < n; i++) {
                    long r = rows[i], o = s + r;
                    float *d = dl + i * H;
                    rnn_bwd_row(HH + (B + o) * H, dY + o * H, run + r * H, d, H, relu);
                    memcpy(dA + o * H, d, (size_t)H * sizeof(float));
                    a[i] = d;
                }
                put_t(DAT, N, s, rows, n, dl, H, H);
                rows_mm(a, n, w, H, np, scr, 1);
                put_run(run, rows, n, H, scr, ld, NULL);
            }
            stores_done();
            free(ws.f);
        }
    }
    return failed;
}

/* One LSTM time step for a stack of L layers at a small batch b (generation, streaming): per
 * layer k, pre = [x | h_prev] [W_ih | W_hh]^T + bias, then the cell; x (b, I) is the input of
 * layer 0, each layer's new h that of the next. wx[k], wh[k]: W_ih^T, W_hh^T packed with their
 * columns unit-interleaved (panel j: gates i, f, g, o of UNITS units from UNITS j, zero
 * padded past H), bias[k] (ceil(H / UNITS) * PW) in the same order; h_prev, c_prev, h, c:
 * (L, b, H). A panel holds every gate of its units, so the threads split the panels and apply
 * the cell at once; the layers wait for each other (each reads the previous one's whole h).
 * At batch 1 a step is memory bound: it reads every weight once, and both threads read. */
#define UNITS (PW / 4)  /* units per panel of pack_units: their four gates fill it */
void lstm_stack_step(const float *x, const float *const *wx, const float *const *wh,
                     const float *const *bias, const float *h_prev, const float *c_prev,
                     float *h, float *c, long L, long b, long I, long H) {
    long np = (H + UNITS - 1) / UNITS;
    PRAGMA(omp parallel if (np >= 8))
    for (long k = 0; k < L; k++) {
        const float *in = k ? h + (k - 1) * b * H : x;
        long K = k ? H : I;
        PRAGMA(omp for schedule(static))
        for (long j = 0; j < np; j++) {
            float acc[MR * PW];
            for (long r0 = 0; r0 < b; r0 += MR) {
                long nr = b - r0 < MR ? b - r0 : MR;
                const float *ax[MR], *ah[MR];
                for (long i = 0; i < nr; i++) {
                    ax[i] = in + (r0 + i) * K;
                    ah[i] = h_prev + (k * b + r0 + i) * H;
                }
                for (long i = 0; i < nr; i++)
                    memcpy(acc + i * PW, bias[k] + j * PW, sizeof(float) * PW);
                rows_mm(ax, nr, wx[k] + j * K * PW, K, 1, acc, 0);
                rows_mm(ah, nr, wh[k] + j * H * PW, H, 1, acc, 0);
                long u = UNITS * j, m = H - u < UNITS ? H - u : UNITS;  /* the panel's units */
                for (long i = 0; i < nr; i++) {  /* the LSTM cell on them (padding: zeros) */
                    long o = (k * b + r0 + i) * H + u;
                    float cp[UNITS] = {0}, g[PW], cn[UNITS], tc[UNITS], hn[UNITS];
                    memcpy(cp, c_prev + o, (size_t)m * sizeof(float));
                    fwd_row(acc + i * PW, g, g + UNITS, g + 2 * UNITS, g + 3 * UNITS, cp, cn, tc,
                            hn, UNITS);
                    memcpy(c + o, cn, (size_t)m * sizeof(float));
                    memcpy(h + o, hn, (size_t)m * sizeof(float));
                }
            }
        }  /* (the end of the omp for waits: the next layer reads this one's whole h) */
    }
}

/* LayerNormLSTM step (rnnkit/cells/layernorm_lstm.py), per row: r = W_hh h_{t-1},
 * p = W_ih x; a = LN(r) g_hh + LN(p) g_ih + b_ih + b_hh, activations -> gates;
 * cpre = f c_prev + i (m g); chat = LN(cpre) g_c + b_c; tc = tanh(chat); zoneout with d:
 * c = d c_prev + (1-d) chat, h = d h_prev + (1-d) o tc. m (recurrent dropout) and d (zoneout)
 * are (H) rows: ones and zeros when unused. */
/* mean and 1/std of v (n), summed in double: the layer norms of ill-conditioned rows (small
 * spread, large mean) then lose nothing here, which float sums would */
static void ln_stats(const float *restrict v, long n, float eps, float *mu, float *rs) {
    double m = 0.0, q = 0.0;
#pragma omp simd reduction(+:m)
    for (long j = 0; j < n; j++) m += v[j];
    m /= (float)n;
#pragma omp simd reduction(+:q)
    for (long j = 0; j < n; j++) q += (v[j] - m) * (v[j] - m);
    *mu = (float)m;
    *rs = (float)(1.0 / sqrt(q / (double)n + eps));
}

/* a = LN(r) g_hh + LN(p) g_ih + beta (st: mean and 1/std of r, then at st + 4 of p) */
static void ln_gates(float *restrict g, const float *restrict r, const float *restrict p,
                     const float *restrict g_hh, const float *restrict g_ih,
                     const float *restrict beta, const float *st, long H) {
    float mu = st[0], rs = st[1], mx = st[4], rx = st[5];
    for (long j = 0; j < 4 * H; j++)
        g[j] = (r[j] - mu) * rs * g_hh[j] + ((p[j] - mx) * rx * g_ih[j] + beta[j]);
    for (long j = 0; j < 2 * H; j++) g[j] = sigm(g[j]);
    for (long j = 2 * H; j < 3 * H; j++) g[j] = tanh_(g[j]);
    for (long j = 3 * H; j < 4 * H; j++) g[j] = sigm(g[j]);
}

static void ln_update(float *restrict cq, const float *restrict g, const float *restrict cp,
                      const float *restrict m, long H) {
    for (long j = 0; j < H; j++) cq[j] = g[H + j] * cp[j] + g[j] * g[2 * H + j] * m[j];
}

static void ln_cell(float *restrict t, float *restrict c, float *restrict h,
                    const float *restrict cq, const float *restrict gam,
                    const float *restrict bet, const float *restrict d,
                    const float *restrict cp, const float *restrict hp,
                    const float *restrict o, float mu, float rs, long H) {
    for (long j = 0; j < H; j++) {
        float ch = (cq[j] - mu) * rs * gam[j] + bet[j], tt = tanh_(ch);
        t[j] = tt;
        c[j] = d[j] * cp[j] + (1.0f - d[j]) * ch;
        h[j] = d[j] * hp[j] + (1.0f - d[j]) * o[j] * tt;
    }
}

/* LayerNormLSTM over whole sequences, the rows as in lstm_seq_forward: per step and row
 * p = x W_ih^T, r = h_prev W_hh^T (wx, wh: W_ih^T, W_hh^T packed into ceil(4H / PW) panels of
 * (I, PW), (H, PW)), a = LN(r) g_hh + LN(p) g_ih + beta (beta = b_ih + b_hh), then the cell.
 * drop, zone (N, H): the masks, or NULL: every row uses fill (ones) and fill + H (the constant
 * zoneout probability). Writes P, R (N, 4H), gates G (N, 4H), ST (N, 6: mean and 1/std of r,
 * of the cell update, of p), CPRE, TC (N, H) and HH, CC (B + N, H) after h0, c0. */
int lnlstm_seq_forward(const float *X, const float *wx, const float *wh, const float *g_ih,
                       const float *beta, const float *g_hh, const float *g_c,
                       const float *b_c, const float *drop, const float *zone,
                       const float *fill, float *P, float *R, float *HH, float *CC, float *G,
                       float *ST, float *CPRE, float *TC, const int64_t *sizes,
                       const int64_t *offs, long T, long B, long H, long I, float eps) {
    long N4 = 4 * H, np = (N4 + PW - 1) / PW, ld = np * PW;
    int failed = 0;
    PRAGMA(omp parallel if (B > MR))
    {
        Work ws;
        if (!work_get(&ws, (size_t)(2 * B * ld + N4), B)) {
            REPORT(failed);
        } else {
            float *scr = ws.f, *scx = scr + B * ld, *gt = scx + B * ld;  /* gt: a row's gates */
            const float **a = ws.a, **ax = ws.a2;
            long *rows = ws.rows;
            for (long t = 0; t < T; t++) {
                long b = sizes[t], s = offs[t], p = t ? B + offs[t - 1] : 0, q = B + s;
                long n = my_rows(b, B, rows);
                for (long i = 0; i < n; i++) {
                    a[i] = HH + (p + rows[i]) * H;
                    ax[i] = X + (s + rows[i]) * I;
                }
                rows_mm(ax, n, wx, I, np, scx, 1);
                rows_mm(a, n, wh, H, np, scr, 1);
                for (long i = 0; i < n; i++) {
                    long r = rows[i], o = s + r;
                    float *ri = scr + i * ld, *pi = scx + i * ld, *st = ST + o * 6, *g = gt;
                    float *cq = CPRE + o * H, *cp = CC + (p + r) * H;
                    const float *d = zone ? zone + o * H : fill + H;
                    ln_stats(ri, N4, eps, st, st + 1);
                    ln_stats(pi, N4, eps, st + 4, st + 5);
                    ln_gates(g, ri, pi, g_hh, g_ih, beta, st, H);
                    put_row(R + o * N4, ri, N4);
                    put_row(P + o * N4, pi, N4);
                    put_row(G + o * N4, g, N4);
                    ln_update(cq, g, cp, drop ? drop + o * H : fill, H);
                    ln_stats(cq, H, eps, st + 2, st + 3);
                    ln_cell(TC + o * H, CC + (q + r) * H, HH + (q + r) * H, cq, g_c, b_c, d, cp,
                            HH + (p + r) * H, g + 3 * H, st[2], st[3], H);
                }
            }
            stores_done();
            free(ws.f);
        }
    }
    return failed;
}

/* The gradient reaching chat (dch), the o-gate's (ao), and what skips the step through
 * zoneout (kh, rc); adds this row's share of the c layer norm's parameter gradients to agc, abc;
 * returns the two layer-norm sums of the c layer norm's backward. */
static void lnb_cell(float *restrict dch, float *restrict ao, float *restrict kh,
                     float *restrict rc, float *restrict agc, float *restrict abc,
                     const float *restrict rh, const float *restrict dy,
                     const float *restrict d, const float *restrict o,
                     const float *restrict t, const float *restrict cq,
                     const float *restrict gam, float mu, float rs, float *s1, float *s2,
                     long H) {
    float a1 = 0.0f, a2 = 0.0f;
#pragma omp simd reduction(+:a1, a2)
    for (long j = 0; j < H; j++) {
        float dh = rh[j] + dy[j], dhn = dh * (1.0f - d[j]);
        float dc = rc[j] * (1.0f - d[j]) + dhn * o[j] * (1.0f - t[j] * t[j]);
        kh[j] = dh * d[j];
        rc[j] = rc[j] * d[j];
        ao[j] = dhn * t[j] * o[j] * (1.0f - o[j]);
        dch[j] = dc;
        float xh = (cq[j] - mu) * rs, dx = dc * gam[j];
        agc[j] += dc * xh;
        abc[j] += dc;
        a1 += dx;
        a2 += dx * xh;
    }
    *s1 = a1 / (float)H;
    *s2 = a2 / (float)H;
}

static void lnb_gates(float *restrict a, float *restrict rc, const float *restrict dch,
                      const float *restrict g, const float *restrict cp,
                      const float *restrict m, const float *restrict cq,
                      const float *restrict gam, float mu, float rs, float s1, float s2,
                      long H) {
    for (long j = 0; j < H; j++) {
        float dcp = rs * (dch[j] * gam[j] - s1 - (cq[j] - mu) * rs * s2);
        float i = g[j], f = g[H + j], gg = g[2 * H + j];
        a[j] = dcp * gg * m[j] * i * (1.0f - i);
        a[H + j] = dcp * cp[j] * f * (1.0f - f);
        a[2 * H + j] = dcp * i * m[j] * (1.0f - gg * gg);
        rc[j] += dcp * f;
    }
}

static void lnb_r(float *restrict dR, float *restrict agh, const float *restrict a,
                  const float *restrict r, const float *restrict gam, float mu, float rs,
                  long n) {
    float q1 = 0.0f, q2 = 0.0f;
#pragma omp simd reduction(+:q1, q2)
    for (long j = 0; j < n; j++) {
        float xh = (r[j] - mu) * rs;
        agh[j] += a[j] * xh;
        q1 += a[j] * gam[j];
        q2 += a[j] * gam[j] * xh;
    }
    q1 /= (float)n;
    q2 /= (float)n;
    for (long j = 0; j < n; j++) dR[j] = rs * (a[j] * gam[j] - q1 - (r[j] - mu) * rs * q2);
}

/* Back through the whole sequence (buffers as lnlstm_seq_forward wrote them). Per step and
 * row: dh = run_h + dy, dc = run_c reach h_t, c_t; the gradient of a, then of r and p through
 * their layer norms (dr, dp, written transposed to DRT, DPT (4H, N) for dW_hh, dW_ih); run_c
 * (reaching c_{t-1}); run_h = dr W_hh + dh d (dh d reaches h_{t-1} through zoneout) and
 * dX = dp W_ih (wh, wx: W_hh, W_ih packed into panels of (4H, PW)). Adds the parameter
 * gradients of the layer norms and of beta to acc (nacc rows of 14H: g_hh 4H, g_c H, b_c H,
 * g_ih 4H, beta 4H; thread k adds to row k, so the sums do not depend on scheduling; the
 * caller adds the rows up). */
int lnlstm_seq_backward(const float *P, const float *R, const float *g_ih, const float *g_hh,
                        const float *g_c, const float *G, const float *ST, const float *CPRE,
                        const float *TC, const float *CC, const float *drop,
                        const float *zone, const float *fill, const float *dY,
                        const float *wh, const float *wx, float *run_h, float *run_c,
                        float *DRT, float *DPT, float *dX, float *acc, long nacc,
                        const int64_t *sizes, const int64_t *offs, long T, long B, long H,
                        long I) {
    long N4 = 4 * H, nh = (H + PW - 1) / PW, nx = (I + PW - 1) / PW;
    long N = offs[T - 1] + sizes[T - 1];
    int failed = 0;
    PRAGMA(omp parallel num_threads(nacc) if (B > MR && nacc > 1))
    {
        float *my = acc + MY_THREAD * 14 * H, *my_gih = my + 6 * H, *my_beta = my + 10 * H;
        Work ws;
        if (!work_get(&ws, (size_t)(B * (nh + nx) * PW + 2 * B * N4 + N4 + B * H + H), B)) {
            REPORT(failed);
        } else {
            float *scr = ws.f, *scx = scr + B * nh * PW, *dr = scx + B * nx * PW;
            float *dp = dr + B * N4, *da = dp + B * N4, *keep = da + N4, *dch = keep + B * H;
            const float **a = ws.a, **ap = ws.a2;
            long *rows = ws.rows;
            for (long t = T - 1; t >= 0; t--) {
                long b = sizes[t], s = offs[t], p = t ? B + offs[t - 1] : 0;
                long n = my_rows(b, B, rows);
                for (long i = 0; i < n; i++) {
                    long r = rows[i], o = s + r;
                    const float *st = ST + o * 6, *g = G + o * N4, *cq = CPRE + o * H;
                    float s1, s2;
                    lnb_cell(dch, da + 3 * H, keep + i * H, run_c + r * H, my + 4 * H, my + 5 * H,
                             run_h + r * H, dY + o * H, zone ? zone + o * H : fill + H, g + 3 * H,
                             TC + o * H, cq, g_c, st[2], st[3], &s1, &s2, H);
                    lnb_gates(da, run_c + r * H, dch, g, CC + (p + r) * H,
                              drop ? drop + o * H : fill, cq, g_c, st[2], st[3], s1, s2, H);
                    lnb_r(dr + i * N4, my, da, R + o * N4, g_hh, st[0], st[1], N4);
                    lnb_r(dp + i * N4, my_gih, da, P + o * N4, g_ih, st[4], st[5], N4);
                    for (long j = 0; j < N4; j++) my_beta[j] += da[j];
                    a[i] = dr + i * N4;
                    ap[i] = dp + i * N4;
                }
                put_t(DRT, N, s, rows, n, dr, N4, N4);
                put_t(DPT, N, s, rows, n, dp, N4, N4);
                rows_mm(a, n, wh, N4, nh, scr, 1);
                rows_mm(ap, n, wx, N4, nx, scx, 1);
                put_run(run_h, rows, n, H, scr, nh * PW, keep);
                for (long i = 0; i < n; i++)
                    memcpy(dX + (s + rows[i]) * I, scx + i * nx * PW, (size_t)I * sizeof(float));
            }
            stores_done();
            free(ws.f);
        }
    }
    return failed;
}

/* minGRU / minLSTM (rnnkit/cells/minrnn.py) over whole sequences: h_t = a_t h_{t-1} + b_t
 * with a, b from the input projection alone, so one pass in time per sequence, each step
 * vectorised over H, reads the projection once and writes h once (memory bound: a
 * parallel-over-time scan reads and writes every value several times). Layout batch first:
 * pre (B, T, G H) holds the blocks z, v (minGRU, G = 2) or kf, ki, v (minLSTM, G = 3); h0
 * (B, H); len (B,) the steps each sequence runs (its state is frozen after); h (B, T, H). */
/* log(1 + y) for y in [0, 1]: 2 atanh(s) with s = y / (2 + y) <= 1/3, as its odd series to
 * s^19 (the next term is below float rounding); plain arithmetic, so gcc vectorises it. */
static inline float log1p01(float y) {
    float s = y / (2.0f + y), z = s * s;
    float q = 1.0f / 19.0f;
    q = q * z + 1.0f / 17.0f;
    q = q * z + 1.0f / 15.0f;
    q = q * z + 1.0f / 13.0f;
    q = q * z + 1.0f / 11.0f;
    q = q * z + 1.0f / 9.0f;
    q = q * z + 1.0f / 7.0f;
    q = q * z + 1.0f / 5.0f;
    q = q * z + 1.0f / 3.0f;
    return 2.0f * s * (q * z + 1.0f);
}

static inline float softplus_(float x) {  /* log(1 + e^x) = max(x, 0) + log(1 + e^-|x|) */
    return (x > 0.0f ? x : 0.0f) + log1p01(exp_(-fabsf(x)));  /* (fmaxf would not vectorise) */
}

static inline float gpos(float v) { return v >= 0.0f ? v + 0.5f : sigm(v); }

static inline float dgpos(float v) {
    float s = sigm(v);
    return v >= 0.0f ? 1.0f : s * (1.0f - s);
}

/* a = 1 - z, b = z h~ (minGRU); a = f', b = (1 - f') h~ with f' = σ(sp(-ki) - sp(-kf)),
 * the normalised forget gate f / (f + i) computed without dividing small numbers. */
static void min_row(const float *restrict p, const float *restrict hp, float *restrict h,
                    long H, int lstm) {
    if (lstm) {
        for (long j = 0; j < H; j++) {
            float fn = sigm(softplus_(-p[H + j]) - softplus_(-p[j]));
            h[j] = fn * hp[j] + (1.0f - fn) * gpos(p[2 * H + j]);
        }
    } else {
        for (long j = 0; j < H; j++) {
            float z = sigm(p[j]);
            h[j] = (1.0f - z) * hp[j] + z * gpos(p[H + j]);
        }
    }
}

void minrnn_forward(const float *pre, const float *h0, const int64_t *len, float *h, long B,
                    long T, long H, int lstm) {
    long G = lstm ? 3 : 2;
    ROWS_PARALLEL(B)
    for (long r = 0; r < B; r++) {
        const float *hp = h0 + r * H;
        for (long t = 0; t < T; t++) {
            float *ht = h + (r * T + t) * H;
            if (t < len[r])
                min_row(pre + (r * T + t) * G * H, hp, ht, H, lstm);
            else
                memcpy(ht, hp, (size_t)H * sizeof(float));
            hp = ht;
        }
    }
}

/* Backward in time per sequence: g_t = dh_t + a_{t+1} g_{t+1} reaches h_t; writes the
 * projection's gradient dpre (B, T, G H) and dh0 (B, H). */
static void min_row_back(const float *restrict p, const float *restrict hp,
                         const float *restrict dh, float *restrict run, float *restrict d,
                         long H, int lstm) {
    if (lstm) {
        for (long j = 0; j < H; j++) {
            float kf = p[j], ki = p[H + j], v = p[2 * H + j];
            float fn = sigm(softplus_(-ki) - softplus_(-kf)), ht = gpos(v);
            float g = dh[j] + run[j];
            float du = g * (hp[j] - ht) * fn * (1.0f - fn);  /* through f' = σ(u) */
            d[j] = du * sigm(-kf);  /* du/dkf = σ(-kf) */
            d[H + j] = -du * sigm(-ki);  /* du/dki = -σ(-ki) */
            d[2 * H + j] = g * (1.0f - fn) * dgpos(v);
            run[j] = g * fn;
        }
    } else {
        for (long j = 0; j < H; j++) {
            float z = sigm(p[j]), v = p[H + j], g = dh[j] + run[j];
            d[j] = g * (gpos(v) - hp[j]) * z * (1.0f - z);
            d[H + j] = g * z * dgpos(v);
            run[j] = g * (1.0f - z);
        }
    }
}

void minrnn_backward(const float *pre, const float *h0, const float *h, const int64_t *len,
                     const float *dh, float *dpre, float *dh0, long B, long T, long H,
                     int lstm) {
    long G = lstm ? 3 : 2;
    ROWS_PARALLEL(B)
    for (long r = 0; r < B; r++) {
        float *run = dh0 + r * H;
        memset(run, 0, (size_t)H * sizeof(float));
        for (long t = T - 1; t >= 0; t--) {
            long o = r * T + t;
            if (t < len[r]) {
                const float *hp = t ? h + (o - 1) * H : h0 + r * H;
                min_row_back(pre + o * G * H, hp, dh + o * H, run, dpre + o * G * H, H, lstm);
            } else {  /* frozen: h_t = h_{t-1} */
                for (long j = 0; j < H; j++) run[j] += dh[o * H + j];
                memset(dpre + o * G * H, 0, (size_t)(G * H) * sizeof(float));
            }
        }
    }
}
""".replace("@PW@", str(PW))


def _flag_sets() -> list[list[str]]:
    """Compiler flags to try, best first: AVX-512 or AVX2/FMA as torch reports this CPU, then
    plain; each first with OpenMP (``-fopenmp``: the library then needs ``libgomp.so.1``, which
    resolves to the one torch has loaded, so the C loops share torch's thread team), then
    without."""
    base = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd", "-fPIC", "-shared",
            "-std=c99"]  # -fopenmp-simd: the `omp simd` reductions only, no OpenMP runtime
    sets = []
    if platform.machine() in ("x86_64", "AMD64"):
        cap = torch.backends.cpu.get_cpu_capability()
        if cap == "AVX512":  # 16 lanes: the step's exp/tanh take half the time of AVX2's 8
            sets.append([*base, "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma",
                         "-mprefer-vector-width=512"])
        if cap in ("AVX2", "AVX512"):
            sets.append([*base, "-mavx2", "-mfma"])
    return [s for isa in [*sets, base] for s in (["-fopenmp", *isa], isa)]


def _build(cc: str, flags: list[str], cache_dir: Path) -> Path:
    key = hashlib.sha256((SOURCE + cc + " ".join(flags)).encode()).hexdigest()[:16]
    so = cache_dir / f"pointwise-{key}.so"
    if not so.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            c_file, out = Path(tmp) / "pointwise.c", Path(tmp) / "pointwise.so"
            c_file.write_text(SOURCE)
            libs = [f for f in flags if f.startswith("-l")]
            cflags = [f for f in flags if not f.startswith("-l")]
            subprocess.run([cc, *cflags, str(c_file), "-o", str(out), *libs, "-lm"], check=True,
                           capture_output=True, timeout=120)
            os.replace(out, so)  # atomic: concurrent builds are harmless
    return so


@cache
def lib() -> ctypes.CDLL | None:
    """The compiled library, or ``None`` when it cannot be built (or ``RNNKIT_NATIVE=0``)."""
    if os.environ.get("RNNKIT_NATIVE", "1") == "0":
        return None
    cc = os.environ.get("CC", "cc")
    cache_dir = Path(os.environ.get("RNNKIT_CACHE", Path.home() / ".cache" / "rnnkit"))
    lib = None
    for flags in _flag_sets():
        try:
            lib = ctypes.CDLL(str(_build(cc, flags, cache_dir)))
            break
        except (OSError, subprocess.SubprocessError):
            continue
    if lib is None:
        return None
    ptr, n = ctypes.c_void_p, ctypes.c_long
    lib.lstm_stack_step.argtypes = [ptr] * 8 + [n, n, n, n]
    lib.gru_seq_forward.argtypes = [ptr] * 8 + [n, n, n]
    lib.gru_seq_backward.argtypes = [ptr] * 9 + [n, ptr, ptr, n, n, n]
    lib.gru_cho_seq_forward.argtypes = [ptr] * 8 + [n, n, n]
    lib.gru_cho_seq_backward.argtypes = [ptr] * 10 + [n, n, n]
    lib.rnn_seq_forward.argtypes = [ptr] * 6 + [n, n, n, ctypes.c_int]
    lib.rnn_seq_backward.argtypes = [ptr] * 8 + [n, n, n, ctypes.c_int]
    lib.lstm_seq_forward.argtypes = [ptr] * 10 + [n, n, n, n]
    lib.lstm_seq_backward.argtypes = [ptr] * 10 + [n, ptr, ptr, n, n, n, n]
    f = ctypes.c_float
    lib.lnlstm_seq_forward.argtypes = [ptr] * 21 + [n, n, n, n, f]
    lib.lnlstm_seq_backward.argtypes = [ptr] * 22 + [n, ptr, ptr, n, n, n, n]
    lib.rnnkit_threads.argtypes, lib.rnnkit_threads.restype = [], ctypes.c_int
    lib.minrnn_forward.argtypes = [ptr] * 4 + [n, n, n, ctypes.c_int]
    lib.minrnn_backward.argtypes = [ptr] * 7 + [n, n, n, ctypes.c_int]
    for fn in (lib.lstm_stack_step, lib.minrnn_forward, lib.minrnn_backward):
        fn.restype = None
    for fn in (lib.lstm_seq_forward, lib.lstm_seq_backward, lib.lnlstm_seq_forward,
               lib.lnlstm_seq_backward, lib.gru_seq_forward, lib.gru_seq_backward,
               lib.gru_cho_seq_forward, lib.gru_cho_seq_backward, lib.rnn_seq_forward,
               lib.rnn_seq_backward):
        fn.restype = ctypes.c_int  # 0, or 1: a thread could not allocate its buffers
    return lib



def check(failed: int, what: str, **shape: int) -> None:
    """Raise if a whole-sequence kernel reported that a thread could not allocate its buffers
    (its outputs are then incomplete)."""
    if failed:
        dims = ", ".join(f"{k}={v}" for k, v in shape.items())
        raise MemoryError(f"rnnkit's C {what} kernel could not allocate its per-thread "
                          f"buffers ({dims}); try a smaller batch")


def pack(m: Tensor) -> Tensor:
    """``m`` ``(K, N)`` laid out as the C products read it: ``(ceil(N / PW), K, PW)``, panels of
    ``PW`` columns, the last zero padded."""
    K, N = m.shape
    panels = -(-N // PW)
    z = m.new_zeros(K, panels * PW)
    z[:, :N] = m
    return z.view(K, panels, PW).transpose(0, 1).contiguous()


def pack_units(w: Tensor) -> Tensor:
    """A gate-stacked weight ``w`` ``(4H, K)`` (torch.nn's layout, gates i, f, g, o) as
    :func:`pack` lays out ``w^T`` but with its columns unit-interleaved: panel ``j`` holds gates
    i, f, g, o of ``u = PW / 4`` units from ``u j`` (zero past ``H``), so one panel holds every
    gate of its units. A bias ``(4H,)`` comes back as ``(ceil(H / u) * PW,)`` in the same
    order."""
    H, u = w.shape[0] // 4, PW // 4
    units = -(-H // u) * u
    z = w.new_zeros(4, units, *w.shape[1:])
    z[:, :H] = w.reshape(4, H, *w.shape[1:])
    z = z.view(4, units // u, u, *w.shape[1:]).transpose(0, 1)  # (panels, gate, u, K)
    z = z.reshape(units * 4, *w.shape[1:])
    return z if w.dim() == 1 else pack(z.t())


def usable(*tensors: Tensor) -> bool:
    """Whether the C kernels can run on these tensors (CPU float32) and are built."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and (
        lib() is not None)
