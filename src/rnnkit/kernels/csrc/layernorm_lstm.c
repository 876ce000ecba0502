/* LayerNormLSTM (rnnkit/cells/layernorm_lstm.py) over whole sequences, forward and backward
 * (lnlstm_seq_forward, lnlstm_seq_backward), with recurrent dropout and zoneout masks. */
#include "common.h"
#include "panel.h"

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
    (void)nacc;  /* read by OpenMP alone: one row of sums per thread */
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
