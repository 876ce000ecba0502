/* Elman RNN (tanh or relu; rnnkit/cells/rnn.py) over whole sequences, forward and backward
 * (rnn_seq_forward, rnn_seq_backward). */
#include "common.h"
#include "panel.h"

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
