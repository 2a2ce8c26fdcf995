/* The fused crossing of one graph node of the column-eta array model (kernels.py,
 * Crossing: cross_fwd / cross_bwd below), on the slot walk of slot_walk.h (the slot
 * kernel and its equations: slots.c).
 *
 * It adds, in the same pass over each sample: the input quantization
 * (InputQuantize), the crosstalk K_tot, the droop q = ln(1 + e Z) / e + K and the readout
 * (equations.droop_charge, read_times), and the backward of all of them, in the same
 * order of operations as the torch path (the droop's log from a polynomial in float32,
 * relative error ~1e-7; libm in float64). tests/test_model_native.py holds it to the
 * torch path on every switch, float32 and float64, values and gradients.
 *
 * Speed (Intel Xeon, AVX-512, 2 shared cores, one run each, CPU time): the
 * ~60 torch operations around the slot kernel cost twice the kernel itself; in C the
 * rest adds about half of the walk. What mattered, measured: keeping every element-wise
 * step in the walk's pass on vectors in registers (with K, q and t in arrays between
 * separate loops, reloads of 64-byte auto-vectorized stores as 32-byte vectors waited on
 * store forwarding: half the forward); the K_tot gradient as a product blocked in
 * registers instead of per-sample adds into memory (a sixth of the backward); the lane
 * sums as a tree; P summed along the walk as Z - G_k (no stored W, no reverse pass: 6 %);
 * a NaN-free copy of the widths for the sort (6 % of the forward); on AVX-512 the forward
 * walk of 16 columns on 64-byte vectors (slot_walk.h f32w: one vector per 16 columns,
 * forward 143 -> 118 us at a batch of 1024; the backward stays on 32-byte vectors, 20 %
 * slower on 64). -fno-trapping-math (below) lets the selects and floors vectorize. Tried and dropped: K_tot summed row by
 * row before the walk (slower than along it), 3 or 4 samples interleaved in the backward
 * (no gain), P added branch-free on every row (slower than the branch). */
#include "slot_walk.h"

/* The fused crossing of one graph node (kernels.py, Crossing): input quantization, the
   removed charge (the slot walk of slot_walk.h, or Z = d I0 without edge timing), droop, crosstalk,
   readout; and its backward pass. The element-wise steps inline labkit/model/equations.py
   and InputQuantize / Readout of kernels.py, in the same order of operations;
   tests/test_model_native.py holds this path to the torch one (float32 and float64,
   values and gradients). Layouts (contiguous, one dtype): x, d, gx (n, B, R); log_i0, k,
   i0, rho, gli, gk, P (n, R, C); eta, t0, gain, geta, gt0, ggain (n, C); z, q, t, keep,
   normals, gt, gz (n, B, C). k NULL: no crosstalk; eta NULL: no droop. */
/* The element-wise loops below (selects, floor, the droop's log) vectorize only without
   -ftrapping-math (nothing here reads the floating-point exception flags; the results
   are the same). */
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")

#define CROSS_SLOTS 1 /* crosstalk steps at the edges: the slot walk (needs eta and k) */
#define CROSS_FLOOR 2 /* TDC floor to the LSB */
#define CROSS_CLIP 4  /* clip to [0, t_fs] (keep != NULL: the unclipped mask, for "hard") */
#define R_MAXC 4096 /* rows of the fused crossing */
enum { P_LEVELS, P_POW2, P_TUS, P_CFF, P_IREF, P_LSB, P_TFS, P_NOISE };
#include "crossing_math.h" /* (inside the options above, as the kernels) */

/* The forward's vector steps and the walk of 16 columns, per vector type (f32w: 64-byte
   floats on AVX-512, slot_walk.h) */
#define DEFINE_CROSSING_WALK16(T, SUF)                                                      \
/* floor on the lanes of a vector (one vector instruction with SSE4.1 and later). */        \
static inline v_##SUF vfloor_##SUF(v_##SUF v)                                               \
{                                                                                           \
    for (int l = 0; l < L_##SUF; ++l) v[l] = FLOOR_##SUF(v[l]);                             \
    return v;                                                                               \
}                                                                                           \
                                                                                            \
/* The forward's last steps on one vector of L columns (pointers at its first column):      \
   q = ln(1 + e z) / e + K (equations.droop_charge) or z + K, and the readout               \
   (equations.read_times): t = t0 - g q (+ noise), floor to the LSB, clip to [0, t_fs]      \
   (keep: the unclipped mask). */                                                           \
static inline __attribute__((always_inline)) void fwd_vec_##SUF(                            \
    v_##SUF zc, v_##SUF kc, const T *e, int droop, const T *t0, const T *g, const T *nrm, T noise, T lsb, T tfs, \
    int64_t flags, T *q, T *t, uint8_t *keep)                                               \
{                                                                                           \
    typedef v_##SUF V;                                                                      \
    typedef vi_##SUF VI;                                                                    \
    enum { L = L_##SUF };                                                                   \
    const T ymin = (T)(-1.0 + 1e-6);                                                        \
    V qc;                                                                                   \
    if (droop) {                                                                            \
        V y = *(const V *)e * zc;                                                           \
        y = SEL(V, VI, y < ymin, ymin + y * 0, y);                                          \
        qc = LN1P_RATIO_##SUF(y) * zc + kc;                                                 \
    } else {                                                                                \
        qc = zc + kc;                                                                       \
    }                                                                                       \
    *(V *)q = qc;                                                                           \
    V tc = *(const V *)t0 - *(const V *)g * qc;                                             \
    if (nrm) tc += *(const V *)nrm * noise;                                                 \
    if (flags & CROSS_FLOOR) tc = lsb == 1 ? vfloor_##SUF(tc) : vfloor_##SUF(tc / lsb) * lsb; \
    if (flags & CROSS_CLIP) {                                                               \
        const VI lo = tc < 0, hi = tc > tfs;                                                \
        if (keep)                                                                           \
            for (int l = 0; l < L; ++l) keep[l] = !(lo[l] | hi[l]) && tc[l] == tc[l];       \
        tc = SEL(V, VI, lo, tc * 0, SEL(V, VI, hi, tfs + tc * 0, tc));                      \
    }                                                                                       \
    *(V *)t = tc;                                                                           \
}                                                                                           \
                                                                                            \
static const T zeros16_##SUF[16] __attribute__((aligned(64))) = {0};                        \
                                                                                            \
/* The crossing of su <= 4 samples at once for C = 16 (the slot walk of fwd16_group with    \
   the rest of the forward in the same pass): K_tot is summed along the walk (the row       \
   left behind at each step, where pulsed; row by row before the walk was slower), and      \
   z, K go from registers to fwd_vec. */                                                    \
static inline __attribute__((always_inline)) void xfwd16_group_##SUF(                       \
    const int su, int64_t R, const T *const *db, int64_t *const *ib, const T *it, const T *rt, const T *kt, \
    const v_##SUF *tot, const T *e, const T *t0, const T *g, T noise, T lsb, T tfs, int64_t flags, \
    const T *const *nb, T *const *zb_out, T *const *qb, T *const *tb, uint8_t *const *kb)   \
{                                                                                           \
    enum { L = L_##SUF, NC = 16 / L_##SUF };                                                \
    typedef v_##SUF V;                                                                      \
    V S[4][NC], E[4][NC], zb[4][NC], K[4][NC];                                              \
    T prev[4];                                                                              \
    for (int u = 0; u < su; ++u) {                                                          \
        sort_rows_##SUF(db[u], R, ib[u]);                                                   \
        slot_start_##SUF(16, tot, &prev[u], S[u], E[u]);                                    \
        for (int c = 0; c < NC; ++c) { zb[u][c] = (V){0}; K[u][c] = (V){0}; }               \
    }                                                                                       \
    for (int64_t k = 0; k < R; ++k)                                                         \
        _Pragma("GCC unroll 4")                                                             \
        for (int u = 0; u < su; ++u) {                                                      \
            if (k > 0) { /* K of the row the walk leaves behind (s_{k-1} > 0: pulsed) */    \
                const T *kr = prev[u] > 0 ? kt + ib[u][k - 1] * 16 : zeros16_##SUF;         \
                for (int c = 0; c < NC; ++c) K[u][c] += *(const V *)(kr + c * L);           \
            }                                                                               \
            const T dtk = slot_step_##SUF(k, 16, db[u], ib[u], it, rt, ones16_##SUF, &prev[u], S[u], E[u]); \
            for (int c = 0; c < NC; ++c) zb[u][c] += dtk * S[u][c] * E[u][c];               \
        }                                                                                   \
    for (int u = 0; u < su; ++u) {                                                          \
        const T *kr = prev[u] > 0 ? kt + ib[u][R - 1] * 16 : zeros16_##SUF; /* the widest row */ \
        for (int c = 0; c < NC; ++c) {                                                      \
            K[u][c] += *(const V *)(kr + c * L);                                            \
            *(V *)(zb_out[u] + c * L) = zb[u][c];                                           \
            fwd_vec_##SUF(zb[u][c], K[u][c], e + c * L, 1, t0 + c * L, g + c * L, nb[u] ? nb[u] + c * L : NULL, \
                          noise, lsb, tfs, flags, qb[u] + c * L, tb[u] + c * L, kb[u] ? kb[u] + c * L : NULL); \
        }                                                                                   \
    }                                                                                       \
}                                                                                           \

#define DEFINE_CROSSING(T, SUF)                                                             \
/* InputQuantize.forward times T: clamp to [0, 1] (NaN passes), round to `levels` steps. */ \
static void quant_in_##SUF(int64_t N, const T *restrict x, T *restrict d, T levels, int pow2, T t_us) \
{                                                                                           \
    if (levels <= 0)                                                                        \
        for (int64_t j = 0; j < N; ++j) { T y = x[j] < 0 ? 0 : (x[j] > 1 ? 1 : x[j]); d[j] = y * t_us; } \
    else if (pow2) {                                                                        \
        const T inv = 1 / levels;                                                           \
        for (int64_t j = 0; j < N; ++j) {                                                   \
            T y = x[j] < 0 ? 0 : (x[j] > 1 ? 1 : x[j]);                                     \
            d[j] = (RINT_##SUF(y * levels) * inv) * t_us;                                   \
        }                                                                                   \
    } else                                                                                  \
        for (int64_t j = 0; j < N; ++j) {                                                   \
            T y = x[j] < 0 ? 0 : (x[j] > 1 ? 1 : x[j]);                                     \
            d[j] = (RINT_##SUF(y * levels) / levels) * t_us;                                \
        }                                                                                   \
}                                                                                           \
                                                                                            \
/* The rest of the forward of one sample, on vectors of L columns held in registers:        \
   K_tot (the crosstalk of the pulsed rows, d > 0; branch-free, times 0 or 1, in four       \
   chains), q = ln(1 + e z) / e + K (equations.droop_charge) or z + K, and the readout      \
   (equations.read_times): t = t0 - g q (+ noise), floor to the LSB, clip to [0, t_fs]      \
   (keep: the unclipped mask). (With K, q and t in arrays between separate loops, the       \
   reloads waited on the stores: half the forward.) */                                      \
static inline void fwd_row_##SUF(int64_t R, int64_t C, const T *restrict db, const T *restrict k, \
                                 const T *restrict z, const T *restrict e, int droop, const T *restrict t0, \
                                 const T *restrict g, const T *restrict nrm, T noise, T lsb, T tfs, int64_t flags, \
                                 T *restrict q, T *restrict t, uint8_t *restrict keep)      \
{                                                                                           \
    typedef v_##SUF V;                                                                      \
    enum { L = L_##SUF };                                                                   \
    T pf[R];                                                                                \
    for (int64_t i = 0; i < R; ++i) pf[i] = (T)(db[i] > 0);                                 \
    for (int64_t c = 0; c < C; c += L) {                                                    \
        V kc = {0};                                                                         \
        if (k) {                                                                            \
            V a[4] = {{0}, {0}, {0}, {0}};                                                  \
            int64_t i = 0;                                                                  \
            for (; i + 3 < R; i += 4)                                                       \
                for (int u = 0; u < 4; ++u) a[u] += pf[i + u] * *(const V *)(k + (i + u) * C + c); \
            for (; i < R; ++i) a[0] += pf[i] * *(const V *)(k + i * C + c);                 \
            kc = (a[0] + a[1]) + (a[2] + a[3]);                                             \
        }                                                                                   \
        fwd_vec_##SUF(*(const V *)(z + c), kc, e + c, droop, t0 + c, g + c, nrm ? nrm + c : NULL, noise, lsb, tfs, \
                      flags, q + c, t + c, keep ? keep + c : NULL);                         \
    }                                                                                       \
}                                                                                           \
                                                                                            \
int cross_fwd_##SUF(int64_t n, int64_t B, int64_t R, int64_t C, const T *x, const T *log_i0, const T *k, \
                    const T *eta, const T *t0, const T *gain, const T *normals, const double *par, int64_t flags, \
                    T *d, T *i0, T *rho, T *z, T *q, T *t, int64_t *idx, uint8_t *keep)     \
{                                                                                           \
    const int slots = (flags & CROSS_SLOTS) && k && eta;                                    \
    if (C > MAXC || R > R_MAXC || C % L_##SUF || R % L_##SUF) return 2;                     \
    const T levels = (T)par[P_LEVELS], t_us = (T)par[P_TUS], cff = (T)par[P_CFF], iref = (T)par[P_IREF]; \
    const T lsb = (T)par[P_LSB], tfs = (T)par[P_TFS], noise = (T)par[P_NOISE];              \
    const int pow2 = par[P_POW2] != 0;                                                      \
    T e[MAXC], g[MAXC];                                                                     \
    for (int64_t s = 0; s < n; ++s) {                                                       \
        const T *xs = x + s * B * R, *ls = log_i0 + s * R * C, *ks = k ? k + s * R * C : NULL; \
        T *ds = d + s * B * R, *is = i0 + s * R * C, *rs = rho + s * R * C, *zs = z + s * B * C; \
        for (int64_t c = 0; c < C; ++c) {                                                   \
            g[c] = gain[s * C + c] / iref;                                                  \
            e[c] = eta ? eta[s * C + c] / cff : 0;                                          \
        }                                                                                   \
        for (int64_t j = 0; j < R * C; ++j) is[j] = EXP_##SUF(ls[j]);                       \
        if (slots)                                                                          \
            for (int64_t i = 0; i < R; ++i)                                                 \
                for (int64_t c = 0; c < C; ++c) rs[i * C + c] = EXP_##SUF(-e[c] * ks[i * C + c]); \
        quant_in_##SUF(B * R, xs, ds, levels, pow2, t_us);                                  \
        if (slots && C == 16) { /* the walk and the rest in one pass, 4 samples at a time */ \
            enum { SU = 4 };                                                                \
            CAT(v_, WIDE_##SUF) tot[16 / CAT(L_, WIDE_##SUF)]; /* (64-byte lanes on AVX-512) */ \
            CAT(slot_totals_, WIDE_##SUF)(R, 16, is, tot);                                  \
            for (int64_t b = 0; b < B; b += SU) {                                           \
                const int su = B - b < SU ? (int)(B - b) : SU;                              \
                const T *db[SU], *nb[SU];                                                   \
                int64_t *ib[SU];                                                            \
                T *zb[SU], *qb[SU], *tb[SU];                                                \
                uint8_t *kb[SU];                                                            \
                for (int u = 0; u < su; ++u) {                                              \
                    const int64_t o = (s * B + b + u) * C;                                  \
                    db[u] = ds + (b + u) * R; ib[u] = idx + (s * B + b + u) * R; zb[u] = zs + (b + u) * C; \
                    qb[u] = q + o; tb[u] = t + o; nb[u] = normals ? normals + o : NULL; kb[u] = keep ? keep + o : NULL; \
                }                                                                           \
                if (su == SU)                                                               \
                    CAT(xfwd16_group_, WIDE_##SUF)(SU, R, db, ib, is, rs, ks, tot, e, t0 + s * C, g, noise, lsb, tfs, \
                                                  flags, nb, zb,                                            \
                                       qb, tb, kb);                                         \
                else                                                                        \
                    for (int u = 0; u < su; ++u)                                            \
                        CAT(xfwd16_group_, WIDE_##SUF)(1, R, db + u, ib + u, is, rs, ks, tot, e, t0 + s * C, g, noise, \
                                                      lsb, tfs,                                             \
                                           flags, nb + u, zb + u, qb + u, tb + u, kb + u);  \
            }                                                                               \
            continue;                                                                       \
        }                                                                                   \
        if (slots)                                                                          \
            slots_tile_##SUF(B, R, C, ds, is, rs, zs, idx + s * B * R);                     \
        else                                                                                \
            for (int64_t b = 0; b < B; ++b) /* z = d I0, a vector of columns at a time in registers */ \
                for (int64_t c = 0; c < C; c += L_##SUF) {                                  \
                    v_##SUF a0 = {0}, a1 = {0};                                             \
                    const T *db = ds + b * R;                                               \
                    for (int64_t i = 0; i < R; i += 2) { /* (R is a multiple of the lanes) */ \
                        a0 += db[i] * *(const v_##SUF *)(is + i * C + c);                   \
                        a1 += db[i + 1] * *(const v_##SUF *)(is + (i + 1) * C + c);         \
                    }                                                                       \
                    *(v_##SUF *)(zs + b * C + c) = a0 + a1;                                 \
                }                                                                           \
        for (int64_t b = 0; b < B; ++b) {                                                   \
            const int64_t o = (s * B + b) * C;                                              \
            fwd_row_##SUF(R, C, ds + b * R, ks, zs + b * C, e, eta != NULL, t0 + s * C, g,  \
                          normals ? normals + o : NULL, noise, lsb, tfs, flags, q + o, t + o, keep ? keep + o : NULL); \
        }                                                                                   \
    }                                                                                       \
    return 0;                                                                               \
}                                                                                           \
                                                                                            \
/* Readout and droop backward of one sample, on vectors of L columns: gq = -g gt (gt        \
   zeroed where keep is 0), the column sums of gt and gt q, and (droop) gz = gq / (1 + y)   \
   with the sum of gq z^2 curv(y); the float series of curv is mended in double where       \
   |y| >= 0.1. */                                                                           \
static inline void grad_row_##SUF(int64_t C, const T *restrict gt, const uint8_t *restrict keep, \
                                  const T *restrict q, const T *restrict z, const T *restrict g, const T *restrict e, \
                                  int droop, T *restrict gq, T *restrict gz, T *restrict at0, T *restrict aq, \
                                  T *restrict ae)                                           \
{                                                                                           \
    typedef v_##SUF V;                                                                      \
    typedef vi_##SUF VI;                                                                    \
    enum { L = L_##SUF };                                                                   \
    const T ymin = (T)(-1.0 + 1e-6);                                                        \
    T gtk[MAXC];                                                                            \
    if (keep) {                                                                             \
        for (int64_t c = 0; c < C; ++c) gtk[c] = keep[c] ? gt[c] : 0;                       \
        gt = gtk;                                                                           \
    }                                                                                       \
    for (int64_t c = 0; c < C; c += L) {                                                    \
        const V gtc = *(const V *)(gt + c), zc = *(const V *)(z + c);                       \
        *(V *)(at0 + c) += gtc;                                                             \
        *(V *)(aq + c) += gtc * *(const V *)(q + c);                                        \
        const V gqc = -*(const V *)(g + c) * gtc;                                           \
        *(V *)(gq + c) = gqc;                                                               \
        if (!droop) {                                                                       \
            *(V *)(gz + c) = gqc;                                                           \
            continue;                                                                       \
        }                                                                                   \
        V y = *(const V *)(e + c) * zc;                                                     \
        y = SEL(V, VI, y < ymin, ymin + y * 0, y);                                          \
        *(V *)(gz + c) = gqc / (1 + y);                                                     \
        V cv = CURV_SERIES_##SUF(y);                                                        \
        const VI small = (y < (T)0.1) & (y > (T)-0.1);                                      \
        if (sizeof(T) == 8 || !ALL_SET_##SUF(small))                                        \
            for (int l = 0; l < L; ++l) cv[l] = CURV_FIX_##SUF(y[l], cv[l]);                \
        *(V *)(ae + c) += gqc * zc * zc * cv;                                               \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* The K_tot term of the crosstalk gradient of one tile, gk = [d > 0]^T gq (R, C)           \
   (``pulses``; else d^T gq, the current gradient without the slots): a product blocked     \
   on 4 rows by NCB vectors of columns held in registers (accumulated per sample into gk    \
   in memory, each add waited on the last one's store: a sixth of the backward). */         \
static inline __attribute__((always_inline)) void k_block_##SUF(int64_t B, int64_t R, int64_t C, const T *d, \
                                                                const T *gq, T *gk, int64_t i0, int64_t c0, \
                                                                const int NCB, const int pulses) \
{                                                                                           \
    typedef v_##SUF V;                                                                      \
    enum { L = L_##SUF };                                                                   \
    V a[4][2] = {{{0}}};                                                                    \
    for (int64_t b = 0; b < B; ++b) {                                                       \
        const T *db = d + b * R + i0;                                                       \
        const T p0 = pulses ? (T)(db[0] > 0) : db[0], p1 = pulses ? (T)(db[1] > 0) : db[1]; \
        const T p2 = pulses ? (T)(db[2] > 0) : db[2], p3 = pulses ? (T)(db[3] > 0) : db[3]; \
        for (int c = 0; c < NCB; ++c) {                                                     \
            const V gv = *(const V *)(gq + b * C + c0 + c * L);                             \
            a[0][c] += p0 * gv;                                                             \
            a[1][c] += p1 * gv;                                                             \
            a[2][c] += p2 * gv;                                                             \
            a[3][c] += p3 * gv;                                                             \
        }                                                                                   \
    }                                                                                       \
    for (int u = 0; u < 4; ++u)                                                             \
        for (int c = 0; c < NCB; ++c) *(V *)(gk + (i0 + u) * C + c0 + c * L) = a[u][c];     \
}                                                                                           \
                                                                                            \
static void k_term_##SUF(int64_t B, int64_t R, int64_t C, const T *d, const T *gq, T *gk, const int pulses) \
{                                                                                           \
    for (int64_t i0 = 0; i0 < R; i0 += 4) {                                                 \
        int64_t c0 = 0;                                                                     \
        if (pulses) {                                                                       \
            for (; c0 + 2 * L_##SUF <= C; c0 += 2 * L_##SUF) k_block_##SUF(B, R, C, d, gq, gk, i0, c0, 2, 1); \
            for (; c0 < C; c0 += L_##SUF) k_block_##SUF(B, R, C, d, gq, gk, i0, c0, 1, 1);  \
        } else {                                                                            \
            for (; c0 + 2 * L_##SUF <= C; c0 += 2 * L_##SUF) k_block_##SUF(B, R, C, d, gq, gk, i0, c0, 2, 0); \
            for (; c0 < C; c0 += L_##SUF) k_block_##SUF(B, R, C, d, gq, gk, i0, c0, 1, 0);  \
        }                                                                                   \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* The backward of su <= 2 samples at once for C = 16: grad_row, then the slot walk of      \
   bwd16_group on its gz (kept in registers) in one pass: H_k = sum_{m > k} dt_m S_m E_m    \
   is taken as Z - G_k (G the running sum, Z the forward's charge; the torch path's         \
   h is the same kind of difference), so P is summed as the walk goes and no reverse pass   \
   over a stored W is needed; g_x (times T, zero outside [0, 1]: InputQuantize) follows     \
   from the step sums after the walk. */                                                    \
static inline __attribute__((always_inline)) void xbwd16_group_##SUF(                       \
    const int su, int64_t R, const T *const *db, const int64_t *const *ib, const T *const *xb, const T *const *gtb, \
    const uint8_t *const *kpb, const T *const *qb, const T *const *zb, T *const *gxb, const T *it, const T *rt, \
    const v_##SUF *tot, const T *g, const T *e, T *const *gqb, T *gi, T *Pt, T *at0, T *aq, T *ae, T t_us) \
{                                                                                           \
    enum { L = L_##SUF, NC = 16 / L_##SUF };                                                \
    typedef v_##SUF V;                                                                      \
    V S[4][NC], E[4][NC], F[4][NC], G[4][NC], Z[4][NC], gg[4][NC];                          \
    T prev[4], gdt[4][R + 1];                                                               \
    for (int u = 0; u < su; ++u) {                                                          \
        V gzl[NC];                                                                          \
        grad_row_##SUF(16, gtb[u], kpb[u], qb[u], zb[u], g, e, 1, gqb[u], (T *)gzl, at0, aq, ae); \
        for (int c = 0; c < NC; ++c) {                                                      \
            gg[u][c] = gzl[c];                                                              \
            F[u][c] = (V){0};                                                               \
            G[u][c] = (V){0};                                                               \
            Z[u][c] = *(const V *)(zb[u] + c * L);                                          \
        }                                                                                   \
        slot_start_##SUF(16, tot, &prev[u], S[u], E[u]);                                    \
        gdt[u][R] = 0;                                                                      \
    }                                                                                       \
    for (int64_t k = 0; k < R; ++k)                                                         \
        _Pragma("GCC unroll 4")                                                             \
        for (int u = 0; u < su; ++u) {                                                      \
            const T dtk = slot_step_##SUF(k, 16, db[u], ib[u], it, rt, ones16_##SUF, &prev[u], S[u], E[u]); \
            const int64_t i = ib[u][k];                                                     \
            const int pulsed = db[u][i] > 0;                                                \
            V acc = {0};                                                                    \
            T *gr = gi + i * 16, *pr = Pt + i * 16;                                         \
            for (int c = 0; c < NC; ++c) {                                                  \
                const V se = S[u][c] * E[u][c];                                             \
                acc += gg[u][c] * se;                                                       \
                G[u][c] += dtk * se;                                                        \
                F[u][c] += dtk * E[u][c];                                                   \
                *(V *)(gr + c * L) += gg[u][c] * F[u][c];                                   \
                if (pulsed) *(V *)(pr + c * L) += gg[u][c] * (Z[u][c] - G[u][c]);           \
            }                                                                               \
            gdt[u][k] = hsum_##SUF(acc);                                                    \
        }                                                                                   \
    for (int u = 0; u < su; ++u) /* g_x after the walk (written in it, it waited on each step's sum) */ \
        for (int64_t k = 0; k < R; ++k) {                                                   \
            const int64_t j = ib[u][k];                                                     \
            const T xv = xb[u][j];                                                          \
            gxb[u][j] = ((xv >= 0) & (xv <= 1)) ? (gdt[u][k] - gdt[u][k + 1]) * t_us : 0;   \
        }                                                                                   \
}                                                                                           \
                                                                                            \
int cross_bwd_##SUF(int64_t n, int64_t B, int64_t R, int64_t C, const T *x, const T *d, const T *i0, \
                    const T *rho, const T *k, const T *eta, const T *gain, const T *z, const T *q, \
                    const int64_t *idx, const uint8_t *keep, const T *gt, const double *par, int64_t flags, \
                    T *gz, T *gx, T *gli, T *gk, T *geta, T *gt0, T *ggain, T *P, T *gq)    \
{                                                                                           \
    const int slots = (flags & CROSS_SLOTS) && k && eta;                                    \
    if (C > MAXC || R > R_MAXC || C % L_##SUF || R % L_##SUF) return 2;                     \
    const T t_us = (T)par[P_TUS], cff = (T)par[P_CFF], iref = (T)par[P_IREF];               \
    T e[MAXC], g[MAXC], at0[MAXC], aq[MAXC], ae[MAXC];                                      \
    for (int64_t s = 0; s < n; ++s) {                                                       \
        const T *xs = x + s * B * R, *ds = d + s * B * R, *is = i0 + s * R * C, *rs = rho + s * R * C; \
        const T *ks = k ? k + s * R * C : NULL;                                             \
        T *gzs = gz + s * B * C, *gxs = gx + s * B * R, *gis = gli + s * R * C;             \
        T *gks = k ? gk + s * R * C : NULL, *Ps = P + s * R * C, *gqs = gq + s * B * C;     \
        for (int64_t c = 0; c < C; ++c) {                                                   \
            g[c] = gain[s * C + c] / iref;                                                  \
            e[c] = eta ? eta[s * C + c] / cff : 0;                                          \
            at0[c] = aq[c] = ae[c] = 0;                                                     \
        }                                                                                   \
        memset(gis, 0, sizeof(T) * R * C);                                                  \
        memset(Ps, 0, sizeof(T) * R * C);                                                   \
        if (slots && C == 16) { /* all of it in one pass, 2 samples at a time */            \
            enum { SU = 2 };                                                                \
            v_##SUF tot[16 / L_##SUF];                                                      \
            slot_totals_##SUF(R, 16, is, tot);                                              \
            for (int64_t b = 0; b < B; b += SU) {                                           \
                const int su = B - b < SU ? (int)(B - b) : SU;                              \
                const T *db[SU], *xb[SU], *gtb[SU], *qb[SU], *zb[SU];                       \
                const int64_t *ib[SU];                                                      \
                const uint8_t *kpb[SU];                                                     \
                T *gxb[SU], *gqb[SU];                                                       \
                for (int u = 0; u < su; ++u) {                                              \
                    const int64_t o = (s * B + b + u) * C;                                  \
                    db[u] = ds + (b + u) * R; ib[u] = idx + (s * B + b + u) * R; xb[u] = xs + (b + u) * R; \
                    gtb[u] = gt + o; kpb[u] = keep ? keep + o : NULL; qb[u] = q + o; zb[u] = z + o; \
                    gxb[u] = gxs + (b + u) * R; gqb[u] = gqs + (b + u) * C;                 \
                }                                                                           \
                if (su == SU)                                                               \
                    xbwd16_group_##SUF(SU, R, db, ib, xb, gtb, kpb, qb, zb, gxb, is, rs, tot, g, e, gqb, gis, Ps, at0, \
                                       aq, ae, t_us);                                       \
                else                                                                        \
                    xbwd16_group_##SUF(1, R, db, ib, xb, gtb, kpb, qb, zb, gxb, is, rs, tot, g, e, gqb, gis, Ps, at0, \
                                       aq, ae, t_us);                                       \
            }                                                                               \
        } else {                                                                            \
            for (int64_t b = 0; b < B; ++b) { /* Readout and droop backward, and the K_tot term */ \
                const int64_t o = (s * B + b) * C;                                          \
                grad_row_##SUF(C, gt + o, keep ? keep + o : NULL, q + o, z + o, g, e, eta != NULL, gqs + b * C, \
                               gzs + b * C, at0, aq, ae);                                   \
            }                                                                               \
            if (slots) {                                                                    \
                if (slots_tile_bwd_##SUF(B, R, C, ds, is, rs, idx + s * B * R, gzs, gxs, gis, Ps)) return 1; \
            } else {                                                                        \
                for (int64_t b = 0; b < B; ++b) /* g_d = gz I0^T: vector dot products */    \
                    for (int64_t i = 0; i < R; ++i) {                                       \
                        v_##SUF a = {0};                                                    \
                        for (int64_t c = 0; c < C; c += L_##SUF)                            \
                            a += *(const v_##SUF *)(gzs + b * C + c) * *(const v_##SUF *)(is + i * C + c); \
                        gxs[b * R + i] = hsum_##SUF(a);                                     \
                    }                                                                       \
                k_term_##SUF(B, R, C, ds, gzs, gis, 0); /* g_I0 = d^T gz */                 \
            }                                                                               \
            {   /* g_x, and InputQuantize's mask: zero outside [0, 1] */                    \
                const T *restrict xr = xs;                                                  \
                T *restrict gr = gxs;                                                       \
                for (int64_t j = 0; j < B * R; ++j) gr[j] = (xr[j] >= 0 && xr[j] <= 1) ? gr[j] * t_us : 0; \
            }                                                                               \
        }                                                                                   \
        if (gks) k_term_##SUF(B, R, C, ds, gqs, gks, 1);                                    \
        for (int64_t c = 0; c < C; ++c) ae[c] = -ae[c];                                     \
        for (int64_t i = 0; i < R; ++i)                                                     \
            for (int64_t c = 0; c < C; ++c) {                                               \
                gis[i * C + c] *= is[i * C + c];                                            \
                if (slots) {                                                                \
                    gks[i * C + c] -= e[c] * Ps[i * C + c];                                 \
                    ae[c] -= ks[i * C + c] * Ps[i * C + c];                                 \
                }                                                                           \
            }                                                                               \
        for (int64_t c = 0; c < C; ++c) {                                                   \
            if (eta) geta[s * C + c] = ae[c] / cff;                                         \
            gt0[s * C + c] = at0[c];                                                        \
            ggain[s * C + c] = -aq[c] / iref;                                               \
        }                                                                                   \
    }                                                                                       \
    return 0;                                                                               \
}

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b) /* (pastes after expanding WIDE_SUF) */
DEFINE_CROSSING_WALK16(float, f32)
DEFINE_CROSSING_WALK16(double, f64)
#if defined(__AVX512F__)
DEFINE_CROSSING_WALK16(float, f32w)
#endif
DEFINE_CROSSING(float, f32)
DEFINE_CROSSING(double, f64)

#pragma GCC pop_options
