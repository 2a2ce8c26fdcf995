/* Adaptive-slot kernel of the column-eta array model (see kernels.py, ChargeFn): slots_fwd /
 * slots_bwd below; the walk it shares with the fused crossing (crossing.c) is in slot_walk.h.
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
 * Speed (the Speed issue; one 16x16 array, batch 1024, AMD EPYC, AVX-512 target): the
 * per-sample slot loop is a chain of dependent vector operations (E *= rho, S -= I0,
 * z += dt S E), latency-bound one sample at a time (~100 ns forward). With 16 columns
 * (the chip's) several samples run interleaved (slots16, 4 forward / 2 backward): forward
 * 104 -> 57 us, forward + backward 362 -> 182 us in one run, same results (the batch
 * sums of the backward to float rounding). Measured and ruled out: 64-byte vectors (one
 * vector per row of 16 columns: no gain, still latency-bound) and branch-free loops one
 * sample at a time (20 % slower). */
#include "slot_walk.h"

#define DEFINE_SLOTS(T, SUF)                                                                \
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
/* Z (B, C) and idx (B, R) of one tile: d (B, R), I0 and rho (R, C) (crossing.c calls it  \
   too: declared in slot_walk.h). */                                                        \
void slots_tile_##SUF(int64_t B, int64_t R, int64_t C, const T *d, const T *it, const T *rt,    \
                      T *z, int64_t *idx) {                                                 \
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
/* g_d (B, R) and the batch sums gi, P (R, C; added to) of one tile (and crossing.c's). */ \
int slots_tile_bwd_##SUF(int64_t B, int64_t R, int64_t C, const T *d, const T *it, const T *rt, \
                         const int64_t *idx, const T *gz, T *gd, T *gi, T *Pt) {            \
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

DEFINE_SLOTS(float, f32)
DEFINE_SLOTS(double, f64)
