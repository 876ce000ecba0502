/* minGRU and minLSTM (rnnkit/cells/minrnn.py): one pass over time per sequence, forward
 * and backward (minrnn_forward, minrnn_backward). */
#include "common.h"
#include "panel.h"

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
