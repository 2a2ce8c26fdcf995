/* Adaptive-slot kernel of the column-eta array model (see kernels.py, ChargeFn).
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
 * labkit.model.native. Rows are ranked by counting (stable: ties keep row order). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAXC 1024 /* columns; the Python side checks */

#define DEFINE_SLOTS(T, I, SUF)                                                             \
typedef T v_##SUF __attribute__((vector_size(32), aligned(sizeof(T))));                     \
typedef I vi_##SUF __attribute__((vector_size(32), aligned(sizeof(I))));                    \
enum { L_##SUF = 32 / sizeof(T) };                                                          \
                                                                                            \
static void sort_rows_##SUF(const T *restrict d, int64_t R, int64_t *restrict idx) {        \
    vi_##SUF iota = {0};                                                                    \
    for (int l = 0; l < L_##SUF; ++l) iota[l] = l;                                          \
    for (int64_t c = 0; c < R; c += L_##SUF) {                                              \
        v_##SUF dv = *(const v_##SUF *)(d + c);                                             \
        vi_##SUF r = {0}, pos = iota + (I)c;                                                \
        for (int64_t m = 0; m < R; ++m) {                                                   \
            T dm = d[m];                                                                    \
            r -= (vi_##SUF)(dv > dm);                                                       \
            r -= (vi_##SUF)(dv == dm) & (pos > (I)m);                                       \
        }                                                                                   \
        for (int l = 0; l < L_##SUF; ++l) idx[r[l]] = c + l;                                \
    }                                                                                       \
}                                                                                           \
                                                                                            \
int slots_fwd_##SUF(int64_t n, int64_t B, int64_t R, int64_t C, const T *d, const T *i0,    \
                    const T *rho, T *z, int64_t *idx_out) {                                 \
    enum { L = L_##SUF };                                                                   \
    typedef v_##SUF V;                                                                      \
    if (C > MAXC || C % L || R % L) return 2;                                               \
    V S[MAXC / L], E[MAXC / L], tot[MAXC / L], zb[MAXC / L];                                \
    const int64_t NC = C / L;                                                               \
    for (int64_t t = 0; t < n; ++t) {                                                       \
        const T *it = i0 + t * R * C, *rt = rho + t * R * C;                                \
        for (int64_t c = 0; c < NC; ++c) tot[c] = (V){0};                                   \
        for (int64_t i = 0; i < R; ++i)                                                     \
            for (int64_t c = 0; c < NC; ++c) tot[c] += *(const V *)(it + i * C + c * L);    \
        for (int64_t b = 0; b < B; ++b) {                                                   \
            const T *db = d + (t * B + b) * R;                                              \
            int64_t *ib = idx_out + (t * B + b) * R;                                        \
            sort_rows_##SUF(db, R, ib);                                                     \
            for (int64_t c = 0; c < NC; ++c) { S[c] = tot[c]; E[c] = tot[c] * 0 + 1; zb[c] = (V){0}; } \
            T prev = 0;                                                                     \
            for (int64_t k = 0; k < R; ++k) {                                               \
                T sk = db[ib[k]], dtk = sk - prev;                                          \
                if (k > 0) {                                                                \
                    const T *ip = it + ib[k - 1] * C, *rp = rt + ib[k - 1] * C;             \
                    if (prev > 0)                                                           \
                        for (int64_t c = 0; c < NC; ++c) E[c] *= *(const V *)(rp + c * L);  \
                    for (int64_t c = 0; c < NC; ++c) S[c] -= *(const V *)(ip + c * L);      \
                }                                                                           \
                prev = sk;                                                                  \
                if (dtk != 0)                                                               \
                    for (int64_t c = 0; c < NC; ++c) zb[c] += dtk * S[c] * E[c];            \
            }                                                                               \
            memcpy(z + (t * B + b) * C, zb, sizeof(T) * C);                                 \
        }                                                                                   \
    }                                                                                       \
    return 0;                                                                               \
}                                                                                           \
                                                                                            \
int slots_bwd_##SUF(int64_t n, int64_t B, int64_t R, int64_t C, const T *d, const T *i0,    \
                    const T *rho, const int64_t *idx, const T *gz, T *gd, T *gi0, T *P) {   \
    enum { L = L_##SUF };                                                                   \
    typedef v_##SUF V;                                                                      \
    if (C > MAXC || C % L || R % L) return 2;                                               \
    const int64_t NC = C / L;                                                               \
    V S[MAXC / L], E[MAXC / L], F[MAXC / L], H[MAXC / L], tot[MAXC / L], g[MAXC / L];       \
    V *W = (V *)malloc(sizeof(V) * R * NC);                                                 \
    T *gdt = (T *)malloc(sizeof(T) * R);                                                    \
    if (!W || !gdt) { free(W); free(gdt); return 1; }                                       \
    for (int64_t t = 0; t < n; ++t) {                                                       \
        const T *it = i0 + t * R * C, *rt = rho + t * R * C;                                \
        T *gi = gi0 + t * R * C, *Pt = P + t * R * C;                                       \
        for (int64_t c = 0; c < NC; ++c) tot[c] = (V){0};                                   \
        for (int64_t i = 0; i < R; ++i)                                                     \
            for (int64_t c = 0; c < NC; ++c) tot[c] += *(const V *)(it + i * C + c * L);    \
        for (int64_t b = 0; b < B; ++b) {                                                   \
            const T *db = d + (t * B + b) * R;                                              \
            const int64_t *ib = idx + (t * B + b) * R;                                      \
            T *gdb = gd + (t * B + b) * R;                                                  \
            memcpy(g, gz + (t * B + b) * C, sizeof(T) * C);                                 \
            for (int64_t c = 0; c < NC; ++c) {                                              \
                S[c] = tot[c]; E[c] = tot[c] * 0 + 1; F[c] = (V){0}; H[c] = (V){0};         \
            }                                                                               \
            T prev = 0;                                                                     \
            for (int64_t k = 0; k < R; ++k) { /* forward: g_dt, F, W = dt S E */            \
                T sk = db[ib[k]], dtk = sk - prev;                                          \
                if (k > 0) {                                                                \
                    const T *ip = it + ib[k - 1] * C, *rp = rt + ib[k - 1] * C;             \
                    if (prev > 0)                                                           \
                        for (int64_t c = 0; c < NC; ++c) E[c] *= *(const V *)(rp + c * L);  \
                    for (int64_t c = 0; c < NC; ++c) S[c] -= *(const V *)(ip + c * L);      \
                }                                                                           \
                prev = sk;                                                                  \
                V acc = {0};                                                                \
                T *gr = gi + ib[k] * C;                                                     \
                V *Wk = W + k * NC;                                                         \
                for (int64_t c = 0; c < NC; ++c) {                                          \
                    V se = S[c] * E[c];                                                     \
                    acc += g[c] * se;                                                       \
                    Wk[c] = dtk * se;                                                       \
                    F[c] += dtk * E[c];                                                     \
                    *(V *)(gr + c * L) += g[c] * F[c];                                      \
                }                                                                           \
                T a = 0;                                                                    \
                for (int l = 0; l < L; ++l) a += acc[l];                                    \
                gdt[k] = a;                                                                 \
            }                                                                               \
            for (int64_t k = R - 1; k >= 0; --k) { /* reverse: H_k = sum_{m > k} W_m */     \
                if (db[ib[k]] > 0) {                                                        \
                    T *pr = Pt + ib[k] * C;                                                 \
                    for (int64_t c = 0; c < NC; ++c) *(V *)(pr + c * L) += g[c] * H[c];     \
                }                                                                           \
                const V *Wk = W + k * NC;                                                   \
                for (int64_t c = 0; c < NC; ++c) H[c] += Wk[c];                             \
                gdb[ib[k]] = gdt[k] - (k + 1 < R ? gdt[k + 1] : 0);                         \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    free(W); free(gdt);                                                                     \
    return 0;                                                                               \
}

DEFINE_SLOTS(float, int32_t, f32)
DEFINE_SLOTS(double, int64_t, f64)
