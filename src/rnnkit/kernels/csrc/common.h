/* rnnkit's C kernels, shared by every cell: the OpenMP macros, the activations (exp, sigmoid,
 * tanh), the per-thread workspace, each thread's row ranges and the helpers that put rows
 * out (transposed, streaming, into the running gradient). float32, rows contiguous. */
#ifndef RNNKIT_COMMON_H
#define RNNKIT_COMMON_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* Constants the build passes as -D defines (rnnkit/kernels/native.py): PW, the products' panel
 * width (columns per packed panel: two AVX-512 vectors). MR: rows per block of the product. */
#ifndef PW
#error "build with -DPW=<panel width> (rnnkit.kernels.native.PW)"
#endif
#define MR 8

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
#define SINGLE PRAGMA(omp single)  /* inside a region: one thread runs the next statement */
#define SINGLE_NOWAIT PRAGMA(omp single nowait)
#define BARRIER PRAGMA(omp barrier)
#else
#define ROWS_PARALLEL(n)
#define MY_THREAD 0
#define TEAM 1
#define REPORT(flag) flag = 1
#define SINGLE
#define SINGLE_NOWAIT
#define BARRIER
#endif

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

#endif /* RNNKIT_COMMON_H */
