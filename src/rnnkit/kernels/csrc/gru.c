/* GRU (gates r, z, n; rnnkit/cells/gru.py) over whole sequences, forward and backward, in
 * both forms: reset_after (torch.nn's, n = tanh(xn + r (W_hn h + b_hn)): gru_seq_*) and
 * reset_before (Cho et al. 2014's, n = tanh(xn + W_hn (r h)): gru_cho_seq_*). */
#include "common.h"
#include "panel.h"

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
    (void)ndb;  /* read by OpenMP alone: one row of sums per thread */
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
