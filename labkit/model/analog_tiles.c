/* Fused tile kernels of the analog layers (labkit/model/tile_physics.py, tiles_native.py).
   The readout inlines labkit/model/equations.py (droop_charge, read_times);
   tests/test_analog.py holds this kernel to that torch definition.

   One row tile has R input rows (pulses x in [0, 1], samples contiguous) and N2 columns
   (the plus columns of the outputs, then the minus columns). Forward, per column c and
   sample j:

       z   = sum_i I0[i][c] x[i][j]                      removed charge, no droop (fC)
       kt  = sum_{i: x > 0} k[i][c]                      crosstalk of the falling edges (fC)
       sx  = sum_i x[i][j]                               (edge-order term)
       m1  = 1 - A e kt - B e kbar sx                    (edge order on, else 1)
       w   = 1 + e z m1,  q = ln(w) / e + kt             (droop on, else q = z + kt)
       cnt = clip(floor(t0 - g q + noise), 0, cmax)      (floor with quantization on; noise
                                                          rms: a floor and a part ~ g q)
       y[c mod N2/2][j] += +-(t0 - cnt) / g              (plus minus minus, over row tiles)

   and dq/dz = m1 / w is kept for the backward pass. Backward: gz = (dq/dz) (+-gy),
   gx = I0 gz, gI0 = gz x^T. The products run on blocks of BS samples held in L1, so no
   (tiles, columns, samples) product is ever written to memory; the readout loop is plain
   C that the compiler vectorizes (logf from the vector math library with -ffast-math).
   Readout noise: each block of a column reads a window of a bank of standard normal
   values (small enough to stay in the CPU's L2 cache) at an offset hashed from a seed,
   the tile, the column and the block (so it does not depend on how the samples are
   split across threads).
   Layouts (all float32, contiguous): x (RT, R, S); I0, k (RT, R, N2); e, t0, g, kbar
   (RT, N2); dq/dz (RT, N2, S); y and gy (N2/2, S); bank (nbank >= BS). */

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h> /* (the non-temporal stores) */
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ln_poly.h" /* ln_pos_f32: the droop's log, inline */

/* Vector width and register blocking follow the compile target (-march=native): 16
   floats and two vectors of samples per register block with AVX-512 (32 vector
   registers), 8 floats and one vector with AVX/AVX2 and 4 with SSE (16 registers). A
   64-byte vector type on a 256-bit machine is split by the compiler into register
   pairs that no longer fit the register file (spills: 10x slower on AVX2). */
#if defined(__AVX512F__)
#define VL 16                /* floats per vector */
#define UNROLL 2             /* vectors of samples per register block */
#define GK 4                 /* columns per register block of the weight gradient */
#elif defined(__AVX__)
#define VL 8
#define UNROLL 1
#define GK 2
#else
#define VL 4
#define UNROLL 1
#define GK 2
#endif
#define BS 128               /* samples per block */
#define NV (BS / VL)         /* vectors per block */
#define CB 8                 /* columns per register block */
#define R_MAX 64             /* rows per tile */

typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef int vi __attribute__((vector_size(VL * sizeof(int))));

/* dq/dz (in (0, 1.1] on any chip: 1 / (1 + droop) times a crosstalk factor near 1) is
   kept for the backward pass as 16-bit fixed point, 2^-15 steps (a relative error below
   1e-4 on a gradient factor; half the memory traffic of float). */
typedef unsigned short mtype;
#define M_ONE 32768.0f

static float hsum(vf v)
{
    float s = 0.0f;
    for (int l = 0; l < VL; l++) s += v[l];
    return s;
}

/* Where the tile inputs come from: rows of x (RT, R, S) (geo NULL), or convolution
   patches read in place from the input map x (B, C, H, W), row k = (channel, ki, kj) as
   F.unfold orders them, sample s = (b, ho, wo), with geo = {kh, kw, sh, sw, ph, pw, dh,
   dw, Ho, Wo, B, C, H, W}: the patches are never written out. Rows from K on are zero
   (the padding of the last row tile). For patches, prow holds each row's channel,
   kernel row ki, column offset off = kj dw - pw and the output columns [lo, hi) inside
   the map; runs, the current block's samples cut along output rows (samples [j, j +
   len) are columns [wo, wo + len) of output row ho of image b). Both are set up once
   (inputs_open, block_runs), so no division is left in the copies. */
typedef struct {
    long ch, ki, off, lo, hi;
} prow_t;

typedef struct {
    long b, ho, wo, len, j;
} run_t;

typedef struct {
    const float *x;
    const long *geo;
    long R, S, K, nruns;
    prow_t *prow;
    run_t runs[BS];
} inputs_t;

static long patch_row(const long *geo, long W, long k, long *ch, long *off, long *lo, long *hi);

/* Returns 0, or 2 if out of memory; inputs_close frees. */
static int inputs_open(inputs_t *in, const float *x, const long *geo, long R, long S, long K)
{
    in->x = x, in->geo = geo, in->R = R, in->S = S, in->K = K, in->nruns = 0, in->prow = NULL;
    if (!geo) return 0;
    in->prow = malloc(sizeof(prow_t) * (K > 0 ? K : 1));
    if (!in->prow) return 2;
    for (long k = 0; k < K; k++) {
        prow_t *p = in->prow + k;
        p->ki = patch_row(geo, geo[13], k, &p->ch, &p->off, &p->lo, &p->hi);
    }
    return 0;
}

static void inputs_close(inputs_t *in) { free(in->prow); }

/* The runs of the block of samples [s0, s0 + n) (patches only). */
static void block_runs(inputs_t *in, long s0, long n)
{
    if (!in->geo) return;
    long Ho = in->geo[8], Wo = in->geo[9], b = s0 / (Ho * Wo), ho = s0 / Wo % Ho, wo = s0 % Wo, t = 0;
    for (long j = 0; j < n; t++) {
        long len = Wo - wo < n - j ? Wo - wo : n - j;
        in->runs[t] = (run_t){b, ho, wo, len, j};
        j += len;
        wo = 0;
        if (++ho == Ho) ho = 0, b++;
    }
    in->nruns = t;
}

/* Patch row k over the current block: into blk (gmap NULL), or blk added into the map
   gmap (the adjoint: the input gradient). Zero outside the map. */
static void patch_io(const inputs_t *in, long k, float *blk, float *gmap)
{
    const long *geo = in->geo;
    const long sh = geo[2], sw = geo[3], ph = geo[4], dh = geo[6], C = geo[11], H = geo[12], W = geo[13];
    const prow_t p = in->prow[k];
    const float *map = in->x;
    for (long t = 0; t < in->nruns; t++) {
        const run_t u = in->runs[t];
        long end = u.wo + u.len, h = u.ho * sh - ph + p.ki * dh;
        long a = p.lo > u.wo ? p.lo : u.wo, z = p.hi < end ? p.hi : end;
        if (h < 0 || h >= H) a = z = u.wo;
        a = a < end ? a : end;
        z = z > a ? z : a;
        const long base = ((u.b * C + p.ch) * H + h) * W + p.off;
        float *o = blk + u.j - u.wo;  /* o[w]: output column w of this run */
        if (gmap) {
            if (sw == 1) for (long w = a; w < z; w++) gmap[base + w] += o[w];
            else for (long w = a; w < z; w++) gmap[base + w * sw] += o[w];
        } else {
            for (long w = u.wo; w < a; w++) o[w] = 0.0f;
            if (sw == 1) memcpy(o + a, map + base + a, sizeof(float) * (z - a));
            else for (long w = a; w < z; w++) o[w] = map[base + w * sw];
            for (long w = z; w < end; w++) o[w] = 0.0f;
        }
    }
}

/* Rows [0, R) of tile r over the current block (n samples, block_runs set) into a
   zero-padded block. */
static void load_block(vf xb[][NV], const inputs_t *in, long r, long s0, long n)
{
    for (long i = 0; i < in->R; i++) {
        float *dst = (float *)xb[i];
        long k = r * in->R + i;
        if (k >= in->K) memset(dst, 0, sizeof(float) * n);
        else if (in->geo) patch_io(in, k, dst, NULL);
        else memcpy(dst, in->x + k * in->S + s0, sizeof(float) * n);
        memset(dst + n, 0, sizeof(float) * (BS - n));
    }
}

/* Rows of tile r that hold inputs (the rest are zero). */
static long used_rows(const inputs_t *in, long r)
{
    long left = in->K - r * in->R;
    return left < in->R ? (left > 0 ? left : 0) : in->R;
}

/* Columns [c0, c0 + nc) of a (RT, R, N2) coefficient array, tile r, zero-padded to CB. */
static void load_coef(float out[][CB], const float *a, long r, long R, long N2, long c0, long nc)
{
    for (long i = 0; i < R; i++)
        for (long cc = 0; cc < CB; cc++) out[i][cc] = cc < nc ? a[(r * R + i) * N2 + c0 + cc] : 0.0f;
}

/* zb[cc] = sum_i ac[i][cc] xb[i] over the block, UNROLL vectors of samples at a time
   (CB * UNROLL accumulators) */
static void products(long R, vf xb[][NV], float ac[][CB], vf zb[CB][NV])
{
    for (long v = 0; v < NV; v += UNROLL) {
        vf acc[UNROLL][CB];
        memset(acc, 0, sizeof acc);
        for (long i = 0; i < R; i++)
            for (int u = 0; u < UNROLL; u++) {
                vf xv = xb[i][v + u];
                for (int cc = 0; cc < CB; cc++) acc[u][cc] += ac[i][cc] * xv;
            }
        for (int cc = 0; cc < CB; cc++)
            for (int u = 0; u < UNROLL; u++) zb[cc][v + u] = acc[u][cc];
    }
}

/* One column's readout constants (see the top): e' (1/fC), g (counts/fC), t0 (counts),
   the edge-order factors ae = A e', be = B e' kbar, the noise rms floor sig and its
   squares nc2, nr2 (counts), the TDC top cmax, and ys = +-1/g (plus or minus column). */
typedef struct {
    float e, inv_e, g, t0, ae, be, cmax, sig, nc2, nr2, ys;
} column_t;

/* A copy out to memory of what only the backward pass reads again (dq/dz, the effective
   widths): where the destination is aligned, the stores bypass the cache (non-temporal:
   no read of each line before it is written; measured 13 % of LeNet-5's second layer's
   forward on AVX-512). */
static inline void copy_out(void *restrict dst, const void *restrict src, size_t bytes)
{
#if defined(__AVX512F__)
    if (((unsigned long)dst & 63) == 0 && bytes % 64 == 0) {
        for (size_t b = 0; b < bytes; b += 64)
            _mm512_stream_si512((void *)((char *)dst + b), _mm512_load_si512((const void *)((const char *)src + b)));
        return;
    }
#elif defined(__AVX__)
    if (((unsigned long)dst & 31) == 0 && bytes % 32 == 0) {
        for (size_t b = 0; b < bytes; b += 32)
            _mm256_stream_si256((__m256i *)((char *)dst + b), _mm256_load_si256((const __m256i *)((const char *)src + b)));
        return;
    }
#endif
    memcpy(dst, src, bytes);
}

/* The non-temporal stores of copy_out done before anyone else reads them (they are weakly
   ordered): once at the end of a kernel call. */
static inline void copy_out_done(void)
{
#if defined(__AVX__)
    _mm_sfence();
#endif
}

/* The droop's log, ln(1 + u) for u = e' z m1 (n values): the series u - u^2/2 +
   u^3 P(u) of ln_poly.h on u itself (no range reduction, no rounding of 1 + u) when
   every u is in [sqrt(1/2) - 1, sqrt(2) - 1) (a droop below 40 %: always, on a chip),
   else ln_pos_f32(1 + u). */
static inline __attribute__((always_inline)) void ln1p_block(long n, const float *restrict u, float *restrict out)
{
    float lo = 0.0f, hi = 0.0f;
    for (long j = 0; j < n; j++) {
        lo = fminf(lo, u[j]);
        hi = fmaxf(hi, u[j]);
    }
    if (lo >= -0.292893219f && hi < 0.414213562f)
        for (long j = 0; j < n; j++) out[j] = u[j] - 0.5f * u[j] * u[j] + u[j] * u[j] * u[j] * LN_POLY(u[j]);
    else
        for (long j = 0; j < n; j++) out[j] = ln_pos_f32(1.0f + u[j]);
}

/* The readout of one column over n samples of a block (see the top): adds its signed
   charge to y, stores dq/dz in m. The TDC: clip to [0, cmax], then truncate (floor and
   clip in either order give the same count for an integer cmax). Inlined with constant
   switches (read_column). */
static inline __attribute__((always_inline)) void readout(long n, const float *restrict z, const float *restrict kt,
                                                          const float *restrict sx, const float *restrict nz,
                                                          const column_t *p, float *restrict y,
                                                          mtype *restrict m, const int droop, const int quant,
                                                          const int rel)
{
    float ub[BS], lnw[BS];
    const float e = p->e, ae = p->ae, be = p->be, inv_e = p->inv_e, g = p->g, t0 = p->t0, cmax = p->cmax;
    const float nc2 = p->nc2, nr2 = p->nr2, sig = p->sig, ys = p->ys, yt = p->ys * p->t0;
    if (droop) {
        mtype mb[BS] __attribute__((aligned(64)));
        for (long j = 0; j < n; j++) {
            float m1 = 1.0f - ae * kt[j] - be * sx[j], u = e * z[j] * m1;
            mb[j] = (mtype)(fminf(fmaxf(m1 / (1.0f + u), 0.0f), 65535.0f / M_ONE) * M_ONE + 0.5f);
            ub[j] = u;
        }
        copy_out(m, mb, sizeof(mtype) * n);
        ln1p_block(n, ub, lnw);
    }
    for (long j = 0; j < n; j++) {
        float q = droop ? lnw[j] * inv_e + kt[j] : z[j] + kt[j];
        float gq = g * q;
        float cnt = t0 - gq + (rel ? sqrtf(nc2 + nr2 * gq * gq) : sig) * nz[j];
        cnt = fminf(fmaxf(cnt, 0.0f), cmax);
        if (quant) cnt = (float)(int)cnt;
        y[j] += yt - ys * cnt;
    }
}

/* readout with its switches as constants: flags 1 droop, 2 quantize, 4 noise relative */
static void read_column(int flags, long n, const float *z, const float *kt, const float *sx, const float *nz,
                        const column_t *p, float *y, mtype *m)
{
    switch (flags) {
    case 0: readout(n, z, kt, sx, nz, p, y, m, 0, 0, 0); break;
    case 1: readout(n, z, kt, sx, nz, p, y, m, 1, 0, 0); break;
    case 2: readout(n, z, kt, sx, nz, p, y, m, 0, 1, 0); break;
    case 3: readout(n, z, kt, sx, nz, p, y, m, 1, 1, 0); break;
    case 4: readout(n, z, kt, sx, nz, p, y, m, 0, 0, 1); break;
    case 5: readout(n, z, kt, sx, nz, p, y, m, 1, 0, 1); break;
    case 6: readout(n, z, kt, sx, nz, p, y, m, 0, 1, 1); break;
    default: readout(n, z, kt, sx, nz, p, y, m, 1, 1, 1); break;
    }
}

/* A window offset in [0, nbank - BS] from the seed and a position (splitmix64). */
static long bank_offset(unsigned long long seed, long r, long c, long s0, long nbank)
{
    unsigned long long h = seed ^ ((unsigned long long)r << 48) ^ ((unsigned long long)c << 24) ^ (unsigned long long)s0;
    h += 0x9E3779B97F4A7C15ull;
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
    h ^= h >> 31;
    return (long)(h % (unsigned long long)(nbank - BS + 1));
}

static void widths_tile(long R, long n, vf xb[][NV], const float *lr, float b, const float *cr, vf ov[][NV]);

/* Samples [sb, se) of S. flags: 1 droop, 2 quantize, 4 crosstalk, 8 edge order. Noise
   from bank (NULL: none), rms sqrt(noise_c^2 + (noise_r g q)^2) counts: a floor and a
   part proportional to the column's output. Inputs: x and geo as inputs_t says, K
   rows of the RT R holding inputs; with wloss (RT, R) the second-order effective widths
   of tiles_widths (wbeta (RT) or NULL, wcur (RT, R)) replace them, written to xe (RT,
   R, S) when not NULL (for the backward's weight gradient). Returns 0, 1 if R > R_MAX
   or the bank is shorter than a block, 2 if out of memory. */
int tiles_fwd(long RT, long R, long N2, long S, long K, const long *geo, long sb, long se, const float *x,
              const float *a, const float *k,
              const float *e, const float *t0, const float *g, const float *kbar, const float *bank, long nbank,
              unsigned long long seed, float noise_c, float noise_r, float edge_a, float edge_b, float cmax, int flags,
              const float *wloss, const float *wbeta, const float *wcur, float *xe, float *y, mtype *m)
{
    if (R > R_MAX || (bank && nbank < BS)) return 1;
    int droop = flags & 1, quant = flags & 2, xtalk = flags & 4, edge = (flags & 8) && xtalk && droop;
    float nc2 = noise_c * noise_c, nr2 = noise_r * noise_r;
    long half = N2 / 2;
    static const float zeros[BS];
    vf xb[R_MAX][NV], ov[R_MAX][NV], pb[R_MAX][NV], zb[CB][NV], kb[CB][NV], sxb[NV];
    float ac[R_MAX][CB], kc[R_MAX][CB];
    mtype scratch[BS];
    const vf one = (vf){0} + 1.0f, zero = {0};
    inputs_t in;
    if (inputs_open(&in, x, geo, R, S, K)) return 2;
    for (long c = 0; c < half; c++) memset(y + c * S + sb, 0, sizeof(float) * (se - sb));
    memset(kb, 0, sizeof kb);
    for (long s0 = sb; s0 < se; s0 += BS) {
        long n = se - s0 < BS ? se - s0 : BS, nv = (n + VL - 1) / VL;
        block_runs(&in, s0, n);
        for (long r = 0; r < RT; r++) {
            long Rt = used_rows(&in, r);
            vf (*xin)[NV] = xb;
            load_block(xb, &in, r, s0, n);
            if (wloss) {
                widths_tile(R, n, xb, wloss + r * R, wbeta ? wbeta[r] : 0.0f, wcur + r * R, ov);
                if (xe)
                    for (long i = 0; i < R; i++) copy_out(xe + (r * R + i) * S + s0, ov[i], sizeof(float) * n);
                xin = ov;
            }
            for (long v = 0; v < nv; v++) {
                vf s = zero;
                for (long i = 0; i < Rt; i++) {
                    s += xin[i][v];
                    pb[i][v] = (vf)((vi)one & (xin[i][v] > zero));
                }
                sxb[v] = s;
            }
            for (long c0 = 0; c0 < N2; c0 += CB) {
                long nc = N2 - c0 < CB ? N2 - c0 : CB;
                load_coef(ac, a, r, R, N2, c0, nc);
                if (xtalk) load_coef(kc, k, r, R, N2, c0, nc);
                products(Rt, xin, ac, zb);
                if (xtalk) products(Rt, pb, kc, kb);
                for (long cc = 0; cc < nc; cc++) {
                    long c = c0 + cc, pc = r * N2 + c;
                    float ec = e[pc];
                    column_t col = {ec, 1.0f / ec, g[pc], t0[pc], edge ? edge_a * ec : 0.0f,
                                    edge ? edge_b * ec * kbar[pc] : 0.0f, cmax, noise_c, nc2, nr2,
                                    (c < half ? 1.0f : -1.0f) / g[pc]};
                    const float *nz = bank ? bank + bank_offset(seed, r, c, s0, nbank) : zeros;
                    float *yp = y + (c < half ? c : c - half) * S + s0;
                    mtype *mp = m ? m + pc * S + s0 : scratch;
                    read_column(droop | quant | (bank && noise_r != 0.0f ? 4 : 0), n, (const float *)zb[cc],
                                (const float *)kb[cc], (const float *)sxb, nz, &col, yp, mp);
                }
            }
        }
    }
    copy_out_done();
    inputs_close(&in);
    return 0;
}

/* Effective pulse widths of the second-order terms (labkit/model/second_order.py,
   effective_inputs, and the edge rule of AnalogLayer._second_order), samples [sb, se) of
   x (RT, R, S) into xe (same layout). Per tile r: loss (RT, R) in units of T, beta (RT)
   1/nA (0: no source line), cur (RT, R) row currents nA. g = max(x - loss, 0) (0 stays
   0). With the source line the rows are ordered by (g, row), as a stable sort would;
   slot k (in that order) lasts d_k - d_{k-1} and carries s_k = s(beta A_k), A_k the
   current of the rows not before k, s the root of s = exp(-y s). Summed by parts,
   xe_i = s_i g_i + sum_{k before i} (s_k - s(beta (A_k - c_k))) g_k, since the slot after
   k carries A_k - c_k. No sort: one compare per pair of rows and sample, vectorized
   over the samples. A pulse left at xe = 0 with x >= loss / 2 gets 1e-6 (its falling
   edge still couples). Returns 0, or 1 if R > R_MAX. */

/* s(y) for |y| <= 0.1: the series of W(y) / y, sum_n (-(n + 1))^n y^n / (n + 1)!, to
   y^10 (remainder < 2e-8); elsewhere two Newton steps from 1 / (1 + y) (y >= -0.25). */
#define ROOT_SERIES_MAX 0.1f
static inline vf root_series(vf y)
{
    static const float a[11] = {1.0f, -1.0f, 1.5f, -2.66666667f, 5.20833333f, -10.8f, 23.3430556f, -52.0126984f,
                                118.625220f, -275.573192f, 649.780218f};
    vf s = (vf){0} + a[10];
    for (int k = 9; k >= 0; k--) s = s * y + a[k];
    return s;
}

static inline float root_newton(float y)
{
    y = fmaxf(y, -0.25f);
    float s = 1.0f / (1.0f + y);
    for (int it = 0; it < 2; it++) {
        float e = expf(-y * s);
        s = s - (s - e) / (1.0f + y * e);
    }
    return s;
}

/* A[l] = sum of cur over the rows not before l (l included), for one vector of samples */
static inline __attribute__((always_inline)) void slot_currents(long R, const vf *g, const float *cur, vf *A)
{
    const vf zero = {0};
#pragma GCC unroll 16
    for (long l = 0; l < R; l++) A[l] = zero + cur[l];
#pragma GCC unroll 16
    for (long l = 1; l < R; l++)
#pragma GCC unroll 16
        for (long m = 0; m < l; m++) {
            vi before = g[m] <= g[l];  /* m before l (ties: the lower row first) */
            A[m] += (vf)(before & (vi)(zero + cur[l]));
            A[l] += (vf)(~before & (vi)(zero + cur[m]));
        }
}

/* o[i] += sum_{k before i} wg[k], for one vector of samples */
static inline __attribute__((always_inline)) void slot_sums(long R, const vf *g, const vf *wg, vf *o)
{
#pragma GCC unroll 16
    for (long i = 1; i < R; i++)
#pragma GCC unroll 16
        for (long k = 0; k < i; k++) {
            vi before = g[k] <= g[i];
            o[i] += (vf)(before & (vi)wg[k]);
            o[k] += (vf)(~before & (vi)wg[i]);
        }
}

static void widths_block(long R, vf gv[][NV], const float *cur, float b, int series, vf ov[][NV])
{
    vf g[R_MAX], A[R_MAX], wg[R_MAX], o[R_MAX];
    for (long v = 0; v < NV; v++) {
        for (long l = 0; l < R; l++) g[l] = gv[l][v];
        if (R == 16) slot_currents(16, g, cur, A);
        else slot_currents(R, g, cur, A);
        for (long l = 0; l < R; l++) {
            vf y = b * A[l], y1 = y - b * cur[l], s, u;
            if (series) {
                s = root_series(y);
                u = root_series(y1);
            } else {
                for (int k = 0; k < VL; k++) {
                    s[k] = root_newton(y[k]);
                    u[k] = root_newton(y1[k]);
                }
            }
            o[l] = s * g[l];
            wg[l] = (s - u) * g[l];
        }
        if (R == 16) slot_sums(16, g, wg, o);
        else slot_sums(R, g, wg, o);
        for (long l = 0; l < R; l++) ov[l][v] = o[l];
    }
}

/* The effective widths of one tile over a block: xb (R rows of a block, n samples,
   zero-padded) to ov (the same layout), width loss lr (R) in units of T, source-line
   factor b (1/nA, 0: none), row currents cr (R) nA; the edge rule included. */
static void widths_tile(long R, long n, vf xb[][NV], const float *lr, float b, const float *cr, vf ov[][NV])
{
    vf gv[R_MAX][NV];
    float total = 0.0f, cl[R_MAX];
    long live[R_MAX], nl = 0;
    for (long i = 0; i < R; i++) {
        const float *xp = (const float *)xb[i];
        float li = lr[i], *gp = (float *)gv[i], top = 0.0f;
        for (long j = 0; j < BS; j++) gp[j] = xp[j] > 0.0f ? fmaxf(xp[j] - li, 0.0f) : 0.0f;
        for (long j = 0; j < BS; j++) top = fmaxf(top, gp[j]);
        if (top > 0.0f) live[nl++] = i;
    }
    if (b == 0.0f) {
        memcpy(ov, gv, sizeof(vf) * NV * R);
    } else {
        /* Rows with no pulse left in this block (zero padding of the last row tile,
           silent inputs) come before every other row and carry nothing: the pairs
           run over the rows that remain, moved to the front and back. */
        for (long k = 0; k < nl; k++) {
            if (live[k] != k) memcpy(gv[k], gv[live[k]], sizeof(vf) * NV);
            cl[k] = cr[live[k]];
            total += fabsf(cl[k]);
        }
        if (nl) widths_block(nl, gv, cl, b, fabsf(b) * total <= ROOT_SERIES_MAX, ov);
        for (long k = nl - 1; k >= 0; k--)
            if (live[k] != k) memcpy(ov[live[k]], ov[k], sizeof(vf) * NV);
        for (long i = 0, k = 0; i < R; i++) {
            if (k < nl && live[k] == i) k++;
            else memset(ov[i], 0, sizeof(vf) * NV);
        }
    }
    for (long i = 0; i < R; i++) {
        const float *xp = (const float *)xb[i];
        float *op = (float *)ov[i], li = lr[i], half = 0.5f * fmaxf(li, 1e-9f);
        for (long j = 0; j < n; j++) op[j] = op[j] <= 0.0f && li > 0.0f && xp[j] >= half ? 1e-6f : op[j];
        for (long j = n; j < BS; j++) op[j] = 0.0f;
    }
}

int tiles_widths(long RT, long R, long S, long sb, long se, const float *x, const float *loss, const float *beta,
                 const float *cur, float *xe)
{
    if (R > R_MAX) return 1;
    vf xb[R_MAX][NV], ov[R_MAX][NV];
    inputs_t in;
    inputs_open(&in, x, NULL, R, S, RT * R);
    for (long s0 = sb; s0 < se; s0 += BS) {
        long n = se - s0 < BS ? se - s0 : BS;
        for (long r = 0; r < RT; r++) {
            load_block(xb, &in, r, s0, n);
            widths_tile(R, n, xb, loss + r * R, beta ? beta[r] : 0.0f, cur + r * R, ov);
            for (long i = 0; i < R; i++) memcpy(xe + (r * R + i) * S + s0, ov[i], sizeof(float) * n);
        }
    }
    return 0;
}

/* gz[cc] = +-m gy of columns [c0, c0 + nc) of tile r over n samples (zero-padded) */
static void grad_block(vf gz[CB][NV], const mtype *m, const float *gy, long r, long N2, long S, long s0, long n,
                       long c0, long nc)
{
    long half = N2 / 2;
    memset(gz, 0, sizeof(vf) * CB * NV);
    for (long cc = 0; cc < nc; cc++) {
        long c = c0 + cc;
        const float *gp = gy + (c < half ? c : c - half) * S + s0;
        float sg = c < half ? 1.0f : -1.0f, *dst = (float *)gz[cc];
        if (m) {
            const mtype *mp = m + (r * N2 + c) * S + s0;
            for (long j = 0; j < n; j++) dst[j] = (sg / M_ONE) * (float)mp[j] * gp[j];
        } else {
            for (long j = 0; j < n; j++) dst[j] = sg * gp[j];
        }
    }
}

/* gxb[i] += sum_cc ac[i][cc] gz[cc], UNROLL vectors of samples at a time */
static void grad_x(long R, vf gxb[][NV], float ac[][CB], vf gz[CB][NV])
{
    for (long v = 0; v < NV; v += UNROLL) {
        vf g[UNROLL][CB];
        for (int cc = 0; cc < CB; cc++)
            for (int u = 0; u < UNROLL; u++) g[u][cc] = gz[cc][v + u];
        for (long i = 0; i < R; i++)
            for (int u = 0; u < UNROLL; u++) {
                vf a = gxb[i][v + u];
                for (int cc = 0; cc < CB; cc++) a += ac[i][cc] * g[u][cc];
                gxb[i][v + u] = a;
            }
    }
}

/* gav[i][c0 + cc] += gz[cc] xb[i] lane-wise (summed over the block's vectors), in 4 x GK
   register tiles; R is a multiple of 4 (the caller pads). */
static void grad_a(long R, long N2, vf *gav, vf xb[][NV], vf gz[CB][NV], long c0)
{
    for (long i = 0; i < R; i += 4)
        for (int cc = 0; cc < CB; cc += GK) {
            vf acc[4][GK];
            memset(acc, 0, sizeof acc);
            for (long v = 0; v < NV; v++) {
                vf x0 = xb[i][v], x1 = xb[i + 1][v], x2 = xb[i + 2][v], x3 = xb[i + 3][v];
                for (int k = 0; k < GK; k++) {
                    vf gv = gz[cc + k][v];
                    acc[0][k] += gv * x0;
                    acc[1][k] += gv * x1;
                    acc[2][k] += gv * x2;
                    acc[3][k] += gv * x3;
                }
            }
            for (int u = 0; u < 4; u++)
                for (int k = 0; k < GK; k++) gav[(i + u) * (N2 + CB) + c0 + cc + k] += acc[u][k];
        }
}

/* Samples [sb, se) of S. m: dq/dz (RT, N2, S) or NULL (no droop: 1). Inputs x, geo and
   K as for tiles_fwd. gx (samples [sb, se); with geo: added into the input map's
   gradient (B, C, H, W), which the caller zeroes, so threads take whole images) and ga
   (RT, R, N2) (the sum over those samples) are written when not NULL. xe: the effective
   widths (RT, R, S) the forward wrote, or NULL; the weight gradient reads them instead
   of the inputs (gx is the same: they pass straight through). Returns 0, 1 if R >
   R_MAX, 2 if out of memory. */
int tiles_bwd(long RT, long R, long N2, long S, long K, const long *geo, long sb, long se, const float *x,
              const float *xe, const float *a, const mtype *m, const float *gy, float *gx, float *ga)
{
    if (R > R_MAX) return 1;
    inputs_t in, rows;
    if (inputs_open(&in, x, geo, R, S, K)) return 2;
    inputs_open(&rows, xe, NULL, R, S, K);
    long R4 = (R + 3) / 4 * 4;
    vf xb[R_MAX][NV], gxb[R_MAX][NV], gz[CB][NV];
    float ac[R_MAX][CB];
    vf *gav = NULL;  /* (R4, N2 + CB) lane-wise sums of gz x over the samples of a tile */
    if (ga) {
        gav = aligned_alloc(64, sizeof(vf) * R4 * (N2 + CB));
        if (!gav) {
            inputs_close(&in);
            return 2;
        }
    }
    memset(xb, 0, sizeof xb);
    for (long r = 0; r < RT; r++) {
        if (ga) memset(gav, 0, sizeof(vf) * R4 * (N2 + CB));
        long Rt = used_rows(&in, r), Rt4 = (Rt + 3) / 4 * 4;
        for (long s0 = sb; s0 < se; s0 += BS) {
            long n = se - s0 < BS ? se - s0 : BS;
            block_runs(&in, s0, n);
            if (ga) load_block(xb, xe ? &rows : &in, r, s0, n);
            memset(gxb, 0, sizeof(vf) * R * NV);
            for (long c0 = 0; c0 < N2; c0 += CB) {
                long nc = N2 - c0 < CB ? N2 - c0 : CB;
                grad_block(gz, m, gy, r, N2, S, s0, n, c0, nc);
                if (gx) {
                    load_coef(ac, a, r, R, N2, c0, nc);
                    grad_x(Rt, gxb, ac, gz);
                }
                if (ga) grad_a(Rt4, N2, gav, xb, gz, c0);
            }
            if (gx && geo)
                for (long i = 0; i < Rt; i++) patch_io(&in, r * R + i, (float *)gxb[i], gx);
            else if (gx)
                for (long i = 0; i < R; i++) memcpy(gx + (r * R + i) * S + s0, gxb[i], sizeof(float) * n);
        }
        if (ga)
            for (long i = 0; i < R; i++)
                for (long c = 0; c < N2; c++) ga[(r * R + i) * N2 + c] = hsum(gav[i * (N2 + CB) + c]);
    }
    free(gav);
    inputs_close(&in);
    return 0;
}

/* A layer's pulse inputs from scaled activations v (n values, a / input_scale): clipped
   to [0, 1] and rounded to levels steps (half to even, as torch.round; levels a power of
   two, times its exact inverse as InputQuantize does, or 0: not rounded). Returns the
   least v (negative: the caller splits the inputs instead). */
float tiles_quantize(long n, const float *v, long levels, float *x)
{
    float lo = INFINITY, fl = (float)levels, inv = 1.0f / fl;
    for (long j = 0; j < n; j++) {
        float c = fminf(fmaxf(v[j], 0.0f), 1.0f);
        lo = fminf(lo, v[j]);
        x[j] = levels > 0 ? rintf(c * fl) * inv : c;
    }
    return lo;
}

/* Its gradient, straight through inside [0, 1] (InputQuantize): gv = g where 0 <= v <= 1. */
void tiles_quantize_bwd(long n, const float *g, const float *v, float *gv)
{
    for (long j = 0; j < n; j++) gv[j] = v[j] >= 0.0f && v[j] <= 1.0f ? g[j] : 0.0f;
}

/* A layer's outputs from the row-tile sums y (n, S), S = B HW: out = y scale + bias per
   output (bias NULL: none), then the ReLU when relu, laid out (B, n, HW) (a
   convolution's map; HW = 1: (B, n)). */
void tiles_epilogue(long n, long B, long HW, const float *y, const float *scale, const float *bias, int relu,
                    float *out)
{
    long S = B * HW;
    for (long b = 0; b < B; b++)
        for (long c = 0; c < n; c++) {
            const float *src = y + c * S + b * HW;
            float *dst = out + (b * n + c) * HW, sc = scale[c], bc = bias ? bias[c] : 0.0f;
            if (relu) for (long j = 0; j < HW; j++) dst[j] = fmaxf(src[j] * sc + bc, 0.0f);
            else for (long j = 0; j < HW; j++) dst[j] = src[j] * sc + bc;
        }
}

/* Its adjoint: gy (n, S) = g scale and gb (n) = the sum of g over the samples (gb NULL:
   not wanted), both where out > 0 when relu; g and out (B, n, HW). */
void tiles_epilogue_bwd(long n, long B, long HW, const float *g, const float *out, const float *scale, int relu,
                        float *gy, float *gb)
{
    long S = B * HW;
    if (gb) memset(gb, 0, sizeof(float) * n);
    for (long b = 0; b < B; b++)
        for (long c = 0; c < n; c++) {
            const float *gp = g + (b * n + c) * HW, *op = out + (b * n + c) * HW;
            float *dst = gy + c * S + b * HW, sc = scale[c], sum = 0.0f;
            for (long j = 0; j < HW; j++) {
                float v = relu && !(op[j] > 0.0f) ? 0.0f : gp[j];
                dst[j] = v * sc;
                sum += v;
            }
            if (gb) gb[c] += sum;
        }
}

/* Convolution patches, transposed: out (rows, B*Ho*Wo), row k = (channel, ki, kj) as
   F.unfold orders them, zero rows from C*kh*kw up to rows, zero padding around x
   (B, C, H, W). geo = {kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo}. */

/* Where patch row k reads: x + ((b C + ch) H + ho sh - ph + ki dh) W + off + wo sw for
   output columns wo in [lo, hi) (inside x; zero elsewhere). Returns the row's ki. */
static long patch_row(const long *geo, long W, long k, long *ch, long *off, long *lo, long *hi)
{
    long kh = geo[0], kw = geo[1], sw = geo[3], pw = geo[5], dw = geo[7], Wo = geo[9];
    long kj = k % kw;
    *ch = k / (kh * kw);
    *off = kj * dw - pw;
    *lo = *off >= 0 ? 0 : (-*off + sw - 1) / sw;
    *hi = (W - *off + sw - 1) / sw;
    *hi = *hi < Wo ? *hi : Wo;
    *hi = *hi > *lo ? *hi : *lo;
    return k / kw % kh;
}

void patches_fwd(long B, long C, long H, long W, const long *geo, long rows, const float *x, float *out)
{
    long sh = geo[2], sw = geo[3], ph = geo[4], dh = geo[6], Ho = geo[8], Wo = geo[9];
    long N = B * Ho * Wo, K = C * geo[0] * geo[1];
    for (long k = 0; k < rows; k++) {
        float *o = out + k * N;
        if (k >= K) {
            memset(o, 0, sizeof(float) * N);
            continue;
        }
        long ch, off, lo, hi, ki = patch_row(geo, W, k, &ch, &off, &lo, &hi);
        for (long b = 0; b < B; b++)
            for (long ho = 0; ho < Ho; ho++, o += Wo) {
                long h = ho * sh - ph + ki * dh;
                if (h < 0 || h >= H) {
                    memset(o, 0, sizeof(float) * Wo);
                    continue;
                }
                const float *src = x + ((b * C + ch) * H + h) * W + off;
                for (long wo = 0; wo < lo; wo++) o[wo] = 0.0f;
                if (sw == 1) for (long wo = lo; wo < hi; wo++) o[wo] = src[wo];  /* short runs: no memcpy call */
                else for (long wo = lo; wo < hi; wo++) o[wo] = src[wo * sw];
                for (long wo = hi; wo < Wo; wo++) o[wo] = 0.0f;
            }
    }
}

/* The adjoint of patches_fwd: gx (B, C, H, W) = sum of g (rows, B*Ho*Wo) over the
   patches each input pixel is in (rows beyond C*kh*kw ignored). */
void patches_bwd(long B, long C, long H, long W, const long *geo, long rows, const float *g, float *gx)
{
    long sh = geo[2], sw = geo[3], ph = geo[4], dh = geo[6], Ho = geo[8], Wo = geo[9];
    long N = B * Ho * Wo, K = C * geo[0] * geo[1];
    (void)rows;
    memset(gx, 0, sizeof(float) * B * C * H * W);
    for (long k = 0; k < K; k++) {
        const float *o = g + k * N;
        long ch, off, lo, hi, ki = patch_row(geo, W, k, &ch, &off, &lo, &hi);
        for (long b = 0; b < B; b++)
            for (long ho = 0; ho < Ho; ho++, o += Wo) {
                long h = ho * sh - ph + ki * dh;
                if (h < 0 || h >= H) continue;
                float *dst = gx + ((b * C + ch) * H + h) * W + off;
                if (sw == 1) for (long wo = lo; wo < hi; wo++) dst[wo] += o[wo];
                else for (long wo = lo; wo < hi; wo++) dst[wo * sw] += o[wo];
            }
    }
}
