/* The slot walk shared by the array model's kernels: slots.c (the slot kernels,
 * kernels.py ChargeFn) and crossing.c (the fused crossing, kernels.py Crossing). Per type
 * (f32: float with int32 lanes, f64: double with int64 lanes; f32w: float on 64-byte
 * vectors where the target has AVX-512): the 32-byte vector types
 * v_SUF / vi_SUF and their lane count L_SUF, the counting sort of the rows by width
 * (sort_rows), the lane sum (hsum) and the walk itself (slot_totals, slot_start,
 * slot_step, ones16; the equations are in slots.c's header). All static inline: each
 * source that includes this compiles its own copy, inlined where it is used. Also the
 * one-tile slot kernels of slots.c that crossing.c calls on its general path
 * (slots_tile, slots_tile_bwd; hidden: not exported from the library).
 * labkit.model.native hashes this file with the sources that include it (a changed
 * header rebuilds the library). */
#ifndef LABKIT_SLOT_WALK_H
#define LABKIT_SLOT_WALK_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAXC 1024 /* columns; the Python side checks */

#define DEFINE_SLOT_WALK(T, I, SUF, VB)                                                     \
typedef T v_##SUF __attribute__((vector_size(VB), aligned(sizeof(T))));                     \
typedef I vi_##SUF __attribute__((vector_size(VB), aligned(sizeof(I))));                    \
enum { L_##SUF = VB / sizeof(T) };                                                          \
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
static const T ones16_##SUF[16] __attribute__((aligned(64))) = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};

#define DECLARE_SLOT_TILES(T, SUF)                                                          \
__attribute__((visibility("hidden"))) void slots_tile_##SUF(int64_t B, int64_t R, int64_t C, const T *d, \
                                                            const T *it, const T *rt, T *z, int64_t *idx); \
__attribute__((visibility("hidden"))) int slots_tile_bwd_##SUF(int64_t B, int64_t R, int64_t C, const T *d, \
                                                               const T *it, const T *rt, const int64_t *idx, \
                                                               const T *gz, T *gd, T *gi, T *Pt);

DEFINE_SLOT_WALK(float, int32_t, f32, 32)
DEFINE_SLOT_WALK(double, int64_t, f64, 32)
#if defined(__AVX512F__)
/* f32w: float on 64-byte vectors, one per 16 columns: the fused crossing's forward walk
   for 16 columns (crossing.c; a third faster there; its backward stays on 32 bytes,
   where it was faster). */
DEFINE_SLOT_WALK(float, int32_t, f32w, 64)
#define WIDE_f32 f32w
#else
#define WIDE_f32 f32
#endif
#define WIDE_f64 f64
DECLARE_SLOT_TILES(float, f32)
DECLARE_SLOT_TILES(double, f64)

#endif
