/* bfloat16 whole-sequence LSTM (forward and backward) on the CPU's AVX512-BF16 dot products
 * (vdpbf16ps): weights and the rows multiplied by them (x, h_prev forward; dA backward) are
 * rounded to bfloat16 (round to nearest even, as torch's .bfloat16() and autocast round), every
 * product accumulates in float32, and the cell (gates, c, tanh c, h) and every gradient run
 * in float32. Same frame as lstm.c: each thread owns fixed blocks of batch rows for the whole
 * sequence (my_rows), weights packed once into panels of PW columns (rnnkit.kernels.native
 * .pack_bf16: (np, K2, PW, 2), K2 = ceil(K / 2), each column's values k, k + 1 side by side, the
 * pair one dot product reads).
 *
 * The AVX512-BF16 code is compiled only where the compiler knows the instructions (GCC >= 10,
 * clang >= 9 on x86-64), for that ISA alone (a target attribute: the rest of the library keeps
 * its own flags), and runs only where the CPU reports them (rnnkit_bf16_supported, CPUID).
 * Elsewhere (or built with -DRNNKIT_NO_BF16, as a test does) the entry points exist and return 2
 * (not built here), and rnnkit_bf16_supported() is 0. */
#include "common.h"

typedef uint16_t bf16_t;

#if !defined(RNNKIT_NO_BF16) && defined(__x86_64__) && \
    ((defined(__clang__) && __clang_major__ >= 9) || \
     (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 10))
#define RNNKIT_HAVE_BF16 1
#include <cpuid.h>
#include <immintrin.h>
#define BF16_TARGET __attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl,avx512dq,fma")))
#endif

/* AMX tiles (Sapphire Rapids on): the same products on the tile unit, where the compiler knows
 * AMX (GCC >= 11, clang >= 12), the CPU reports AMX-TILE and AMX-BF16 and Linux grants the
 * process the tile state (arch_prctl ARCH_REQ_XCOMP_PERM); rnnkit_bf16_amx switches them. */
#if defined(RNNKIT_HAVE_BF16) && !defined(RNNKIT_NO_AMX) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || \
     (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11)) && PW % 16 == 0
#define RNNKIT_HAVE_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#define AMX_TARGET __attribute__((target( \
    "amx-tile,amx-bf16,avx512bf16,avx512f,avx512bw,avx512vl,avx512dq,fma")))
#endif

/* float -> bfloat16, round to nearest even (NaN stays NaN). */
static inline bf16_t bf16_of(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
    return (bf16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* 1 where this library was built with the bfloat16 kernels and the CPU runs them: AVX512F/BW/VL
 * and AVX512_BF16 (CPUID leaf 7 subleaf 1, EAX bit 5) with the OS saving the ZMM state. */
int rnnkit_bf16_supported(void) {
#ifdef RNNKIT_HAVE_BF16
    unsigned a, b, c, d;
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl"))
        return 0;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
    return (a >> 5) & 1u;
#else
    return 0;
#endif
}

/* 1 while the bfloat16 products run on AMX tiles (rnnkit_bf16_amx), read by every thread. */
static int amx_on = 0;

/* want 1: use AMX tiles where the CPU and the OS allow them (asks Linux for the tile state
 * once); 0: the AVX512-BF16 dot products alone; -1: only ask. Returns whether AMX is on. */
int rnnkit_bf16_amx(int want) {
#ifdef RNNKIT_HAVE_AMX
    static int granted = -1;  /* -1: not asked yet */
    if (want > 0 && granted < 0) {
        unsigned a, b, c, d;
        /* CPUID leaf 7 subleaf 0, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE; then the permission
         * for XTILEDATA (state component 18), ARCH_REQ_XCOMP_PERM = 0x1023 */
        granted = rnnkit_bf16_supported() && __get_cpuid_count(7, 0, &a, &b, &c, &d) &&
                  ((d >> 22) & 1u) && ((d >> 24) & 1u) &&
                  syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    }
    if (want >= 0) amx_on = want > 0 && granted > 0;
    return amx_on;
#else
    (void)want;
    (void)amx_on;
    return 0;
#endif
}

#ifdef RNNKIT_HAVE_BF16
/* c[r][0:PW] (rows ldc apart) (+)= sum_k a[r][k] w[k][0:PW], r < nr <= MR: a's rows bfloat16
 * (2 K2 values, zero padded), w one panel (K2, PW, 2); zero: c starts at 0. */
static inline __attribute__((always_inline)) BF16_TARGET void kern_bf16(
        const bf16_t *const *a, const bf16_t *w, float *c, long ldc, long K2, int nr,
        int zero) {
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 8
    for (int r = 0; r < nr; r++) {
        c0[r] = zero ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * ldc);
        c1[r] = zero ? _mm512_setzero_ps() : _mm512_loadu_ps(c + r * ldc + 16);
    }
    for (long k = 0; k < K2; k++) {
        __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + k * 2 * PW);
        __m512bh w1 = (__m512bh)_mm512_loadu_si512(w + k * 2 * PW + PW);
#pragma GCC unroll 8
        for (int r = 0; r < nr; r++) {
            int32_t v;
            memcpy(&v, a[r] + 2 * k, sizeof v);
            __m512bh x = (__m512bh)_mm512_set1_epi32(v);
            c0[r] = _mm512_dpbf16_ps(c0[r], x, w0);
            c1[r] = _mm512_dpbf16_ps(c1[r], x, w1);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < nr; r++) {
        _mm512_storeu_ps(c + r * ldc, c0[r]);
        _mm512_storeu_ps(c + r * ldc + 16, c1[r]);
    }
}

#ifdef RNNKIT_HAVE_AMX
/* The tile configuration (palette 1, 64 bytes a tile row): tiles 0, 1 and 2, 3 the product's
 * blocks of two row blocks (m0, m1 rows of 16 floats), 4 and 5 those row blocks' operands (32
 * bfloat16 a row), 6 and 7 the weight's (16 pairs of rows of 16 columns: half a panel). */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

static AMX_TARGET void amx_config(long m0, long m1) {
    static const int block[8] = {0, 0, 1, 1, 0, 1, 2, 2};  /* row block 0, 1, or weight */
    TileConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        long r = block[t] == 2 ? 16 : block[t] ? m1 : m0;
        cfg.colsb[t] = r ? 64 : 0;
        cfg.rows[t] = (uint8_t)r;
    }
    _tile_loadconfig(&cfg);
}

/* A run of up to 16 of the rows a[i0..n) the same distance apart in memory (each thread's rows
 * are runs of consecutive rows): its length, and that distance in bytes in *gap. */
static long amx_run(const bf16_t *const *a, long i0, long n, long *gap) {
    long m = 1;
    intptr_t g = i0 + 1 < n ? (intptr_t)a[i0 + 1] - (intptr_t)a[i0] : 0;
    while (g > 0 && i0 + m < n && m < 16 && (intptr_t)a[i0 + m] - (intptr_t)a[i0 + m - 1] == g)
        m++;
    *gap = m > 1 ? (long)g : 64;
    return m;
}

/* One operand of a product: rows (2 K2 bfloat16 each, K2 a multiple of 16) and the packed
 * weight they multiply ((np, K2, PW, 2)). */
typedef struct {
    const bf16_t *const *a;
    const bf16_t *w;
    long K2;
} AmxOperand;

/* out (n rows, np PW wide) (+)= sum over the operands of rows @ weight (bias given: out =
 * bias + ..., bias (np PW), out not read), on AMX tiles, in the column tiles (16 columns) of
 * the nrng ranges [rng[2 i], rng[2 i + 1]) (rng NULL: all): two runs
 * of rows at a time against two column tiles (2 x 2 products of 16 rows x 16 columns x 32
 * values, tdpbf16ps, float32 accumulation as vdpbf16ps, subnormal inputs read as zero as in
 * oneDNN), every operand accumulated in the tiles before they are stored. All operands' rows
 * are the same rows (runs found on the first's: the others' must be runs there too). */
static AMX_TARGET void rows_mm_amx(const AmxOperand *op, int nop, long n, long np, float *out,
                                   int zero, const float *bias, const long *rng, int nrng) {
    const long ld = np * PW, nt = ld / 16, TP = PW / 16, bs = 2 * PW * (long)sizeof(bf16_t);
    const long cs = ld * (long)sizeof(float);
    long c0 = -1, c1 = -1;  /* rows of the current configuration */
#define WT(w, K2, ct, kb) ((w) + ((ct) / TP) * (K2) * 2 * PW + ((ct) % TP) * 32 + (kb) * 2 * PW)
    for (long i0 = 0, m0, m1; i0 < n; i0 += m0 + m1) {
        long g0[4], g1[4];
        m0 = amx_run(op[0].a, i0, n, &g0[0]);
        m1 = i0 + m0 < n ? amx_run(op[0].a, i0 + m0, n, &g1[0]) : 0;
        for (int o = 1; o < nop; o++) {
            amx_run(op[o].a, i0, i0 + m0, &g0[o]);
            if (m1) amx_run(op[o].a, i0 + m0, i0 + m0 + m1, &g1[o]);
        }
        if (m0 != c0 || m1 != c1) {
            amx_config(m0, m1);
            c0 = m0;
            c1 = m1;
        }
        float *C0 = out + i0 * ld, *C1 = C0 + m0 * ld;
        for (int ri = 0; ri < (rng ? nrng : 1); ri++) {
            long cb = rng ? rng[2 * ri] : 0, ce = rng ? rng[2 * ri + 1] : nt;
            for (long ct = cb; ct < ce; ct += 2) {
                int two = ct + 1 < ce;  /* a second column tile */
                float *p0 = C0 + ct * 16, *p1 = C1 + ct * 16;
                if (bias) {  /* every row starts at the bias: its 16 values, stride 0 */
                    _tile_loadd(0, bias + ct * 16, 0);
                    if (two) _tile_loadd(1, bias + ct * 16 + 16, 0);
                    if (m1) {
                        _tile_loadd(2, bias + ct * 16, 0);
                        if (two) _tile_loadd(3, bias + ct * 16 + 16, 0);
                    }
                } else if (zero) {  /* (tiles 2, 3 exist only with a second run) */
                    _tile_zero(0);
                    _tile_zero(1);
                    if (m1) {
                        _tile_zero(2);
                        _tile_zero(3);
                    }
                } else {
                    _tile_loadd(0, p0, cs);
                    if (two) _tile_loadd(1, p0 + 16, cs);
                    if (m1) {
                        _tile_loadd(2, p1, cs);
                        if (two) _tile_loadd(3, p1 + 16, cs);
                    }
                }
                for (int o = 0; o < nop; o++) {
                    const bf16_t *A0 = op[o].a[i0], *A1 = m1 ? op[o].a[i0 + m0] : NULL;
                    const bf16_t *w = op[o].w;
                    long K2 = op[o].K2;
                    for (long kb = 0; kb < K2; kb += 16) {
                        _tile_loadd(4, A0 + 2 * kb, g0[o]);
                        _tile_loadd(6, WT(w, K2, ct, kb), bs);
                        _tile_dpbf16ps(0, 4, 6);
                        if (two) {
                            _tile_loadd(7, WT(w, K2, ct + 1, kb), bs);
                            _tile_dpbf16ps(1, 4, 7);
                        }
                        if (m1) {
                            _tile_loadd(5, A1 + 2 * kb, g1[o]);
                            _tile_dpbf16ps(2, 5, 6);
                            if (two) _tile_dpbf16ps(3, 5, 7);
                        }
                    }
                }
                _tile_stored(0, p0, cs);
                if (two) _tile_stored(1, p0 + 16, cs);
                if (m1) {
                    _tile_stored(2, p1, cs);
                    if (two) _tile_stored(3, p1 + 16, cs);
                }
            }
        }
    }
#undef WT
    if (c0 >= 0) _tile_release();
}
#endif /* RNNKIT_HAVE_AMX */

/* out (n rows, np PW wide) (+)= rows a[0..n) (2 K2 bfloat16 each) @ the packed weight wp
 * (np, K2, PW, 2): on AMX tiles where they are on and K2 fills whole tiles. */
static BF16_TARGET void rows_mm_bf16(const bf16_t *const *a, long n, const bf16_t *wp, long K2,
                                     long np, float *out, int zero) {
#ifdef RNNKIT_HAVE_AMX
    if (amx_on && K2 % 16 == 0) {
        AmxOperand op = {a, wp, K2};
        rows_mm_amx(&op, 1, n, np, out, zero, NULL, NULL, 0);
        return;
    }
#endif
    long ld = np * PW;
    for (long j = 0; j < np; j++) {
        const bf16_t *w = wp + j * K2 * 2 * PW;
        for (long i = 0; i < n; i += MR) {
            const bf16_t *const *ai = a + i;
            float *c = out + i * ld + j * PW;
            switch (n - i < MR ? n - i : MR) {
#define KERN_CASE(m) case m: kern_bf16(ai, w, c, ld, K2, m, zero); break;
                KERN_CASE(8) KERN_CASE(7) KERN_CASE(6) KERN_CASE(5)
                KERN_CASE(4) KERN_CASE(3) KERN_CASE(2) KERN_CASE(1)
#undef KERN_CASE
            }
        }
    }
}

/* out (+)= rows a @ wa (K2a pairs) + rows b @ wb (K2b pairs), the same n rows: in one pass of
 * the tiles where AMX is on and both fill whole tiles, else two products. */
static BF16_TARGET void rows_mm2_bf16(const bf16_t *const *a, const bf16_t *wa, long K2a,
                                      const bf16_t *const *b, const bf16_t *wb, long K2b,
                                      long n, long np, float *out, int zero) {
#ifdef RNNKIT_HAVE_AMX
    if (amx_on && K2a % 16 == 0 && K2b % 16 == 0) {
        AmxOperand op[2] = {{a, wa, K2a}, {b, wb, K2b}};
        rows_mm_amx(op, 2, n, np, out, zero, NULL, NULL, 0);
        return;
    }
#endif
    rows_mm_bf16(a, n, wa, K2a, np, out, zero);
    rows_mm_bf16(b, n, wb, K2b, np, out, 0);
}

/* dst[0..n2) = bfloat16 of src[0..n), zero from n to n2 (n2 >= n: the row's even width). */
static BF16_TARGET void bf16_row(bf16_t *dst, const float *src, long n, long n2) {
    long j = 0;
    for (; j + 16 <= n; j += 16)
        _mm256_storeu_si256((__m256i *)(dst + j),
                            (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + j)));
    for (; j < n; j++) dst[j] = bf16_of(src[j]);
    for (; j < n2; j++) dst[j] = 0;
}

/* put_t in bfloat16: the thread's rows (rows[0..n), values src[i * ld + k], k < K, float)
 * rounded and written as columns s + rows[i] of dst (K, N). */
static BF16_TARGET void put_t_bf16(bf16_t *dst, long N, long s, const long *rows, long n,
                                   const float *src, long ld, long K) {
    for (long i0 = 0, m; i0 < n; i0 += m) {
        for (m = 1; i0 + m < n && m < 16 && rows[i0 + m] == rows[i0] + m; m++) {}
        bf16_t *d = dst + s + rows[i0];
        const float *v = src + i0 * ld;
        if (m == 16) {
            __m512i idx = _mm512_mullo_epi32(
                _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                _mm512_set1_epi32((int)ld));
            for (long k = 0; k < K; k++)
                _mm256_storeu_si256((__m256i *)(d + k * N),
                                    (__m256i)_mm512_cvtneps_pbh(
                                        _mm512_i32gather_ps(idx, v + k, 4)));
            continue;
        }
        for (long k = 0; k < K; k++)
            for (long i = 0; i < m; i++) d[k * N + i] = bf16_of(v[i * ld + k]);
    }
}
#endif /* RNNKIT_HAVE_BF16 */

/* The weight layout the products read (rnnkit.kernels.native.pack_bf16, its reference), made
 * in one pass: columns n0 .. n0 + n - 1 of dst (np, K2, PW, 2) bfloat16, K2 = ceil(K / 2),
 * from src (contiguous float): its element (k, c), k < K, c < n, is src[k n + c], or src[c K
 * + k] with trans (a (n, K) matrix read as its transpose). Rounds to nearest even as bf16_of;
 * writes every (k, column) pair it owns, a zero for k = K when K is odd, nothing else (the
 * caller zeroes the padding columns). */
void pack_bf16(const float *src, long K, long n, int trans, bf16_t *dst, long n0, long np) {
    long K2 = (K + 1) / 2;
    (void)np;  /* the layout's panels: the caller sizes dst */
    if (trans) {
        for (long c = 0; c < n; c++) {
            long col = n0 + c;
            bf16_t *d = dst + ((col / PW) * K2 * PW + col % PW) * 2;
            const float *v = src + c * K;
            for (long k2 = 0; k2 < K2; k2++) {
                d[k2 * 2 * PW] = bf16_of(v[2 * k2]);
                d[k2 * 2 * PW + 1] = 2 * k2 + 1 < K ? bf16_of(v[2 * k2 + 1]) : 0;
            }
        }
        return;
    }
    for (long k2 = 0; k2 < K2; k2++) {
        const float *v0 = src + 2 * k2 * n, *v1 = v0 + n;
        int odd = 2 * k2 + 1 < K;
        for (long c = 0; c < n;) {  /* a panel's run of columns at a time */
            long col = n0 + c, cc = col % PW, m = PW - cc < n - c ? PW - cc : n - c;
            bf16_t *d = dst + (((col / PW) * K2 + k2) * PW + cc) * 2;
            for (long i = 0; i < m; i++) {
                d[2 * i] = bf16_of(v0[c + i]);
                d[2 * i + 1] = odd ? bf16_of(v1[c + i]) : 0;
            }
            c += m;
        }
    }
}

#ifdef RNNKIT_HAVE_AMX
/* ---- The LSTM split by units (AMX) ---------------------------------------------------------
 * Split by rows (lstm_seq_forward_bf16 below), each thread multiplies its rows by the whole
 * weight every step: at H = 512 that is 2.25 MB of bfloat16, more than a core's L2, so each
 * step streams it from L3 and the tiles wait on memory. Here each thread owns a range of units
 * instead (whole tiles of 16, the same range of each gate block): its columns of the weight
 * (half of it on two threads) stay in its L2 from step to step, and it runs the cell of its
 * units for every row. A step's h (forward) or dA (backward) is then made by every thread, so
 * the threads meet once per step (a barrier) before the next product reads it. */

/* Whether the LSTM runs split by units: AMX on, a team to split over, whole tiles of units
 * for every thread; forward, also the pairs of x and of h in whole tiles (I, H multiples of
 * 32; the backward's rows, dA, are 4H wide). */
static int lstm_units_split(long H, long I, int forward) {
    long team = rnnkit_threads();
    return amx_on && team > 1 && H % 16 == 0 && H / 16 >= team &&
           (!forward || (I % 32 == 0 && H % 32 == 0));
}

/* The calling thread's share [lo, hi) of n tiles. */
static void my_tiles(long n, long *lo, long *hi) {
    *lo = n * MY_THREAD / TEAM;
    *hi = n * (MY_THREAD + 1) / TEAM;
}

/* lstm_seq_forward_bf16 (same arguments and results; H, I multiples of 32), split by
 * units: per step each thread multiplies every row by its columns, runs its units' cell, and
 * waits for the others' h before the next step. */
static AMX_TARGET int lstm_forward_units(const bf16_t *X, const bf16_t *wx, const float *bias,
                                         const bf16_t *wh, float *HH, bf16_t *HB, float *CC,
                                         float *G, float *TC, const int64_t *sizes,
                                         const int64_t *offs, long T, long B, long H, long I) {
    long N4 = 4 * H, np = (N4 + PW - 1) / PW, ld = np * PW, ht = H / 16;
    int failed = 0;
    PRAGMA(omp parallel)
    {
        Work ws = {NULL, NULL, NULL, NULL};
        int ok = work_get(&ws, (size_t)(B * ld), B);
        if (!ok) REPORT(failed);
        BARRIER
        if (!failed) {
            float *scr = ws.f;
            const bf16_t **a = (const bf16_t **)ws.a, **ax = (const bf16_t **)ws.a2;
            long lo, hi, rng[8];
            my_tiles(ht, &lo, &hi);
            long u0 = 16 * lo, nu = 16 * (hi - lo);
            for (int g = 0; g < 4; g++) {
                rng[2 * g] = g * ht + lo;
                rng[2 * g + 1] = g * ht + hi;
            }
            for (long t = 0; t < T; t++) {
                long b = sizes[t], s = offs[t], p = t ? B + offs[t - 1] : 0, q = B + s;
                for (long i = 0; i < b && nu; i++) {
                    ax[i] = X + (s + i) * I;
                    a[i] = HB + (p + i) * H;
                }
                if (nu) {
                    AmxOperand op[2] = {{ax, wx, I / 2}, {a, wh, H / 2}};
                    rows_mm_amx(op, 2, b, np, scr, 0, bias, rng, 4);
                }
                for (long i = 0; i < b && nu; i++) {  /* gates straight into G's row */
                    long o = s + i;
                    float *h = HH + (q + i) * H + u0, *gr = G + o * N4 + u0;
                    fwd_row_at(scr + i * ld + u0, H, gr, gr + H, gr + 2 * H, gr + 3 * H,
                               CC + (p + i) * H + u0, CC + (q + i) * H + u0, TC + o * H + u0, h,
                               nu);
                    bf16_row(HB + (q + i) * H + u0, h, nu, nu);
                }
                BARRIER  /* every unit's h of step t is out before step t + 1 reads it */
            }
        }
        if (ok) free(ws.f);
    }
    return failed;
}

/* lstm_seq_backward_bf16 (same arguments and results; H % 16 == 0), split by units: per step
 * each thread forms dA of its units for every row (and their bias sums, dA^T rows), then,
 * once every thread's dA is out, multiplies it by its columns of [W_hh | W_ih]: dh_prev of its
 * units (what its cell reads next) and its share of dx. dA alternates between two buffers, so
 * a step's dA is never overwritten while another thread still multiplies it. */
static AMX_TARGET int lstm_backward_units(const float *G, const float *CC, const float *TC,
                                          const float *dY, const bf16_t *w, float *run_h,
                                          float *run_c, bf16_t *dAT, float *dX, float *db,
                                          long ndb, const int64_t *sizes, const int64_t *offs,
                                          long T, long B, long H, long I) {
    long N4 = 4 * H, np = (H + I + PW - 1) / PW, ld = np * PW, N = offs[T - 1] + sizes[T - 1];
    long ht = H / 16, nt = ld / 16;
    /* dA rows lda apart, 64 bytes past 4H: rows 4H = 2^k pairs apart would fall in the same
     * L1 sets and a tile load of 16 of them would evict itself */
    long lda = N4 + 32;
    bf16_t *shared = malloc((size_t)(2 * B * lda) * sizeof(bf16_t));
    if (!shared) return 1;
    int failed = 0;
    (void)ndb;  /* read by OpenMP alone: one row of sums per thread */
    PRAGMA(omp parallel num_threads(ndb))
    {
        float *my = db + MY_THREAD * N4;
        Work ws = {NULL, NULL, NULL, NULL};
        int ok = work_get(&ws, (size_t)(B * ld + B * N4), B);
        if (!ok) REPORT(failed);
        BARRIER
        if (!failed) {
            float *scr = ws.f, *dA = scr + B * ld;  /* dA of the thread's units, rows 4 nu */
            const bf16_t **a = (const bf16_t **)ws.a;
            long *rows = ws.rows, lo, hi, xlo, xhi;
            my_tiles(ht, &lo, &hi);
            my_tiles(nt - ht, &xlo, &xhi);  /* and a share of dx's columns */
            long u0 = 16 * lo, nu = 16 * (hi - lo), rng[4] = {lo, hi, ht + xlo, ht + xhi};
            long x0 = 16 * xlo < I ? 16 * xlo : I, x1 = 16 * xhi < I ? 16 * xhi : I;
            for (long i = 0; i < B; i++) rows[i] = i;
            for (long t = T - 1; t >= 0; t--) {
                long b = sizes[t], s = offs[t], p = t ? B + offs[t - 1] : 0;
                bf16_t *dAb = shared + (t % 2) * B * lda;
                for (long i = 0; i < b && nu; i++) {
                    long o = s + i;
                    const float *g = G + o * N4;
                    float *d = dA + i * 4 * nu;
                    bwd_row_at(g + u0, g + H + u0, g + 2 * H + u0, g + 3 * H + u0,
                               CC + (p + i) * H + u0, TC + o * H + u0, run_h + i * H + u0,
                               dY + o * H + u0, run_c + i * H + u0, d, d + nu, d + 2 * nu,
                               d + 3 * nu, my + u0, H, nu);
                    for (int k = 0; k < 4; k++)
                        bf16_row(dAb + i * lda + k * H + u0, d + k * nu, nu, nu);
                }
                for (int k = 0; k < 4 && nu; k++)
                    put_t_bf16(dAT + (k * H + u0) * N, N, s, rows, b, dA + k * nu, 4 * nu, nu);
                BARRIER  /* every unit's dA of step t is out before it is multiplied */
                for (long i = 0; i < b; i++) a[i] = dAb + i * lda;
                rows_mm_amx(&(AmxOperand){a, w, N4 / 2}, 1, b, np, scr, 1, NULL, rng, 2);
                for (long i = 0; i < b; i++) {
                    memcpy(run_h + i * H + u0, scr + i * ld + u0, (size_t)nu * sizeof(float));
                    if (x1 > x0)
                        memcpy(dX + (s + i) * I + x0, scr + i * ld + H + x0,
                               (size_t)(x1 - x0) * sizeof(float));
                }
            }
        }
        if (ok) free(ws.f);
    }
    free(shared);
    return failed;
}
#endif /* RNNKIT_HAVE_AMX */

/* lstm_seq_forward in bfloat16: X (N, I2) bfloat16 (I2 = I rounded up to even, zero padded);
 * wx, wh: W_ih^T, W_hh^T packed by pack_bf16 ((np, I2 / 2, 2 PW), (np, H2 / 2, 2 PW), H2 = H
 * rounded up to even); bias (4H) float. HH, CC (B + N, H) float hold h0, c0 then every step's
 * h, c; HB (B + N, H2) bfloat16 holds bfloat16(h0) (zero padded) and gets every step's
 * bfloat16(h), the rows the next step multiplies (and the weight gradient's operand). Writes
 * gates G (N, 4H) and TC (N, H), float. Returns 0, 1 (out of memory) or 2 (not built). */
#ifdef RNNKIT_HAVE_BF16
BF16_TARGET
#endif
int lstm_seq_forward_bf16(const bf16_t *X, const bf16_t *wx, const float *bias,
                          const bf16_t *wh, float *HH, bf16_t *HB, float *CC, float *G,
                          float *TC, const int64_t *sizes, const int64_t *offs, long T, long B,
                          long H, long I) {
#ifdef RNNKIT_HAVE_BF16
#ifdef RNNKIT_HAVE_AMX
    if (lstm_units_split(H, I, 1))
        return lstm_forward_units(X, wx, bias, wh, HH, HB, CC, G, TC, sizes, offs, T, B, H, I);
#endif
    long N4 = 4 * H, np = (N4 + PW - 1) / PW, ld = np * PW, I2 = (I + 1) / 2 * 2;
    long H2 = (H + 1) / 2 * 2;
    int failed = 0;
    PRAGMA(omp parallel if (B > MR))
    {
        Work ws;
        if (!work_get(&ws, (size_t)(B * ld + N4), B)) {
            REPORT(failed);
        } else {
            float *scr = ws.f, *gt = scr + B * ld;  /* gt: a row's gates */
            const bf16_t **a = (const bf16_t **)ws.a, **ax = (const bf16_t **)ws.a2;
            long *rows = ws.rows;
            for (long t = 0; t < T; t++) {
                long b = sizes[t], s = offs[t], p = t ? B + offs[t - 1] : 0, q = B + s;
                long n = my_rows(b, B, rows);
                for (long i = 0; i < n; i++) {
                    ax[i] = X + (s + rows[i]) * I2;
                    a[i] = HB + (p + rows[i]) * H2;
                    memcpy(scr + i * ld, bias, (size_t)N4 * sizeof(float));
                }
                rows_mm2_bf16(ax, wx, I2 / 2, a, wh, H2 / 2, n, np, scr, 0);
                for (long i = 0; i < n; i++) {
                    long r = rows[i];
                    fwd_row(scr + i * ld, gt, gt + H, gt + 2 * H, gt + 3 * H, CC + (p + r) * H,
                            CC + (q + r) * H, TC + (s + r) * H, HH + (q + r) * H, H);
                    bf16_row(HB + (q + r) * H2, HH + (q + r) * H, H, H2);
                    put_row(G + (s + r) * N4, gt, N4);
                }
            }
            stores_done();
            free(ws.f);
        }
    }
    return failed;
#else
    (void)X; (void)wx; (void)bias; (void)wh; (void)HH; (void)HB; (void)CC; (void)G; (void)TC;
    (void)sizes; (void)offs; (void)T; (void)B; (void)H; (void)I;
    return 2;
#endif
}

/* lstm_seq_backward in bfloat16: per step and row the gate pre-activations' gradient dA (4H,
 * float) is formed as in lstm.c, rounded to bfloat16 and multiplied by w = [W_hh | W_ih]
 * (4H, H + I) packed by pack_bf16 ((np, 2H, 2 PW)): [dh_prev | dx] in float32. Writes
 * bfloat16(dA) transposed, dAT (4H, N) bfloat16 (the weight gradients' operand), dX (N, I)
 * float, and adds dA's column sums (float) to db (ndb rows of 4H, one per thread). */
#ifdef RNNKIT_HAVE_BF16
BF16_TARGET
#endif
int lstm_seq_backward_bf16(const float *G, const float *CC, const float *TC, const float *dY,
                           const bf16_t *w, float *run_h, float *run_c, bf16_t *dAT,
                           float *dX, float *db, long ndb, const int64_t *sizes,
                           const int64_t *offs, long T, long B, long H, long I) {
#ifdef RNNKIT_HAVE_BF16
#ifdef RNNKIT_HAVE_AMX
    if (lstm_units_split(H, I, 0) && ndb > 1)
        return lstm_backward_units(G, CC, TC, dY, w, run_h, run_c, dAT, dX, db, ndb, sizes,
                                   offs, T, B, H, I);
#endif
    long N4 = 4 * H, np = (H + I + PW - 1) / PW, ld = np * PW, N = offs[T - 1] + sizes[T - 1];
    int failed = 0;
    (void)ndb;  /* read by OpenMP alone: one row of sums per thread */
    PRAGMA(omp parallel num_threads(ndb) if (B > MR && ndb > 1))
    {
        float *my = db + MY_THREAD * N4;
        Work ws;
        /* floats: the product's rows, dA rows, then dA rows in bfloat16 (half a float each) */
        if (!work_get(&ws, (size_t)(B * ld + B * N4 + B * N4 / 2 + 16), B)) {
            REPORT(failed);
        } else {
            float *scr = ws.f, *dA = scr + B * ld;
            bf16_t *dAb = (bf16_t *)(dA + B * N4);
            const bf16_t **a = (const bf16_t **)ws.a;
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
                    bf16_row(dAb + i * N4, d, N4, N4);
                    a[i] = dAb + i * N4;
                }
                put_t_bf16(dAT, N, s, rows, n, dA, N4, N4);
                rows_mm_bf16(a, n, w, N4 / 2, np, scr, 1);
                put_run(run_h, rows, n, H, scr, ld, NULL);
                for (long i = 0; i < n && I; i++)
                    memcpy(dX + (s + rows[i]) * I, scr + i * ld + H, (size_t)I * sizeof(float));
            }
            free(ws.f);
        }
    }
    return failed;
#else
    (void)G; (void)CC; (void)TC; (void)dY; (void)w; (void)run_h; (void)run_c; (void)dAT;
    (void)dX; (void)db; (void)ndb; (void)sizes; (void)offs; (void)T; (void)B; (void)H; (void)I;
    return 2;
#endif
}

/* Elman RNN (rnn.c) in bfloat16: per step and row a = bias + x W_ih^T + h_prev W_hh^T (X
 * (N, I2) bfloat16; wx, wh: W_ih^T, W_hh^T packed by pack_bf16; bias (H) float), h = tanh(a),
 * or max(a, 0) with relu. HH (B + N, H) float and HB (B + N, H2) bfloat16 hold h0 then every
 * step's h; writes a to A (N, H), float. Returns 0, 1 (out of memory) or 2 (not built). */
#ifdef RNNKIT_HAVE_BF16
BF16_TARGET
#endif
int rnn_seq_forward_bf16(const bf16_t *X, const bf16_t *wx, const float *bias,
                         const bf16_t *wh, float *HH, bf16_t *HB, float *A,
                         const int64_t *sizes, const int64_t *offs, long T, long B, long H,
                         long I, int relu) {
#ifdef RNNKIT_HAVE_BF16
    long np = (H + PW - 1) / PW, ld = np * PW, I2 = (I + 1) / 2 * 2, H2 = (H + 1) / 2 * 2;
    int failed = 0;
    PRAGMA(omp parallel if (B > MR))
    {
        Work ws;
        if (!work_get(&ws, (size_t)(B * ld), B)) {
            REPORT(failed);
        } else {
            float *scr = ws.f;
            const bf16_t **a = (const bf16_t **)ws.a, **ax = (const bf16_t **)ws.a2;
            long *rows = ws.rows;
            for (long t = 0; t < T; t++) {
                long b = sizes[t], s = offs[t], p = t ? B + offs[t - 1] : 0, q = B + s;
                long n = my_rows(b, B, rows);
                for (long i = 0; i < n; i++) {
                    ax[i] = X + (s + rows[i]) * I2;
                    a[i] = HB + (p + rows[i]) * H2;
                    memcpy(scr + i * ld, bias, (size_t)H * sizeof(float));
                }
                rows_mm2_bf16(ax, wx, I2 / 2, a, wh, H2 / 2, n, np, scr, 0);
                for (long i = 0; i < n; i++) {
                    long r = rows[i];
                    rnn_fwd_row(scr + i * ld, HH + (q + r) * H, H, relu);
                    bf16_row(HB + (q + r) * H2, HH + (q + r) * H, H, H2);
                    put_row(A + (s + r) * H, scr + i * ld, H);
                }
            }
            stores_done();
            free(ws.f);
        }
    }
    return failed;
#else
    (void)X; (void)wx; (void)bias; (void)wh; (void)HH; (void)HB; (void)A; (void)sizes;
    (void)offs; (void)T; (void)B; (void)H; (void)I; (void)relu;
    return 2;
#endif
}

/* Its backward: per row dA = (run + dy) f'(a) (float), rounded to bfloat16 and multiplied by
 * w = [W_hh | W_ih] (H, H + I) packed by pack_bf16: [dh_prev | dx]. Writes bfloat16(dA)
 * transposed to DAT (H, N) bfloat16, dX (N, I) float, adds dA's column sums to db (ndb rows
 * of H, one per thread). */
#ifdef RNNKIT_HAVE_BF16
BF16_TARGET
#endif
int rnn_seq_backward_bf16(const float *HH, const float *dY, const bf16_t *w, float *run,
                          bf16_t *DAT, float *dX, float *db, long ndb, const int64_t *sizes,
                          const int64_t *offs, long T, long B, long H, long I, int relu) {
#ifdef RNNKIT_HAVE_BF16
    long np = (H + I + PW - 1) / PW, ld = np * PW, N = offs[T - 1] + sizes[T - 1];
    long H2 = (H + 1) / 2 * 2;
    int failed = 0;
    (void)ndb;  /* read by OpenMP alone: one row of sums per thread */
    PRAGMA(omp parallel num_threads(ndb) if (B > MR && ndb > 1))
    {
        float *my = db + MY_THREAD * H;
        Work ws;
        if (!work_get(&ws, (size_t)(B * ld + B * H + B * H2 / 2 + 16), B)) {
            REPORT(failed);
        } else {
            float *scr = ws.f, *dl = scr + B * ld;
            bf16_t *db16 = (bf16_t *)(dl + B * H);
            const bf16_t **a = (const bf16_t **)ws.a;
            long *rows = ws.rows;
            for (long t = T - 1; t >= 0; t--) {
                long b = sizes[t], s = offs[t];
                long n = my_rows(b, B, rows);
                for (long i = 0; i < n; i++) {
                    long r = rows[i], o = s + r;
                    float *d = dl + i * H;
                    rnn_bwd_row(HH + (B + o) * H, dY + o * H, run + r * H, d, H, relu);
                    for (long j = 0; j < H; j++) my[j] += d[j];
                    bf16_row(db16 + i * H2, d, H, H2);
                    a[i] = db16 + i * H2;
                }
                put_t_bf16(DAT, N, s, rows, n, dl, H, H);
                rows_mm_bf16(a, n, w, H2 / 2, np, scr, 1);
                put_run(run, rows, n, H, scr, ld, NULL);
                for (long i = 0; i < n && I; i++)
                    memcpy(dX + (s + rows[i]) * I, scr + i * ld + H, (size_t)I * sizeof(float));
            }
            free(ws.f);
        }
    }
    return failed;
#else
    (void)HH; (void)dY; (void)w; (void)run; (void)DAT; (void)dX; (void)db; (void)ndb;
    (void)sizes; (void)offs; (void)T; (void)B; (void)H; (void)I; (void)relu;
    return 2;
#endif
}

/* GRU, reset after the product (gru.c's gru_seq_forward), in bfloat16, its input projection
 * included: per step and row xp = b_ih + x W_ih^T and q = b_hh + h_prev W_hh^T (X (N, I2)
 * bfloat16; wx, wh: W_ih^T, W_hh^T packed by pack_bf16, each 3H columns; bi, bh (3H) float),
 * then the cell in float32. HH (B + N, H) float and HB (B + N, H2) bfloat16 hold h0 then every
 * step's h; writes q to R and the gates r, z, n to G (N, 3H), float. */
#ifdef RNNKIT_HAVE_BF16
BF16_TARGET
#endif
int gru_seq_forward_bf16(const bf16_t *X, const bf16_t *wx, const float *bi, const bf16_t *wh,
                         const float *bh, float *HH, bf16_t *HB, float *G, float *R,
                         const int64_t *sizes, const int64_t *offs, long T, long B, long H,
                         long I) {
#ifdef RNNKIT_HAVE_BF16
    long N3 = 3 * H, np = (N3 + PW - 1) / PW, ld = np * PW, I2 = (I + 1) / 2 * 2;
    long H2 = (H + 1) / 2 * 2;
    int failed = 0;
    PRAGMA(omp parallel if (B > MR))
    {
        Work ws;
        if (!work_get(&ws, (size_t)(2 * B * ld + N3), B)) {
            REPORT(failed);
        } else {
            float *sx = ws.f, *sq = sx + B * ld, *gt = sq + B * ld;  /* xp, q rows; gates */
            const bf16_t **a = (const bf16_t **)ws.a, **ax = (const bf16_t **)ws.a2;
            long *rows = ws.rows;
            for (long t = 0; t < T; t++) {
                long b = sizes[t], s = offs[t], p = t ? B + offs[t - 1] : 0, q = B + s;
                long n = my_rows(b, B, rows);
                for (long i = 0; i < n; i++) {
                    ax[i] = X + (s + rows[i]) * I2;
                    a[i] = HB + (p + rows[i]) * H2;
                    memcpy(sx + i * ld, bi, (size_t)N3 * sizeof(float));
                    memcpy(sq + i * ld, bh, (size_t)N3 * sizeof(float));
                }
                rows_mm_bf16(ax, n, wx, I2 / 2, np, sx, 0);
                rows_mm_bf16(a, n, wh, H2 / 2, np, sq, 0);
                for (long i = 0; i < n; i++) {
                    long r = rows[i], o = s + r;
                    const float *qq = sq + i * ld;
                    gru_fwd_row(sx + i * ld, qq, HH + (p + r) * H, gt, HH + (q + r) * H, H);
                    bf16_row(HB + (q + r) * H2, HH + (q + r) * H, H, H2);
                    put_row(G + o * N3, gt, N3);
                    put_row(R + o * N3, qq, N3);
                }
            }
            stores_done();
            free(ws.f);
        }
    }
    return failed;
#else
    (void)X; (void)wx; (void)bi; (void)wh; (void)bh; (void)HH; (void)HB; (void)G; (void)R;
    (void)sizes; (void)offs; (void)T; (void)B; (void)H; (void)I;
    return 2;
#endif
}

/* Its backward (gru_seq_backward's math): per row dxp (the input projection's gradient) and
 * dq (that of q), both 3H float, rounded to bfloat16; run = dq W_hh + dh z (wh = W_hh packed
 * by pack_bf16: (3H, H)) and dx = dxp W_ih (wx = W_ih packed: (3H, I); I = 0: no dx). Writes
 * bfloat16 dxp and dq transposed to DXT, DQT (3H, N) (the weight gradients' operands), dX
 * (N, I) float, and adds dq's column sums (b_hh) then dxp's (b_ih) to db (ndb rows of 6H). */
#ifdef RNNKIT_HAVE_BF16
BF16_TARGET
#endif
int gru_seq_backward_bf16(const float *G, const float *R, const float *HH, const float *dY,
                          const bf16_t *wh, const bf16_t *wx, float *run, bf16_t *DXT,
                          bf16_t *DQT, float *dX, float *db, long ndb, const int64_t *sizes,
                          const int64_t *offs, long T, long B, long H, long I) {
#ifdef RNNKIT_HAVE_BF16
    long N3 = 3 * H, nph = (H + PW - 1) / PW, npx = (I + PW - 1) / PW;
    long ldh = nph * PW, ldx = npx * PW, N = offs[T - 1] + sizes[T - 1], N3e = (N3 + 1) / 2 * 2;
    int failed = 0;
    (void)ndb;  /* read by OpenMP alone: one row of sums per thread */
    PRAGMA(omp parallel num_threads(ndb) if (B > MR && ndb > 1))
    {
        float *my = db + MY_THREAD * 2 * N3;
        Work ws;
        /* floats: run's product, dx's product, dq, dxp, dh z; then dq, dxp in bfloat16 */
        if (!work_get(&ws, (size_t)(B * ldh + B * ldx + 2 * B * N3 + B * H + B * N3e + 16), B)) {
            REPORT(failed);
        } else {
            float *sh = ws.f, *sx = sh + B * ldh, *dq = sx + B * ldx, *dxp = dq + B * N3;
            float *dhz = dxp + B * N3;
            bf16_t *dqb = (bf16_t *)(dhz + B * H), *dxb = dqb + B * N3e;  /* rows N3e apart */
            const bf16_t **a = (const bf16_t **)ws.a, **ax = (const bf16_t **)ws.a2;
            long *rows = ws.rows;
            for (long t = T - 1; t >= 0; t--) {
                long b = sizes[t], s = offs[t], p = t ? B + offs[t - 1] : 0;
                long n = my_rows(b, B, rows);
                for (long i = 0; i < n; i++) {
                    long r = rows[i], o = s + r;
                    float *dxr = dxp + i * N3;
                    gru_bwd_row(G + o * N3, R + o * N3, HH + (p + r) * H, dY + o * H,
                                run + r * H, dxr, dq + i * N3, my, dhz + i * H, H);
                    for (long j = 0; j < N3; j++) my[N3 + j] += dxr[j];
                    bf16_row(dqb + i * N3e, dq + i * N3, N3, N3e);
                    bf16_row(dxb + i * N3e, dxr, N3, N3e);
                    a[i] = dqb + i * N3e;
                    ax[i] = dxb + i * N3e;
                }
                put_t_bf16(DQT, N, s, rows, n, dq, N3, N3);
                put_t_bf16(DXT, N, s, rows, n, dxp, N3, N3);
                rows_mm_bf16(a, n, wh, N3e / 2, nph, sh, 1);
                put_run(run, rows, n, H, sh, ldh, dhz);
                if (I) {
                    rows_mm_bf16(ax, n, wx, N3e / 2, npx, sx, 1);
                    for (long i = 0; i < n; i++)
                        memcpy(dX + (s + rows[i]) * I, sx + i * ldx, (size_t)I * sizeof(float));
                }
            }
            free(ws.f);
        }
    }
    return failed;
#else
    (void)G; (void)R; (void)HH; (void)dY; (void)wh; (void)wx; (void)run; (void)DXT; (void)DQT;
    (void)dX; (void)db; (void)ndb; (void)sizes; (void)offs; (void)T; (void)B; (void)H; (void)I;
    return 2;
#endif
}
