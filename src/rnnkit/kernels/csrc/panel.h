/* The panel product every whole-sequence kernel uses: rows times a weight packed into panels
 * of PW columns (rnnkit.kernels.native.pack), MR rows at a time (an AVX-512 FMA kernel, or
 * plain C). Needs common.h. */
#ifndef RNNKIT_PANEL_H
#define RNNKIT_PANEL_H

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

#endif /* RNNKIT_PANEL_H */
