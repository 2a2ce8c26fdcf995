/* Adaptive-slot kernel of the column-eta array model (see kernels.py, ChargeFn), and the
 * fused crossing of one graph node (kernels.py, Crossing: cross_fwd / cross_bwd below).
 *
 * Per tile t and sample b (widths d, R rows, C columns), with the rows sorted by width
 * (s_k = k-th smallest width, idx_k its row, dt_k = s_k - s_{k-1}):
 *   S_k = sum_{m >= k} I0[idx_m]                      slot currents
 *   E_k = prod_{m < k, s_m > 0} rho[idx_m]            droop of earlier crosstalk
 *   Z   = sum_k dt_k S_k E_k
 * Backward: g_d (row order) = dZ/dd . gz, and the batch sums
 *   gi0[i] += gz * F_{r_i},  F_k = sum_{m <= k} dt_m E_m
 *   P[i]   += [d_i > 0] gz * H_{r_i},  H_k = sum_{m > k} dt_m S_m E_m
 * Plain C with GCC vector extensions (32-byte vectors); R and C must be multiples of the
 * lane count L (8 float / 4 double; the Python side checks). Compiled at first use by
 * labkit.model.native. Rows are ranked by counting (stable: ties keep row order; a NaN
 * width ranks as +inf, so the order stays a permutation and Z comes out NaN, not a wild
 * index: a diverging fit once crashed the process here).
 *
 * The fused crossing adds, in the same pass over each sample: the input quantization
 * (InputQuantize), the crosstalk K_tot, the droop q = ln(1 + e Z) / e + K and the readout
 * (equations.droop_charge, read_times), and the backward of all of them, in the same
 * order of operations as the torch path (the droop's log from a polynomial in float32,
 * relative error ~1e-7; libm in float64). tests/test_model_native.py holds it to the
 * torch path on every switch, float32 and float64, values and gradients.
 *
 * Speed (the Speed issue; one 16x16 array, batch 1024, AMD EPYC, AVX-512 target): the
 * per-sample slot loop is a chain of dependent vector operations (E *= rho, S -= I0,
 * z += dt S E), latency-bound one sample at a time (~100 ns forward). With 16 columns
 * (the chip's) several samples run interleaved (slots16, 4 forward / 2 backward): forward
 * 104 -> 57 us, forward + backward 362 -> 182 us in one run, same results (the batch
 * sums of the backward to float rounding). Measured and ruled out: 64-byte vectors (one
 * vector per row of 16 columns: no gain, still latency-bound) and branch-free loops one
 * sample at a time (20 % slower).
 *
 * The fused crossing (Intel Xeon, AVX-512, 2 shared cores, one run each, CPU time): the
 * ~60 torch operations around the slot kernel cost twice the kernel itself; in C the
 * rest adds about half of the walk. What mattered, measured: keeping every element-wise
 * step in the walk's pass on vectors in registers (with K, q and t in arrays between
 * separate loops, reloads of 64-byte auto-vectorized stores as 32-byte vectors waited on
 * store forwarding: half the forward); the K_tot gradient as a product blocked in
 * registers instead of per-sample adds into memory (a sixth of the backward); the lane
 * sums as a tree; P summed along the walk as Z - G_k (no stored W, no reverse pass: 6 %);
 * a NaN-free copy of the widths for the sort (6 % of the forward). -fno-trapping-math
 * (below) lets the selects and floors vectorize. Tried and dropped: K_tot summed row by
 * row before the walk (slower than along it), 3 or 4 samples interleaved in the backward
 * (no gain), P added branch-free on every row (slower than the branch). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAXC 1024 /* columns; the Python side checks */

#define DEFINE_SLOTS(T, I, SUF)                                                             \
typedef T v_##SUF __attribute__((vector_size(32), aligned(sizeof(T))));                     \
typedef I vi_##SUF __attribute__((vector_size(32), aligned(sizeof(I))));                    \
enum { L_##SUF = 32 / sizeof(T) };                                                          \
                                                                                            \
static inline __attribute__((always_inline)) void sort_rows_##SUF(const T *restrict d, int64_t R, \
                                                                  int64_t *restrict idx) {  \
    /* rank_i = #{m: d_m < d_i} + #{m < i: d_m == d_i}, counted with vector compares; the   \
       tie rule only matters inside a row's own vector (before it, d_m <= d_i counts;       \
       after it, d_m < d_i). A NaN width ranks as +inf: idx stays a permutation. */         \
    vi_##SUF iota = {0};                                                                    \
    for (int l = 0; l < L_##SUF; ++l) iota[l] = l;                                          \
    T dd[R];                                                                                \
    for (int64_t m = 0; m < R; ++m) dd[m] = d[m] == d[m] ? d[m] : (T)__builtin_inf();       \
    for (int64_t c = 0; c < R; c += L_##SUF) {                                              \
        const v_##SUF dv = *(const v_##SUF *)(dd + c);                                      \
        vi_##SUF r = {0};                                                                   \
        const vi_##SUF pos = iota + (I)c;                                                   \
        for (int64_t m = 0; m < c; ++m) r -= (vi_##SUF)(dv >= dd[m]);                       \
        for (int64_t m = c; m < c + L_##SUF; ++m) {                                         \
            r -= (vi_##SUF)(dv > dd[m]);                                                    \
            r -= (vi_##SUF)(dv == dd[m]) & (pos > (I)m);                                    \
        }                                                                                   \
        for (int64_t m = c + L_##SUF; m < R; ++m) r -= (vi_##SUF)(dv > dd[m]);              \
        for (int l = 0; l < L_##SUF; ++l) idx[r[l]] = c + l;                                \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* The sum of the lanes, as a tree (depth log2 L: the backward's step waited on a chain). */\
static inline __attribute__((always_inline)) T hsum_##SUF(v_##SUF v) {                      \
    for (int w = L_##SUF / 2; w >= 1; w /= 2)                                               \
        for (int l = 0; l < w; ++l) v[l] += v[l + w];                                       \
    return v[0];                                                                            \
}                                                                                           \
                                                                                            \
/* The walk over the adaptive slots of one sample, shared by the forward and the         \
   backward kernels: slot_totals gives the column sums tot = sum_i I0[i] of a tile,      \
   slot_start sets S_0 = tot, E_0 = 1, and slot_step, called for k = 0 .. R-1 in turn,   \
   steps S and E past row idx_{k-1} (S_k = S_{k-1} - I0[idx_{k-1}], E_k = E_{k-1}       \
   rho[idx_{k-1}] where s_{k-1} > 0) and returns dt_k = s_k - s_{k-1}; the kernel then   \
   does its part with S_k and E_k. C: the columns (row stride, C / L vectors). ones: a   \
   row of C ones that stands in for rho where s_{k-1} = 0, so the step is branch-free    \
   (the C = 16 kernels, several samples interleaved), or NULL to skip the product there \
   (the kernels for any C, one sample at a time). The C = 16 kernels unroll their loop   \
   over the samples of a group explicitly (GCC unroll): with the step inlined, GCC 12    \
   no longer unrolled it by itself and kept S and E in memory (float64, batch 1024:      \
   forward 10 %, forward + backward 20-25 % slower on an AVX-512 Xeon). */               \
static inline __attribute__((always_inline)) void slot_totals_##SUF(                        \
    int64_t R, int64_t C, const T *it, v_##SUF *tot) {                                      \
    enum { L = L_##SUF };                                                                   \
    typedef v_##SUF V;                                                                      \
    for (int64_t c = 0; c < C / L; ++c) tot[c] = (V){0};                                    \
    for (int64_t i = 0; i < R; ++i)                                                         \
        for (int64_t c = 0; c < C / L; ++c) tot[c] += *(const V *)(it + i * C + c * L);    \
}                                                                                           \
                                                                                            \
static inline __attribute__((always_inline)) void slot_start_##SUF(                         \
    int64_t C, const v_##SUF *tot, T *prev, v_##SUF *S, v_##SUF *E) {                       \
    for (int64_t c = 0; c < C / L_##SUF; ++c) { S[c] = tot[c]; E[c] = tot[c] * 0 + 1; }    \
    *prev = 0;                                                                              \
}                                                                                           \
                                                                                            \
static inline __attribute__((always_inline)) T slot_step_##SUF(                             \
    int64_t k, int64_t C, const T *db, const int64_t *ib, const T *it, const T *rt,         \
    const T *ones, T *prev, v_##SUF *S, v_##SUF *E) {                                       \
    enum { L = L_##SUF };                                                                   \
    typedef v_##SUF V;                                                                      \
    const T sk = db[ib[k]], dtk = sk - *prev;                                               \
    if (k > 0) {                                                                            \
        const int64_t j = ib[k - 1];                                                        \
        const T *ip = it + j * C, *rp = rt + j * C;                                         \
        if (ones) {                                                                         \
            if (!(*prev > 0)) rp = ones;                                                    \
            for (int64_t c = 0; c < C / L; ++c) E[c] *= *(const V *)(rp + c * L);           \
        } else if (*prev > 0) {                                                             \
            for (int64_t c = 0; c < C / L; ++c) E[c] *= *(const V *)(rp + c * L);           \
        }                                                                                   \
        for (int64_t c = 0; c < C / L; ++c) S[c] -= *(const V *)(ip + c * L);              \
    }                                                                                       \
    *prev = sk;                                                                             \
    return dtk;                                                                             \
}                                                                                           \
                                                                                            \
static const T ones16_##SUF[16] __attribute__((aligned(64))) = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}; \
                                                                                            \
/* The forward of su <= 4 samples at once for C = 16 (two vectors of 8 floats, four of  \
   4 doubles): the running products and sums are chains of dependent vector operations, \
   so one sample at a time waits on their latency; several independent samples fill it. \
   Branch-free (an empty slot adds zero; a zero-width row multiplies by a row of ones). */ \
static inline __attribute__((always_inline)) void fwd16_group_##SUF(                        \
    const int su, int64_t R, const T *const *db, int64_t *const *ib, const T *it, const T *rt, \
    const v_##SUF *tot, T *const *zout) {                                                   \
    enum { NC = 16 / L_##SUF };                                                             \
    typedef v_##SUF V;                                                                      \
    V S[4][NC], E[4][NC], zb[4][NC];                                                        \
    T prev[4];                                                                              \
    for (int u = 0; u < su; ++u) {                                                          \
        sort_rows_##SUF(db[u], R, ib[u]);                                                   \
        slot_start_##SUF(16, tot, &prev[u], S[u], E[u]);                                    \
        for (int c = 0; c < NC; ++c) zb[u][c] = (V){0};                                     \
    }                                                                                       \
    for (int64_t k = 0; k < R; ++k)                                                         \
        _Pragma("GCC unroll 4")                                                             \
        for (int u = 0; u < su; ++u) {                                                      \
            const T dtk = slot_step_##SUF(k, 16, db[u], ib[u], it, rt, ones16_##SUF, &prev[u], S[u], E[u]); \
            for (int c = 0; c < NC; ++c) zb[u][c] += dtk * S[u][c] * E[u][c];               \
        }                                                                                   \
    for (int u = 0; u < su; ++u) memcpy(zout[u], zb[u], sizeof(T) * 16);                   \
}                                                                                           \
                                                                                            \
static void slots16_##SUF(int64_t B, int64_t R, const T *d, const T *it, const T *rt,     \
                          T *z, int64_t *idx_out) {                                        \
    enum { NC = 16 / L_##SUF, SU = 4 };                                                     \
    v_##SUF tot[NC];                                                                        \
    slot_totals_##SUF(R, 16, it, tot);                                                      \
    for (int64_t b = 0; b < B; b += SU) {                                                   \
        const int su = B - b < SU ? (int)(B - b) : SU;                                      \
        const T *db[SU];                                                                    \
        int64_t *ib[SU];                                                                    \
        T *zb[SU];                                                                          \
        for (int u = 0; u < su; ++u) {                                                      \
            db[u] = d + (b + u) * R; ib[u] = idx_out + (b + u) * R; zb[u] = z + (b + u) * 16; \
        }                                                                                   \
        if (su == SU) fwd16_group_##SUF(SU, R, db, ib, it, rt, tot, zb);                    \
        else                                                                                \
            for (int u = 0; u < su; ++u) fwd16_group_##SUF(1, R, db + u, ib + u, it, rt, tot, zb + u); \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* The slot walk of one tile for any C (one sample at a time): Z and the sort order. */     \
static void slots_any_##SUF(int64_t B, int64_t R, int64_t C, const T *d, const T *it, const T *rt, \
                            T *z, int64_t *idx_out) {                                       \
    enum { L = L_##SUF };                                                                   \
    typedef v_##SUF V;                                                                      \
    V S[MAXC / L], E[MAXC / L], tot[MAXC / L], zb[MAXC / L];                                \
    const int64_t NC = C / L;                                                               \
    slot_totals_##SUF(R, C, it, tot);                                                       \
    for (int64_t b = 0; b < B; ++b) {                                                       \
        const T *db = d + b * R;                                                            \
        int64_t *ib = idx_out + b * R;                                                      \
        sort_rows_##SUF(db, R, ib);                                                         \
        T prev;                                                                             \
        slot_start_##SUF(C, tot, &prev, S, E);                                              \
        for (int64_t c = 0; c < NC; ++c) zb[c] = (V){0};                                    \
        for (int64_t k = 0; k < R; ++k) {                                                   \
            const T dtk = slot_step_##SUF(k, C, db, ib, it, rt, NULL, &prev, S, E);         \
            if (dtk != 0)                                                                   \
                for (int64_t c = 0; c < NC; ++c) zb[c] += dtk * S[c] * E[c];                \
        }                                                                                   \
        memcpy(z + b * C, zb, sizeof(T) * C);                                               \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* Z (B, C) and idx (B, R) of one tile: d (B, R), I0 and rho (R, C). */                     \
static void slots_tile_##SUF(int64_t B, int64_t R, int64_t C, const T *d, const T *it, const T *rt, \
                             T *z, int64_t *idx) {                                          \
    if (C == 16) slots16_##SUF(B, R, d, it, rt, z, idx);                                    \
    else slots_any_##SUF(B, R, C, d, it, rt, z, idx);                                       \
}                                                                                           \
                                                                                            \
int slots_fwd_##SUF(int64_t n, int64_t B, int64_t R, int64_t C, const T *d, const T *i0,    \
                    const T *rho, T *z, int64_t *idx_out) {                                 \
    if (C > MAXC || C % L_##SUF || R % L_##SUF) return 2;                                   \
    for (int64_t t = 0; t < n; ++t)                                                         \
        slots_tile_##SUF(B, R, C, d + t * B * R, i0 + t * R * C, rho + t * R * C, z + t * B * C, \
                         idx_out + t * B * R);                                              \
    return 0;                                                                               \
}                                                                                           \
                                                                                            \
/* The backward of su <= 2 samples at once for C = 16 and R <= 64 (as fwd16_group; the  \
   batch sums into gi and P are added in another order than one sample at a time). */    \
static inline __attribute__((always_inline)) void bwd16_group_##SUF(                        \
    const int su, int64_t R, const T *const *db, const int64_t *const *ib, const T *const *gzb, \
    T *const *gdb, const T *it, const T *rt, const v_##SUF *tot, T *gi, T *Pt) {            \
    enum { L = L_##SUF, NC = 16 / L_##SUF };                                                \
    typedef v_##SUF V;                                                                      \
    V S[4][NC], E[4][NC], F[4][NC], H[4][NC], g[4][NC], W[4][64][NC];                       \
    T prev[4], gdt[4][64];                                                                  \
    for (int u = 0; u < su; ++u) {                                                          \
        memcpy(g[u], gzb[u], sizeof(T) * 16);                                               \
        slot_start_##SUF(16, tot, &prev[u], S[u], E[u]);                                    \
        for (int c = 0; c < NC; ++c) { F[u][c] = (V){0}; H[u][c] = (V){0}; }                \
    }                                                                                       \
    for (int64_t k = 0; k < R; ++k)                                                         \
        _Pragma("GCC unroll 4")                                                             \
        for (int u = 0; u < su; ++u) {                                                      \
            const T dtk = slot_step_##SUF(k, 16, db[u], ib[u], it, rt, ones16_##SUF, &prev[u], S[u], E[u]); \
            V acc = {0};                                                                    \
            T *gr = gi + ib[u][k] * 16;                                                     \
            for (int c = 0; c < NC; ++c) {                                                  \
                V se = S[u][c] * E[u][c];                                                   \
                acc += g[u][c] * se;                                                        \
                W[u][k][c] = dtk * se;                                                      \
                F[u][c] += dtk * E[u][c];                                                   \
                *(V *)(gr + c * L) += g[u][c] * F[u][c];                                    \
            }                                                                               \
            const T a = hsum_##SUF(acc);                                                    \
            gdt[u][k] = a;                                                                  \
        }                                                                                   \
    for (int64_t k = R - 1; k >= 0; --k)                                                    \
        for (int u = 0; u < su; ++u) {                                                      \
            if (db[u][ib[u][k]] > 0) {                                                      \
                T *pr = Pt + ib[u][k] * 16;                                                 \
                for (int c = 0; c < NC; ++c) *(V *)(pr + c * L) += g[u][c] * H[u][c];       \
            }                                                                               \
            for (int c = 0; c < NC; ++c) H[u][c] += W[u][k][c];                             \
            gdb[u][ib[u][k]] = gdt[u][k] - (k + 1 < R ? gdt[u][k + 1] : 0);                 \
        }                                                                                   \
}                                                                                           \
                                                                                            \
static void slots16_bwd_##SUF(int64_t B, int64_t R, const T *d, const T *it, const T *rt,  \
                              const int64_t *idx, const T *gz, T *gd, T *gi, T *Pt) {      \
    enum { NC = 16 / L_##SUF, SU = 2 };                                                     \
    v_##SUF tot[NC];                                                                        \
    slot_totals_##SUF(R, 16, it, tot);                                                      \
    for (int64_t b = 0; b < B; b += SU) {                                                   \
        const int su = B - b < SU ? (int)(B - b) : SU;                                      \
        const T *db[SU], *gzb[SU];                                                          \
        const int64_t *ib[SU];                                                              \
        T *gdb[SU];                                                                         \
        for (int u = 0; u < su; ++u) {                                                      \
            db[u] = d + (b + u) * R; ib[u] = idx + (b + u) * R;                             \
            gzb[u] = gz + (b + u) * 16; gdb[u] = gd + (b + u) * R;                          \
        }                                                                                   \
        if (su == SU) bwd16_group_##SUF(SU, R, db, ib, gzb, gdb, it, rt, tot, gi, Pt);      \
        else bwd16_group_##SUF(1, R, db, ib, gzb, gdb, it, rt, tot, gi, Pt);                \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* The backward slot walk of one tile for any C (one sample at a time). */                  \
static int slots_any_bwd_##SUF(int64_t B, int64_t R, int64_t C, const T *d, const T *it, const T *rt, \
                               const int64_t *idx, const T *gz, T *gd, T *gi, T *Pt) {      \
    enum { L = L_##SUF };                                                                   \
    typedef v_##SUF V;                                                                      \
    const int64_t NC = C / L;                                                               \
    V S[MAXC / L], E[MAXC / L], F[MAXC / L], H[MAXC / L], tot[MAXC / L], g[MAXC / L];       \
    V *W = (V *)malloc(sizeof(V) * R * NC);                                                 \
    T *gdt = (T *)malloc(sizeof(T) * R);                                                    \
    if (!W || !gdt) { free(W); free(gdt); return 1; }                                       \
    slot_totals_##SUF(R, C, it, tot);                                                       \
    for (int64_t b = 0; b < B; ++b) {                                                       \
        const T *db = d + b * R;                                                            \
        const int64_t *ib = idx + b * R;                                                    \
        T *gdb = gd + b * R;                                                                \
        memcpy(g, gz + b * C, sizeof(T) * C);                                               \
        T prev;                                                                             \
        slot_start_##SUF(C, tot, &prev, S, E);                                              \
        for (int64_t c = 0; c < NC; ++c) { F[c] = (V){0}; H[c] = (V){0}; }                  \
        for (int64_t k = 0; k < R; ++k) { /* forward: g_dt, F, W = dt S E */                \
            const T dtk = slot_step_##SUF(k, C, db, ib, it, rt, NULL, &prev, S, E);         \
            V acc = {0};                                                                    \
            T *gr = gi + ib[k] * C;                                                         \
            V *Wk = W + k * NC;                                                             \
            for (int64_t c = 0; c < NC; ++c) {                                              \
                V se = S[c] * E[c];                                                         \
                acc += g[c] * se;                                                           \
                Wk[c] = dtk * se;                                                           \
                F[c] += dtk * E[c];                                                         \
                *(V *)(gr + c * L) += g[c] * F[c];                                          \
            }                                                                               \
            const T a = hsum_##SUF(acc);                                                    \
            gdt[k] = a;                                                                     \
        }                                                                                   \
        for (int64_t k = R - 1; k >= 0; --k) { /* reverse: H_k = sum_{m > k} W_m */         \
            if (db[ib[k]] > 0) {                                                            \
                T *pr = Pt + ib[k] * C;                                                     \
                for (int64_t c = 0; c < NC; ++c) *(V *)(pr + c * L) += g[c] * H[c];         \
            }                                                                               \
            const V *Wk = W + k * NC;                                                       \
            for (int64_t c = 0; c < NC; ++c) H[c] += Wk[c];                                 \
            gdb[ib[k]] = gdt[k] - (k + 1 < R ? gdt[k + 1] : 0);                             \
        }                                                                                   \
    }                                                                                       \
    free(W); free(gdt);                                                                     \
    return 0;                                                                               \
}                                                                                           \
                                                                                            \
/* g_d (B, R) and the batch sums gi, P (R, C; added to) of one tile. */                     \
static int slots_tile_bwd_##SUF(int64_t B, int64_t R, int64_t C, const T *d, const T *it, const T *rt, \
                                const int64_t *idx, const T *gz, T *gd, T *gi, T *Pt) {     \
    if (C == 16 && R <= 64) { slots16_bwd_##SUF(B, R, d, it, rt, idx, gz, gd, gi, Pt); return 0; } \
    return slots_any_bwd_##SUF(B, R, C, d, it, rt, idx, gz, gd, gi, Pt);                    \
}                                                                                           \
                                                                                            \
int slots_bwd_##SUF(int64_t n, int64_t B, int64_t R, int64_t C, const T *d, const T *i0,    \
                    const T *rho, const int64_t *idx, const T *gz, T *gd, T *gi0, T *P) {   \
    if (C > MAXC || C % L_##SUF || R % L_##SUF) return 2;                                   \
    for (int64_t t = 0; t < n; ++t)                                                         \
        if (slots_tile_bwd_##SUF(B, R, C, d + t * B * R, i0 + t * R * C, rho + t * R * C, idx + t * B * R, \
                                 gz + t * B * C, gd + t * B * R, gi0 + t * R * C, P + t * R * C)) return 1; \
    return 0;                                                                               \
}

DEFINE_SLOTS(float, int32_t, f32)
DEFINE_SLOTS(double, int64_t, f64)

/* The fused crossing of one graph node (kernels.py, Crossing): input quantization, the
   removed charge (slot walk above, or Z = d I0 without edge timing), droop, crosstalk,
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

/* ln(w) for normal w > 0, relative error ~1e-7 (the fit of log_pos in analog_tiles.c):
   w = 2^ex (1 + t), t in [sqrt(1/2) - 1, sqrt(2) - 1), ln(1 + t) = t - t^2/2 + t^3 P(t). */
static inline float ln_poly_f32(float t) /* P(t) */
{
    float p = 0.0850695372f;
    p = p * t - 0.141974717f;
    p = p * t + 0.149509788f;
    p = p * t - 0.165879488f;
    p = p * t + 0.199605972f;
    p = p * t - 0.250009686f;
    return p * t + 0.333339721f;
}

static inline float ln_pos_f32(float w)
{
    int bits;
    memcpy(&bits, &w, sizeof bits);
    int ex = (bits >> 23) - 127;
    bits = (bits & 0x007fffff) | 0x3f800000;
    float f;
    memcpy(&f, &bits, sizeof f);
    int big = f > 1.41421356f;
    f = big ? 0.5f * f : f;
    ex += big;
    float t = f - 1.0f, t2 = t * t;
    return t2 * t * ln_poly_f32(t) - 0.5f * t2 + t + (float)ex * 0.693147181f;
}

/* ln(1 + y) / y (1 at y = 0), the droop compression of equations.droop_charge. float:
   inside [sqrt(1/2) - 1, sqrt(2) - 1) the series on y itself, 1 - y/2 + y^2 P(y) (no
   rounding of 1 + y, no 0/0), else ln(1 + y) / y; relative error ~1e-7, branch-free (the
   loop vectorizes). double: libm log1p. */
static inline float ln1p_ratio_f32(float y)
{
    float small = 1.0f - 0.5f * y + y * y * ln_poly_f32(y);
    float big = ln_pos_f32(1.0f + y) / y;
    return (y >= -0.292893219f && y < 0.414213562f) ? small : big;
}

static inline double ln1p_ratio_f64(double y) { return y == 0 ? 1.0 : log1p(y) / y; }

/* (ln(1 + y) - y / (1 + y)) / y^2, the droop gradient's curvature (equations._log1p_curv):
   float: the series sum_n (-1)^n (n + 1) / (n + 2) y^n to y^7 below |y| = 0.1 (Horner, as
   there), mended to the closed form in double above; double: the closed form (1/2 at
   y = 0). */
static inline float curv_fix_f32(float y, float series)
{
    if (fabsf(y) < 0.1f) return series;
    double v = y;
    return (float)((log1p(v) - v / (1.0 + v)) / (v * v));
}

static inline double curv_fix_f64(double y, double series)
{
    (void)series;
    double p = (log1p(y) - y / (1.0 + y)) / (y * y);
    return p != p ? 0.5 : p;
}

#define CURV_SERIES_f32 curv_series_vf32
#define CURV_SERIES_f64 curv_series_vf64
#define LN1P_RATIO_f32 ln1p_ratio_vf32
#define LN1P_RATIO_f64 ln1p_ratio_vf64
#define CURV_FIX_f32 curv_fix_f32
#define CURV_FIX_f64 curv_fix_f64

/* The same on vectors of lanes (vector extensions: the loops do not vectorize by
   themselves). sel: the lanes of a where m is set, else of b. */
#define SEL(V, VI, m, a, b) ((V)(((VI)(a) & (m)) | ((VI)(b) & ~(m))))

/* True if every lane of a mask is set (a tree of ANDs: no lane-by-lane extraction). */
static inline int all_set_vi32(vi_f32 m)
{
    for (int w = L_f32 / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; ++l) m[l] &= m[l + w];
    return m[0] != 0;
}

static inline int all_set_vi64(vi_f64 m)
{
    for (int w = L_f64 / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; ++l) m[l] &= m[l + w];
    return m[0] != 0;
}

#define ALL_SET_f32 all_set_vi32
#define ALL_SET_f64 all_set_vi64

static inline v_f32 ln1p_ratio_vf32(v_f32 y)
{
    typedef v_f32 V;
    typedef vi_f32 VI;
    V p = 0.0850695372f + y * 0;
    p = p * y - 0.141974717f;
    p = p * y + 0.149509788f;
    p = p * y - 0.165879488f;
    p = p * y + 0.199605972f;
    p = p * y - 0.250009686f;
    p = p * y + 0.333339721f;
    const V small = 1.0f - 0.5f * y + y * y * p;
    const VI inside = (y >= -0.292893219f) & (y < 0.414213562f);
    if (all_set_vi32(inside)) return small; /* (a droop below 40 %: every lane on a chip) */
    const V w = 1.0f + y;
    VI bits = (VI)w;
    VI ex = (bits >> 23) - 127;
    bits = (bits & 0x007fffff) | 0x3f800000;
    V f = (V)bits;
    const VI big = f > 1.41421356f;
    f = SEL(V, VI, big, 0.5f * f, f);
    ex -= big; /* big lanes are -1 */
    const V t = f - 1.0f, t2 = t * t;
    V q = 0.0850695372f + t * 0;
    q = q * t - 0.141974717f;
    q = q * t + 0.149509788f;
    q = q * t - 0.165879488f;
    q = q * t + 0.199605972f;
    q = q * t - 0.250009686f;
    q = q * t + 0.333339721f;
    const V ln = t2 * t * q - 0.5f * t2 + t + __builtin_convertvector(ex, V) * 0.693147181f;
    return SEL(V, VI, inside, small, ln / y);
}

static inline v_f64 ln1p_ratio_vf64(v_f64 y)
{
    v_f64 r;
    for (int l = 0; l < L_f64; ++l) r[l] = ln1p_ratio_f64(y[l]);
    return r;
}

static inline v_f32 curv_series_vf32(v_f32 y)
{
    v_f32 p = (float)(-8.0 / 9.0) + y * 0;
    p = (float)(7.0 / 8.0) + p * y;
    p = (float)(-6.0 / 7.0) + p * y;
    p = (float)(5.0 / 6.0) + p * y;
    p = (float)(-4.0 / 5.0) + p * y;
    p = (float)(3.0 / 4.0) + p * y;
    p = (float)(-2.0 / 3.0) + p * y;
    return (float)(1.0 / 2.0) + p * y;
}

static inline v_f64 curv_series_vf64(v_f64 y) { return y * 0; }

#define EXP_f32 expf
#define EXP_f64 exp
#define RINT_f32 rintf
#define RINT_f64 rint
#define FLOOR_f32 floorf
#define FLOOR_f64 floor

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
            v_##SUF tot[16 / L_##SUF];                                                      \
            slot_totals_##SUF(R, 16, is, tot);                                              \
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
                    xfwd16_group_##SUF(SU, R, db, ib, is, rs, ks, tot, e, t0 + s * C, g, noise, lsb, tfs, flags, nb, zb, \
                                       qb, tb, kb);                                         \
                else                                                                        \
                    for (int u = 0; u < su; ++u)                                            \
                        xfwd16_group_##SUF(1, R, db + u, ib + u, is, rs, ks, tot, e, t0 + s * C, g, noise, lsb, tfs, \
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

DEFINE_CROSSING(float, f32)
DEFINE_CROSSING(double, f64)

#pragma GCC pop_options
