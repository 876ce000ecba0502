/* LSTM (gates i, f, g, o; rnnkit/cells/lstm.py): the whole sequence forward and backward
 * (lstm_seq_forward, lstm_seq_backward, input projection and dx included), one time step
 * of a stack of layers (lstm_stack_step, the stepper's) and a chunk of such steps
 * (lstm_stack_run, streaming). */
#include <sched.h>
#include <stdatomic.h>

#include "common.h"
#include "panel.h"

/* One LSTM row's step over n units: gates from the pre-activations (i, f, g, o blocks ldg
 * apart), then c = f c_prev + i g, tc = tanh(c), h = o tc. */
static inline void fwd_row_at(const float *restrict pre, long ldg, float *restrict gi,
                              float *restrict gf, float *restrict gg, float *restrict go,
                              const float *restrict cp, float *restrict c,
                              float *restrict tc, float *restrict h, long n) {
    for (long j = 0; j < n; j++) {
        float i = sigm(pre[j]), f = sigm(pre[ldg + j]), g = tanh_(pre[2 * ldg + j]);
        float o = sigm(pre[3 * ldg + j]);
        gi[j] = i; gf[j] = f; gg[j] = g; go[j] = o;
        float cn = f * cp[j] + i * g, t = tanh_(cn);
        c[j] = cn; tc[j] = t; h[j] = o * t;
    }
}

/* fwd_row_at for a row's H units, pre's gate blocks H apart. */
static void fwd_row(const float *restrict pre, float *restrict gi, float *restrict gf,
                    float *restrict gg, float *restrict go, const float *restrict cp,
                    float *restrict c, float *restrict tc, float *restrict h, long H) {
    fwd_row_at(pre, H, gi, gf, gg, go, cp, c, tc, h, H);
}

/* One row's step back over n units: dh = run_h + dy reaches h_t, dc = run_c + dh o (1 - tc^2)
 * reaches c_t; writes the pre-activation gradients ai..ao, run_c = dc f (reaching c_{t-1}) and
 * adds them to the bias gradient db (gate blocks ldb apart). */
static inline void bwd_row_at(const float *restrict gi, const float *restrict gf,
                              const float *restrict gg, const float *restrict go,
                              const float *restrict cp, const float *restrict tc,
                              const float *restrict run_h, const float *restrict dy,
                              float *restrict run_c, float *restrict ai, float *restrict af,
                              float *restrict ag, float *restrict ao, float *restrict db,
                              long ldb, long n) {
    for (long j = 0; j < n; j++) {
        float i = gi[j], f = gf[j], g = gg[j], o = go[j], t = tc[j];
        float dh = run_h[j] + dy[j];
        float dc = run_c[j] + dh * o * (1.0f - t * t);
        float a_i = dc * g * i * (1.0f - i), a_f = dc * cp[j] * f * (1.0f - f);
        float a_g = dc * i * (1.0f - g * g), a_o = dh * t * o * (1.0f - o);
        ai[j] = a_i; af[j] = a_f; ag[j] = a_g; ao[j] = a_o;
        db[j] += a_i; db[ldb + j] += a_f; db[2 * ldb + j] += a_g; db[3 * ldb + j] += a_o;
        run_c[j] = dc * f;
    }
}

/* bwd_row_at for a row's H units, db's gate blocks H apart. */
static void bwd_row(const float *restrict gi, const float *restrict gf,
                    const float *restrict gg, const float *restrict go,
                    const float *restrict cp, const float *restrict tc,
                    const float *restrict run_h, const float *restrict dy,
                    float *restrict run_c, float *restrict ai, float *restrict af,
                    float *restrict ag, float *restrict ao, float *restrict db, long H) {
    bwd_row_at(gi, gf, gg, go, cp, tc, run_h, dy, run_c, ai, af, ag, ao, db, H, H);
}

/* Packed rows (rnnkit.kernels.plan.Plan): step t owns rows offs[t] .. offs[t] + sizes[t] - 1
 * of X (N, I); HH, CC (B + N, H) hold h0, c0 then every step's h, c. Per step and row:
 * pre = bias + x W_ih^T + h_prev W_hh^T (wx, wh: W_ih^T, W_hh^T packed into ceil(4H / PW)
 * panels of (I, PW) and (H, PW); bias (4H)), then the cell; writes gates G (N, 4H) and TC.
 * wx NULL: X (N, 4H) holds each row's x W_ih^T + bias already (a streamed chunk's projection
 * read from a table, rnnkit/kernels/step.py), and bias is not read. */
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
                    memcpy(scr + i * ld, wx ? bias : ax[i], (size_t)N4 * sizeof(float));
                }
                if (wx) rows_mm(ax, n, wx, I, np, scr, 0);
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
    (void)ndb;  /* read by OpenMP alone: one row of sums per thread */
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

/* One LSTM time step for a stack of L layers at a small batch b (generation, streaming): per
 * layer k, pre = [x | h_prev] [W_ih | W_hh]^T + bias, then the cell; x (b, I) is the input of
 * layer 0, each layer's new h that of the next. wx[k], wh[k]: W_ih^T, W_hh^T packed with their
 * columns unit-interleaved (panel j: gates i, f, g, o of UNITS units from UNITS j, zero
 * padded past H), bias[k] (ceil(H / UNITS) * PW) in the same order; h_prev, c_prev, h, c:
 * (L, b, H). A panel holds every gate of its units, so the threads split the panels and apply
 * the cell at once; the layers wait for each other (each reads the previous one's whole h).
 * At batch 1 a step is memory bound: it reads every weight once, and both threads read. */
#define UNITS (PW / 4)  /* units per panel of pack_units: their four gates fill it */

/* A barrier for the threads of one parallel region that spins (with pause) before it yields
 * the core: lstm_stack_run waits at every layer of every step for a few microseconds' work,
 * shorter than a thread sleeping and waking again, which is where OpenMP's own barrier goes
 * after rnnkit's short GOMP_SPINCOUNT (rnnkit/runtime.py). Past SPIN_PAUSES it yields at every
 * check, so next to another job it gives the core away instead of spinning. Sense reversal:
 * each thread keeps the phase it waits for. */
typedef struct { atomic_long count, phase; } Barrier;
#define SPIN_PAUSES 20000
#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#else
#define CPU_RELAX() ((void)0)
#endif
static void barrier_wait(Barrier *bar, long team, long *phase) {
    long want = *phase + 1;
    *phase = want;
    if (team == 1) return;
    if (atomic_fetch_add(&bar->count, 1) == team - 1) {
        atomic_store(&bar->count, 0);
        atomic_store(&bar->phase, want);
        return;
    }
    for (long i = 0; atomic_load(&bar->phase) != want; i++) {
        if (i < SPIN_PAUSES) CPU_RELAX(); else sched_yield();
    }
}

/* One panel j (UNITS units, every gate) of layer k for rows b: pre = [in | h_prev]
 * [W_ih | W_hh]^T + bias (or, xp given, xp's row + h_prev W_hh^T), then the cell. */
static void stack_panel(long j, long k, const float *in, const float *xp,
                        const float *const *wx, const float *const *wh,
                        const float *const *bias, const float *h_prev, const float *c_prev,
                        float *h, float *c, long b, long K, long H, long np) {
    float acc[MR * PW];
    for (long r0 = 0; r0 < b; r0 += MR) {
        long nr = b - r0 < MR ? b - r0 : MR;
        const float *ax[MR], *ah[MR];
        for (long i = 0; i < nr; i++) {
            ax[i] = in + (r0 + i) * K;
            ah[i] = h_prev + (k * b + r0 + i) * H;
        }
        for (long i = 0; i < nr; i++)
            memcpy(acc + i * PW, xp ? xp + (r0 + i) * np * PW + j * PW : bias[k] + j * PW,
                   sizeof(float) * PW);
        if (!xp) rows_mm(ax, nr, wx[k] + j * K * PW, K, 1, acc, 0);
        rows_mm(ah, nr, wh[k] + j * H * PW, H, 1, acc, 0);
        long u = UNITS * j, m = H - u < UNITS ? H - u : UNITS;  /* the panel's units */
        for (long i = 0; i < nr; i++) {  /* the LSTM cell on them (padding: zeros) */
            long o = (k * b + r0 + i) * H + u;
            float cp[UNITS] = {0}, g[PW], cn[UNITS], tc[UNITS], hn[UNITS];
            memcpy(cp, c_prev + o, (size_t)m * sizeof(float));
            fwd_row(acc + i * PW, g, g + UNITS, g + 2 * UNITS, g + 3 * UNITS, cp, cn, tc, hn,
                    UNITS);
            memcpy(c + o, cn, (size_t)m * sizeof(float));
            memcpy(h + o, hn, (size_t)m * sizeof(float));
        }
    }
}

/* The layers of one step, inside the caller's parallel region: the threads split the panels
 * (bar NULL: an orphaned omp for per layer; else each thread its own contiguous share, then
 * barrier_wait), and each layer waits for the previous one's whole h. xp NULL, or layer 0's
 * pre-activations x W_ih^T + bias already made, (b, np * PW) in the unit-interleaved order
 * (then x, wx[0], bias[0] are unread). */
static void stack_layers(const float *x, const float *xp, const float *const *wx,
                         const float *const *wh, const float *const *bias,
                         const float *h_prev, const float *c_prev, float *h, float *c, long L,
                         long b, long I, long H, Barrier *bar, long *phase) {
    long np = (H + UNITS - 1) / UNITS;
    for (long k = 0; k < L; k++) {
        const float *in = k ? h + (k - 1) * b * H : x, *pre = k ? NULL : xp;
        long K = k ? H : I;
        if (bar) {
            long me = MY_THREAD, team = TEAM;
            for (long j = np * me / team; j < np * (me + 1) / team; j++)
                stack_panel(j, k, in, pre, wx, wh, bias, h_prev, c_prev, h, c, b, K, H, np);
            barrier_wait(bar, team, phase);
        } else {
            PRAGMA(omp for schedule(static))
            for (long j = 0; j < np; j++)
                stack_panel(j, k, in, pre, wx, wh, bias, h_prev, c_prev, h, c, b, K, H, np);
        }
    }
}

void lstm_stack_step(const float *x, const float *const *wx, const float *const *wh,
                     const float *const *bias, const float *h_prev, const float *c_prev,
                     float *h, float *c, long L, long b, long I, long H) {
    PRAGMA(omp parallel if ((H + UNITS - 1) / UNITS >= 8))
    stack_layers(x, NULL, wx, wh, bias, h_prev, c_prev, h, c, L, b, I, H, NULL, NULL);
}

/* T steps of lstm_stack_step in one parallel region (a streamed chunk at a few rows): x
 * (T, b, I) time-major, or xp (T, b, np * PW) layer 0's pre-activations made already (see
 * stack_layers; x then unread); h, c (L, b, H) the state before the chunk in, after it out;
 * Y (T, b, H) the top layer's h at every step; hs, cs (L, b, H) scratch (the steps alternate
 * between the two pairs). */
void lstm_stack_run(const float *x, const float *xp, const float *const *wx,
                    const float *const *wh, const float *const *bias, float *h, float *c,
                    float *hs, float *cs, float *Y, long T, long L, long b, long I, long H) {
    long np = (H + UNITS - 1) / UNITS, n = L * b * H;
    Barrier bar = {0, 0};
    PRAGMA(omp parallel if (np >= 8))
    {
        long phase = 0;
        for (long t = 0; t < T; t++) {
            float *hp = t % 2 ? hs : h, *cp = t % 2 ? cs : c;  /* this step's state in */
            float *hn = t % 2 ? h : hs, *cn = t % 2 ? c : cs;  /* and out */
            stack_layers(x ? x + t * b * I : NULL, xp ? xp + t * b * np * PW : NULL, wx, wh,
                         bias, hp, cp, hn, cn, L, b, I, H, &bar, &phase);
            SINGLE_NOWAIT
            memcpy(Y + t * b * H, hn + (L - 1) * b * H, (size_t)(b * H) * sizeof(float));
        }
        if (T % 2) {  /* the last step wrote the scratch pair */
            BARRIER
            SINGLE
            {
                memcpy(h, hs, (size_t)n * sizeof(float));
                memcpy(c, cs, (size_t)n * sizeof(float));
            }
        }
    }
}
