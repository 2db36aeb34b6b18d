"""herd's CPU kernels for the decode step, compiled once (torch.utils.cpp_extension, ~30 s,
cached under ~/.cache/torch_extensions).

Decode multiplies one activation row per sequence by every weight matrix, so it is bound by
how fast the weights stream from memory, and, for a small model, by how many operations a step
runs. Two families:

- Matrix products for few activation rows: fp32 / bf16 weights (`dense_mm`: the library GEMV
  streamed at a third of the bandwidth on the benchmark machine) and weights as GGUF stores
  them: int8 in groups with an fp16 scale (Q8_0: w = q * d), or int4 in groups of 32 (Q4_1:
  16 bytes of nibbles, element j in the low nibble of byte j and element j+16 in the high one,
  with an fp16 scale and minimum: w = q * d + m). PyTorch's own weight-only CPU kernels
  (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) ran 2-4x *slower* than the fp32 GEMV
  there (see BENCHMARKS.md). On CPUs with AVX512-VNNI the int8 / int4 products write the
  activations as 16-bit fixed point in two int8 digits per group of 32 and multiply with
  integer dot products (`int8_activations()` says whether, and switches it for A/B runs).
- Fused decode ops, each replacing several PyTorch ops: `rms_norm`, `rope`, `silu_mul`, and
  `paged_decode`, attention of one query per sequence over its K/V read in place through the
  paged cache's slot lists (no gather copy, no padding computed).

AVX-512 code on CPUs that have it, plain loops elsewhere. When no C++ compiler is available
`available()` is False and every caller falls back to PyTorch ops.
"""
from __future__ import annotations

import functools
import logging
import os
import sys

import torch

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cstring>

// a 1-4-row tile template for the activation rows left (the tiles are AVX-512 function
// templates: GCC does not carry their target attribute into a lambda, so a macro picks)
#define TILES(LEFT, CALL) switch (std::min<int64_t>(4, LEFT)) { \
    case 4: CALL(4); break; case 3: CALL(3); break; case 2: CALL(2); break; default: CALL(1); }
// the loop every AVX-512 kernel shares: weight rows n0..n1 four at a time, activation rows in
// tiles of 1-4 (TILE(B) runs one, reading m and n), then REST for the last rows (reading n)
#define TILED_ROWS(TILE, REST) do { \
    int64_t n = n0; \
    for (; n + 4 <= n1; n += 4) \
      for (int64_t m = 0; m < M; m += 4) { TILES(M - m, TILE) } \
    REST; } while (0)

// software prefetch of the weights PFD rows ahead (four-row tiles: the same columns four
// tiles on), into L2: rows here are short (0.3-6 KiB), so a distance along the row runs into
// the tiles being read, and prefetches into L1 (T0) stall on its few miss buffers. Measured on
// 30 SmolLM2-shaped layers streamed from memory: int8 16 -> 26 GB/s, bf16 22 -> 30, fp32 27 -> 31.
static constexpr int64_t PFD = 16;
static inline void pf(const void* p) { _mm_prefetch((const char*)p, _MM_HINT_T1); }

static inline float h2f(uint16_t h) {  // IEEE fp16 -> fp32 without F16C
  uint32_t s = (h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu, b;
  if (e == 0) {
    if (m == 0) { b = s; } else { e = 113; while (!(m & 0x400u)) { m <<= 1; --e; } b = s | (e << 23) | ((m & 0x3ffu) << 13); }
  } else if (e == 31) { b = s | 0x7f800000u | (m << 13); } else { b = s | ((e + 112) << 23) | (m << 13); }
  float f; std::memcpy(&f, &b, 4); return f;
}

// ---- int8 (Q8_0 layout): y[m, n] = sum_g d[n, g] * dot(x_g, q_g), groups of gs (16 | gs) ----

static void i8_rows_ref(const float* x, int64_t M, int64_t K, int64_t gs, const int8_t* w, const uint16_t* d,
                        float* y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t G = K / gs;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t g = 0; g < G; ++g) {
        const float* xg = x + m * K + g * gs; const int8_t* wg = w + n * K + g * gs; float dot = 0.f;
        for (int64_t k = 0; k < gs; ++k) dot += xg[k] * (float)wg[k];
        acc += h2f(d[n * G + g]) * dot;
      }
      y[m * N + n] = acc;
    }
}

// four weight rows at a time (four memory streams), dequantized in registers once and used
// for MB activation rows (MB*4 accumulators)
template <int MB>
__attribute__((target("avx512f,avx512bw,fma,f16c")))
static inline void i8_tile(const float* x, int64_t K, int64_t gs, const int8_t* w, const uint16_t* d,
                           float* y, int64_t N, int64_t n) {
  const int64_t G = K / gs;
  const int8_t* wr[4] = {w + n * K, w + (n + 1) * K, w + (n + 2) * K, w + (n + 3) * K};
  __m512 acc[MB][4];
  for (int m = 0; m < MB; ++m) for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m512 dv[4];
    for (int r = 0; r < 4; ++r) dv[r] = _mm512_set1_ps(_cvtsh_ss(d[(n + r) * G + g]));
    for (int64_t k = g * gs; k < (g + 1) * gs; k += 16) {
      __m512 wv[4];
      if ((k & 63) == 0) for (int r = 0; r < 4; ++r) pf(wr[r] + PFD * K + k);
      for (int r = 0; r < 4; ++r)
        wv[r] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(wr[r] + k)))), dv[r]);
      for (int m = 0; m < MB; ++m) {
        __m512 xv = _mm512_loadu_ps(x + m * K + k);
        for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_fmadd_ps(wv[r], xv, acc[m][r]);
      }
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < 4; ++r) y[m * N + n + r] = _mm512_reduce_add_ps(acc[m][r]);
}

__attribute__((target("avx512f,avx512bw,fma,f16c")))
static void i8_rows_avx512(const float* x, int64_t M, int64_t K, int64_t gs, const int8_t* w, const uint16_t* d,
                           float* y, int64_t N, int64_t n0, int64_t n1) {
#define ONE(B) i8_tile<B>(x + m * K, K, gs, w, d, y + m * N, N, n)
  TILED_ROWS(ONE, i8_rows_ref(x, M, K, gs, w, d, y, N, n, n1));
#undef ONE
}

// ---- fp32 / bf16 weights: y[m, n] = sum_k x[m, k] * w[n, k] ---------------------------------
// (the library GEMV reached ~12 GB/s on the benchmark's AMD CPU, a third of its bandwidth)

template <typename T> static inline float to_f(T v);
template <> inline float to_f<float>(float v) { return v; }
template <> inline float to_f<at::BFloat16>(at::BFloat16 v) { return (float)v; }

template <typename T>
static void f_rows_ref(const float* x, int64_t M, int64_t K, const T* w, float* y, int64_t N, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += x[m * K + k] * to_f<T>(w[n * K + k]);
      y[m * N + n] = acc;
    }
}

__attribute__((target("avx512f,avx512bw")))
static inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f,avx512bw")))
static inline __m512 load16(const at::BFloat16* p) {  // bf16 -> fp32 is a 16-bit shift
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

template <int MB, typename T>
__attribute__((target("avx512f,avx512bw,fma")))
static inline void f_tile(const float* x, int64_t K, const T* w, float* y, int64_t N, int64_t n) {
  const int64_t K16 = K & ~int64_t(15);
  const T* wr[4] = {w + n * K, w + (n + 1) * K, w + (n + 2) * K, w + (n + 3) * K};
  __m512 acc[MB][4];
  for (int m = 0; m < MB; ++m) for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K16; k += 16) {
    __m512 wv[4];
    for (int r = 0; r < 4; ++r) pf(wr[r] + PFD * K + k);
    for (int r = 0; r < 4; ++r) wv[r] = load16(wr[r] + k);
    for (int m = 0; m < MB; ++m) {
      __m512 xv = _mm512_loadu_ps(x + m * K + k);
      for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_fmadd_ps(wv[r], xv, acc[m][r]);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < 4; ++r) {
      float v = _mm512_reduce_add_ps(acc[m][r]);
      for (int64_t k = K16; k < K; ++k) v += x[m * K + k] * to_f<T>(wr[r][k]);
      y[m * N + n + r] = v;
    }
}

template <typename T>
__attribute__((target("avx512f,avx512bw,fma")))
static void f_rows_avx512(const float* x, int64_t M, int64_t K, const T* w, float* y, int64_t N, int64_t n0, int64_t n1) {
#define ONE(B) f_tile<B, T>(x + m * K, K, w, y + m * N, N, n)
  TILED_ROWS(ONE, f_rows_ref<T>(x, M, K, w, y, N, n, n1));
#undef ONE
}

// ---- int4 (Q4_1 layout): y[m, n] = sum_g d[n,g] * dot(x_g, q_g) + m[n,g] * sum(x_g) ------

static void i4_rows_ref(const float* x, const float* xs, int64_t M, int64_t K, const uint8_t* w,
                        const uint16_t* dm, float* y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t G = K / 32;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t g = 0; g < G; ++g) {
        const uint8_t* b = w + (n * G + g) * 16; const float* xg = x + m * K + g * 32; float dot = 0.f;
        for (int j = 0; j < 16; ++j) dot += xg[j] * (float)(b[j] & 15) + xg[j + 16] * (float)(b[j] >> 4);
        acc += h2f(dm[(n * G + g) * 2]) * dot + h2f(dm[(n * G + g) * 2 + 1]) * xs[m * G + g];
      }
      y[m * N + n] = acc;
    }
}

// four weight rows at a time, dequantized in registers (q * d + m) and used for MB activation rows
template <int MB>
__attribute__((target("avx512f,avx512bw,fma,f16c")))
static inline void i4_tile(const float* x, int64_t K, const uint8_t* w, const uint16_t* dm, float* y, int64_t N, int64_t n) {
  const int64_t G = K / 32;
  const __m128i lo4 = _mm_set1_epi8(15);
  __m512 acc[MB][4];
  for (int m = 0; m < MB; ++m) for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < G; ++g) {
    __m512 wl[4], wh[4];
    for (int r = 0; r < 4; ++r) {
      const int64_t row = (n + r) * G + g;
      if ((g & 3) == 0) pf(w + (row + PFD * G) * 16);
      __m128i b = _mm_loadu_si128((const __m128i*)(w + row * 16));
      __m512 d = _mm512_set1_ps(_cvtsh_ss(dm[row * 2])), mn = _mm512_set1_ps(_cvtsh_ss(dm[row * 2 + 1]));
      wl[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b, lo4))), d, mn);
      wh[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), lo4))), d, mn);
    }
    for (int m = 0; m < MB; ++m) {
      __m512 xl = _mm512_loadu_ps(x + m * K + g * 32), xh = _mm512_loadu_ps(x + m * K + g * 32 + 16);
      for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_fmadd_ps(wh[r], xh, _mm512_fmadd_ps(wl[r], xl, acc[m][r]));
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < 4; ++r) y[m * N + n + r] = _mm512_reduce_add_ps(acc[m][r]);
}

__attribute__((target("avx512f,avx512bw,fma,f16c")))
static void i4_rows_avx512(const float* x, const float* xs, int64_t M, int64_t K, const uint8_t* w,
                           const uint16_t* dm, float* y, int64_t N, int64_t n0, int64_t n1) {
#define ONE(B) i4_tile<B>(x + m * K, K, w, dm, y + m * N, N, n)
  TILED_ROWS(ONE, i4_rows_ref(x, xs, M, K, w, dm, y, N, n, n1));
#undef ONE
}

static bool has_avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return ok;
}

// ---- int8 / int4 weights times activations in two int8 digits (AVX512-VNNI) --------------
// Widening every weight to fp32 makes the kernels above compute-bound (~0.25 / ~0.45 vector
// instructions per weight). Here each call first writes the activations as integers, per group
// of 32 with scale d = group max / 127: x = d * (q1 + q2 / 128), q1 = round(x / d) in -127..127
// and q2 = round(128 * (x / d - q1)) in -64..64 (ties to even), a 16-bit-precise fixed point in
// two bytes. vpdpbusd then multiplies 64 byte pairs and sums them in int32: one for each digit,
// 128 * dot(w, q1) + dot(w, q2) (~0.12 / ~0.1 instructions per weight): the kernels become
// bandwidth-bound. (llama.cpp keeps only q1; on SmolLM2 that 8-bit rounding of the activations
// triples the logits' KL divergence from fp32 for int8 weights and adds 0.02 nats for Q4_1.)
// vpdpbusd takes unsigned x signed bytes: Q4_1 nibbles are unsigned already; Q8_0 weights get
// 128 added (a sign-bit flip), and 128 * (128 * sum(q1) + sum(q2)) is subtracted again through
// the group's scales.
//
// Activation layout, per row, zero-padded to whole blocks of 16 groups (512 values):
//   int8: per chunk of 2 groups (64 values), the 64 q1 then the 64 q2; 16 lane scales d / 128
//         (8 per group); per group d * (128 * sum(q1) + sum(q2)) (the compensation).
//   int4: per chunk of 4 groups, for q1 then q2: the low halves (values 0-15 of each group,
//         matching the low nibbles of the weights' 16 bytes), then the high halves; 16 lane
//         scales (4 per group); per group the exact fp32 sum of its values (Q4_1's minimum term).

struct QAct {
  std::vector<int8_t> q;  // (M, 2 * Kp)
  std::vector<float> s;   // (M, S): 16 lane scales per chunk
  std::vector<float> c;   // (M, Gp)
  int64_t Kp, Gp, S;      // padded K, padded groups, lane scales per row
};

static bool vnni_on = true;

static bool has_vnni() {
  static const bool ok = has_avx512() && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
  return ok && vnni_on;
}

// fmt 1: int8 layout, fmt 2: int4 layout (see above). Called only where VNNI (so AVX-512) is.
__attribute__((target("avx512f,avx512bw,avx512vl")))
static QAct quantize_act(const float* x, int64_t M, int64_t K, int fmt) {
  QAct a;
  const int64_t G = K / 32;
  a.Gp = (G + 15) / 16 * 16; a.Kp = a.Gp * 32;
  const int64_t per_chunk = fmt == 1 ? 2 : 4;  // groups per 16 lane scales
  a.S = a.Gp / per_chunk * 16;
  a.q.assign(M * 2 * a.Kp, 0); a.s.assign(M * a.S, 0.f); a.c.assign(M * a.Gp, 0.f);
  constexpr int RND = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      const __m512 v[2] = {_mm512_loadu_ps(x + m * K + g * 32), _mm512_loadu_ps(x + m * K + g * 32 + 16)};
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
      const float d = amax / 127.f, id = d > 0.f ? 1.f / d : 0.f;
      int8_t* qrow = a.q.data() + m * 2 * a.Kp; float* srow = a.s.data() + m * a.S;
      const int64_t chunk = g / per_chunk, i = g % per_chunk;
      int32_t s1 = 0, s2 = 0;
      for (int h = 0; h < 2; ++h) {  // values 16h .. 16h + 15 of the group
        const __m512 t = _mm512_mul_ps(v[h], _mm512_set1_ps(id)), r = _mm512_roundscale_ps(t, RND);
        const __m512i q1 = _mm512_cvtps_epi32(r);
        const __m512i q2 = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(_mm512_sub_ps(t, r), _mm512_set1_ps(128.f)), RND));
        s1 += _mm512_reduce_add_epi32(q1); s2 += _mm512_reduce_add_epi32(q2);
        // where the 16 values go: int8 keeps the order; int4 puts them in the low / high half
        int8_t* o1 = fmt == 1 ? qrow + chunk * 128 + i * 32 + h * 16 : qrow + chunk * 256 + h * 64 + i * 16;
        int8_t* o2 = o1 + (fmt == 1 ? 64 : 128);
        _mm_storeu_si128((__m128i*)o1, _mm512_cvtepi32_epi8(q1));
        _mm_storeu_si128((__m128i*)o2, _mm512_cvtepi32_epi8(q2));
      }
      const int lanes = fmt == 1 ? 8 : 4;
      for (int l = 0; l < lanes; ++l) srow[chunk * 16 + i * lanes + l] = d / 128.f;
      a.c[m * a.Gp + g] = fmt == 1 ? d * (128.f * (float)s1 + (float)s2) : _mm512_reduce_add_ps(_mm512_add_ps(v[0], v[1]));
    }
  return a;
}

template <int MB>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")))
static inline void i8v_tile(const QAct& a, int64_t m0, int64_t K, const int8_t* w, const uint16_t* d, float* y, int64_t N, int64_t n) {
  const int64_t G = K / 32;
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  const __m512i half = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  __m512 acc[MB][4];
  for (int m = 0; m < MB; ++m) for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t g0 = 0; g0 < G; g0 += 16) {
    const int64_t ng = std::min<int64_t>(16, G - g0);
    const __mmask16 dmask = (__mmask16)((1u << ng) - 1);
    __m512 dv[4];
    for (int r = 0; r < 4; ++r) {
      pf(d + (n + r + PFD) * G + g0);
      dv[r] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(dmask, d + (n + r) * G + g0));
    }
    for (int m = 0; m < MB; ++m) {  // the compensation for the +128 on the weights
      const __m512 cv = _mm512_loadu_ps(a.c.data() + (m0 + m) * a.Gp + g0);
      for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_fnmadd_ps(dv[r], cv, acc[m][r]);
    }
    for (int64_t c = 0; 2 * c < ng; ++c) {
      const int64_t k = (g0 + 2 * c) * 32;
      const __mmask64 wmask = 2 * c + 1 < ng ? ~0ULL : 0xFFFFFFFFULL;
      const __m512i idx = _mm512_add_epi32(half, _mm512_set1_epi32((int)(2 * c)));
      __m512i wv[4]; __m512 sv[4];
      for (int r = 0; r < 4; ++r) {
        const int8_t* wp = w + (n + r) * K + k;
        pf(wp + PFD * K);
        wv[r] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(wmask, wp), flip);
        sv[r] = _mm512_permutexvar_ps(idx, dv[r]);
      }
      for (int m = 0; m < MB; ++m) {
        const int8_t* xq = a.q.data() + (m0 + m) * 2 * a.Kp + 2 * k;
        const __m512i x1 = _mm512_loadu_si512((const void*)xq), x2 = _mm512_loadu_si512((const void*)(xq + 64));
        const __m512 xs = _mm512_loadu_ps(a.s.data() + (m0 + m) * a.S + (g0 / 2 + c) * 16);
        for (int r = 0; r < 4; ++r) {
          const __m512i hi = _mm512_slli_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[r], x1), 7);
          const __m512i dot = _mm512_dpbusd_epi32(hi, wv[r], x2);
          acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(sv[r], xs), acc[m][r]);
        }
      }
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < 4; ++r) y[(m0 + m) * N + n + r] = _mm512_reduce_add_ps(acc[m][r]);
}

template <int MB>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")))
static inline void i4v_tile(const QAct& a, int64_t m0, int64_t K, const uint8_t* w, const uint16_t* dm, float* y, int64_t N, int64_t n) {
  const int64_t G = K / 32;
  const __m512i lo4 = _mm512_set1_epi8(15);
  const __m512i quarter = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  __m512 acc[MB][4];
  for (int m = 0; m < MB; ++m) for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t g0 = 0; g0 < G; g0 += 16) {
    const int64_t ng = std::min<int64_t>(16, G - g0);
    const __mmask32 pmask = ng == 16 ? ~0u : (__mmask32)((1u << (2 * ng)) - 1);
    __m512 dv[4];
    for (int r = 0; r < 4; ++r) {  // (scale, min) of 16 groups -> scales in dv, minimum term now
      pf(dm + ((n + r + PFD) * G + g0) * 2);
      const __m512i raw = _mm512_maskz_loadu_epi16(pmask, dm + ((n + r) * G + g0) * 2);
      const __m512 p0 = _mm512_cvtph_ps(_mm512_castsi512_si256(raw)), p1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(raw, 1));
      dv[r] = _mm512_permutex2var_ps(p0, even, p1);
      const __m512 mv = _mm512_permutex2var_ps(p0, odd, p1);
      for (int m = 0; m < MB; ++m)
        acc[m][r] = _mm512_fmadd_ps(mv, _mm512_loadu_ps(a.c.data() + (m0 + m) * a.Gp + g0), acc[m][r]);
    }
    for (int64_t c = 0; 4 * c < ng; ++c) {
      const int64_t g = g0 + 4 * c, left = std::min<int64_t>(4, ng - 4 * c);
      const __mmask64 wmask = left == 4 ? ~0ULL : ((1ULL << (16 * left)) - 1);
      const __m512i idx = _mm512_add_epi32(quarter, _mm512_set1_epi32((int)(4 * c)));
      __m512i wl[4], wh[4]; __m512 sv[4];
      for (int r = 0; r < 4; ++r) {
        const uint8_t* wp = w + ((n + r) * G + g) * 16;
        pf(wp + PFD * G * 16);
        const __m512i b = _mm512_maskz_loadu_epi8(wmask, wp);
        wl[r] = _mm512_and_si512(b, lo4);
        wh[r] = _mm512_and_si512(_mm512_srli_epi16(b, 4), lo4);
        sv[r] = _mm512_permutexvar_ps(idx, dv[r]);
      }
      for (int m = 0; m < MB; ++m) {
        const int8_t* xq = a.q.data() + (m0 + m) * 2 * a.Kp + g * 64;
        const __m512i x1l = _mm512_loadu_si512((const void*)xq), x1h = _mm512_loadu_si512((const void*)(xq + 64));
        const __m512i x2l = _mm512_loadu_si512((const void*)(xq + 128)), x2h = _mm512_loadu_si512((const void*)(xq + 192));
        const __m512 xs = _mm512_loadu_ps(a.s.data() + (m0 + m) * a.S + (g / 4) * 16);
        for (int r = 0; r < 4; ++r) {
          __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wl[r], x1l), wh[r], x1h);
          dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_slli_epi32(dot, 7), wl[r], x2l), wh[r], x2h);
          acc[m][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(sv[r], xs), acc[m][r]);
        }
      }
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < 4; ++r) y[(m0 + m) * N + n + r] = _mm512_reduce_add_ps(acc[m][r]);
}

// the same sums for the last N % 4 weight rows, one at a time (plain C++)
static void i8v_rows_ref(const QAct& a, int64_t M, int64_t K, const int8_t* w, const uint16_t* d, float* y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t G = K / 32;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t g = 0; g < G; ++g) {
        const int8_t* xq = a.q.data() + m * 2 * a.Kp + (g / 2) * 128 + (g % 2) * 32; int32_t dot = 0;
        for (int j = 0; j < 32; ++j) dot += (128 * (int32_t)xq[j] + xq[64 + j]) * (int32_t)w[n * K + g * 32 + j];
        acc += h2f(d[n * G + g]) * a.s[m * a.S + (g / 2) * 16 + (g % 2) * 8] * (float)dot;
      }
      y[m * N + n] = acc;
    }
}

static void i4v_rows_ref(const QAct& a, int64_t M, int64_t K, const uint8_t* w, const uint16_t* dm, float* y, int64_t N, int64_t n0, int64_t n1) {
  const int64_t G = K / 32;
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t g = 0; g < G; ++g) {
        const int8_t* xq = a.q.data() + m * 2 * a.Kp + (g / 4) * 256 + (g % 4) * 16;
        const uint8_t* b = w + (n * G + g) * 16; int32_t dot = 0;
        for (int j = 0; j < 16; ++j)
          dot += (int32_t)(b[j] & 15) * (128 * xq[j] + xq[128 + j]) + (int32_t)(b[j] >> 4) * (128 * xq[64 + j] + xq[192 + j]);
        acc += h2f(dm[(n * G + g) * 2]) * a.s[m * a.S + (g / 4) * 16 + (g % 4) * 4] * (float)dot
             + h2f(dm[(n * G + g) * 2 + 1]) * a.c[m * a.Gp + g];
      }
      y[m * N + n] = acc;
    }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")))
static void i8v_rows_avx512(const QAct& a, int64_t M, int64_t K, const int8_t* w, const uint16_t* d, float* y, int64_t N, int64_t n0, int64_t n1) {
#define ONE(B) i8v_tile<B>(a, m, K, w, d, y, N, n)
  TILED_ROWS(ONE, i8v_rows_ref(a, M, K, w, d, y, N, n, n1));
#undef ONE
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")))
static void i4v_rows_avx512(const QAct& a, int64_t M, int64_t K, const uint8_t* w, const uint16_t* dm, float* y, int64_t N, int64_t n0, int64_t n1) {
#define ONE(B) i4v_tile<B>(a, m, K, w, dm, y, N, n)
  TILED_ROWS(ONE, i4v_rows_ref(a, M, K, w, dm, y, N, n, n1));
#undef ONE
}

bool int8_activations(int64_t mode) {  // mode 0 / 1 turns the VNNI path off / on; < 0 asks
  if (mode >= 0) vnni_on = mode != 0;
  return has_vnni();
}

static void check_x(const at::Tensor& x, int64_t K) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.size(1) == K,
              "x must be a contiguous fp32 (M, K) tensor");
}

at::Tensor int8_mm(at::Tensor x, at::Tensor w, at::Tensor d) {
  // w (N, K) int8; d (N, K/gs) fp16 scales, gs a multiple of 16
  const int64_t M = x.size(0), K = w.size(1), N = w.size(0);
  check_x(x, K);
  TORCH_CHECK(w.scalar_type() == at::kChar && w.is_contiguous());
  TORCH_CHECK(d.scalar_type() == at::kHalf && d.is_contiguous() && d.dim() == 2 && d.size(0) == N);
  const int64_t gs = K / d.size(1);
  TORCH_CHECK(gs * d.size(1) == K && gs % 16 == 0, "int8 group size must divide K and be a multiple of 16");
  auto y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>(); const int8_t* wp = w.data_ptr<int8_t>();
  const uint16_t* dp = reinterpret_cast<const uint16_t*>(d.data_ptr<at::Half>());
  float* yp = y.data_ptr<float>();
  const bool fast = has_avx512();
  // chunks of rows: a multiple of 4, about 64 KiB of weights each
  const int64_t grain = std::max<int64_t>(4, ((65536 / std::max<int64_t>(K, 1)) + 3) & ~int64_t(3));
  if (gs == 32 && has_vnni()) {
    const QAct a = quantize_act(xp, M, K, 1);
    at::parallel_for(0, (N + 3) / 4, std::max<int64_t>(1, grain / 4), [&](int64_t b, int64_t e) {
      i8v_rows_avx512(a, M, K, wp, dp, yp, N, b * 4, std::min(N, e * 4));
    });
    return y;
  }
  at::parallel_for(0, (N + 3) / 4, std::max<int64_t>(1, grain / 4), [&](int64_t b, int64_t e) {
    const int64_t n0 = b * 4, n1 = std::min(N, e * 4);
    if (fast) i8_rows_avx512(xp, M, K, gs, wp, dp, yp, N, n0, n1); else i8_rows_ref(xp, M, K, gs, wp, dp, yp, N, n0, n1);
  });
  return y;
}

at::Tensor int4_mm(at::Tensor x, at::Tensor w, at::Tensor dm) {
  // w (N, K/2) uint8 in Q4_1 order; dm (N, K/32, 2) fp16 (scale, min)
  const int64_t M = x.size(0), N = w.size(0), K = w.size(1) * 2, G = K / 32;
  check_x(x, K);
  TORCH_CHECK(K % 32 == 0 && w.scalar_type() == at::kByte && w.is_contiguous());
  TORCH_CHECK(dm.scalar_type() == at::kHalf && dm.is_contiguous() && dm.numel() == N * G * 2);
  const bool fast = has_avx512(), vnni = has_vnni();
  // (M, G) group sums for the minimum term of the plain loop (the AVX-512 tiles dequantize
  // instead, but hand the last N % 4 rows to the plain loop)
  auto xs = vnni ? at::empty({0}, x.options()) : x.view({M, G, 32}).sum(-1).contiguous();
  auto y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>(); const float* xsp = xs.data_ptr<float>();
  const uint8_t* wp = w.data_ptr<uint8_t>(); const uint16_t* dp = reinterpret_cast<const uint16_t*>(dm.data_ptr<at::Half>());
  float* yp = y.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(4, ((131072 / std::max<int64_t>(K, 1)) + 3) & ~int64_t(3));
  if (vnni) {
    const QAct a = quantize_act(xp, M, K, 2);
    at::parallel_for(0, (N + 3) / 4, std::max<int64_t>(1, grain / 4), [&](int64_t b, int64_t e) {
      i4v_rows_avx512(a, M, K, wp, dp, yp, N, b * 4, std::min(N, e * 4));
    });
    return y;
  }
  at::parallel_for(0, (N + 3) / 4, std::max<int64_t>(1, grain / 4), [&](int64_t b, int64_t e) {
    const int64_t n0 = b * 4, n1 = std::min(N, e * 4);
    if (fast) i4_rows_avx512(xp, xsp, M, K, wp, dp, yp, N, n0, n1); else i4_rows_ref(xp, xsp, M, K, wp, dp, yp, N, n0, n1);
  });
  return y;
}

// bf16 weights on CPUs with AVX512-BF16: activations rounded to bf16 once per call, then one
// vdpbf16ps per 32 weights (pairs multiplied, summed in fp32) instead of widening every weight
template <int MB>
__attribute__((target("avx512f,avx512bw,avx512bf16")))
static inline void bf_tile(const uint16_t* x, int64_t K, const uint16_t* w, float* y, int64_t N, int64_t n) {
  const uint16_t* wr[4] = {w + n * K, w + (n + 1) * K, w + (n + 2) * K, w + (n + 3) * K};
  __m512 acc[MB][4];
  for (int m = 0; m < MB; ++m) for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    __m512i wv[4];
    for (int r = 0; r < 4; ++r) {
      pf(wr[r] + PFD * K + k);
      wv[r] = _mm512_loadu_si512((const void*)(wr[r] + k));
    }
    for (int m = 0; m < MB; ++m) {
      const __m512i xv = _mm512_loadu_si512((const void*)(x + m * K + k));
      for (int r = 0; r < 4; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], (__m512bh)wv[r], (__m512bh)xv);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < 4; ++r) y[m * N + n + r] = _mm512_reduce_add_ps(acc[m][r]);
}

static void bf_rows_ref(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, float* y, int64_t N, int64_t n0, int64_t n1) {
  auto f = [](uint16_t h) { uint32_t b = (uint32_t)h << 16; float v; std::memcpy(&v, &b, 4); return v; };
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += f(x[m * K + k]) * f(w[n * K + k]);
      y[m * N + n] = acc;
    }
}

__attribute__((target("avx512f,avx512bw,avx512bf16")))
static void bf_rows_avx512(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, float* y, int64_t N, int64_t n0, int64_t n1) {
#define ONE(B) bf_tile<B>(x + m * K, K, w, y + m * N, N, n)
  TILED_ROWS(ONE, bf_rows_ref(x, M, K, w, y, N, n, n1));
#undef ONE
}

static bool has_avx512bf16() {
  static const bool ok = has_avx512() && __builtin_cpu_supports("avx512bf16");
  return ok;
}

at::Tensor dense_mm(at::Tensor x, at::Tensor w) {
  // w (N, K) fp32 or bf16, x (M, K) fp32 -> (M, N) fp32
  const int64_t M = x.size(0), N = w.size(0), K = w.size(1);
  check_x(x, K);
  TORCH_CHECK(w.is_contiguous() && (w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16));
  auto y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>(); float* yp = y.data_ptr<float>();
  const bool fast = has_avx512();
  const int64_t bytes = K * w.element_size();
  const int64_t grain = std::max<int64_t>(4, ((131072 / std::max<int64_t>(bytes, 1)) + 3) & ~int64_t(3));
  if (w.scalar_type() == at::kBFloat16 && K % 32 == 0 && has_avx512bf16()) {
    auto xb = x.to(at::kBFloat16);  // round to nearest even, once for all weight rows
    const uint16_t* xbp = reinterpret_cast<const uint16_t*>(xb.data_ptr<at::BFloat16>());
    const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
    at::parallel_for(0, (N + 3) / 4, std::max<int64_t>(1, grain / 4), [&](int64_t b, int64_t e) {
      bf_rows_avx512(xbp, M, K, wp, yp, N, b * 4, std::min(N, e * 4));
    });
    return y;
  }
  at::parallel_for(0, (N + 3) / 4, std::max<int64_t>(1, grain / 4), [&](int64_t b, int64_t e) {
    const int64_t n0 = b * 4, n1 = std::min(N, e * 4);
    if (w.scalar_type() == at::kFloat) {
      const float* wp = w.data_ptr<float>();
      if (fast) f_rows_avx512<float>(xp, M, K, wp, yp, N, n0, n1); else f_rows_ref<float>(xp, M, K, wp, yp, N, n0, n1);
    } else {
      const at::BFloat16* wp = w.data_ptr<at::BFloat16>();
      if (fast) f_rows_avx512<at::BFloat16>(xp, M, K, wp, yp, N, n0, n1); else f_rows_ref<at::BFloat16>(xp, M, K, wp, yp, N, n0, n1);
    }
  });
  return y;
}

// ---- dequantization to fp32 (N, K), for the dense GEMM of prefill / big batches ----------

at::Tensor int8_dequant(at::Tensor w, at::Tensor d) {
  const int64_t N = w.size(0), K = w.size(1), G = d.size(1), gs = K / G;
  TORCH_CHECK(w.scalar_type() == at::kChar && w.is_contiguous() && d.scalar_type() == at::kHalf && d.is_contiguous());
  auto out = at::empty({N, K}, w.options().dtype(at::kFloat));
  const int8_t* wp = w.data_ptr<int8_t>(); const uint16_t* dp = reinterpret_cast<const uint16_t*>(d.data_ptr<at::Half>());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N * G, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float sc = h2f(dp[i]);
      for (int64_t k = 0; k < gs; ++k) op[i * gs + k] = sc * (float)wp[i * gs + k];
    }
  });
  return out;
}

at::Tensor int4_dequant(at::Tensor w, at::Tensor dm) {
  const int64_t N = w.size(0), K = w.size(1) * 2, G = K / 32;
  TORCH_CHECK(w.scalar_type() == at::kByte && w.is_contiguous() && dm.scalar_type() == at::kHalf && dm.is_contiguous());
  auto out = at::empty({N, K}, w.options().dtype(at::kFloat));
  const uint8_t* wp = w.data_ptr<uint8_t>(); const uint16_t* dp = reinterpret_cast<const uint16_t*>(dm.data_ptr<at::Half>());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, N * G, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float sc = h2f(dp[2 * i]), mn = h2f(dp[2 * i + 1]);
      for (int j = 0; j < 16; ++j) {
        op[i * 32 + j] = sc * (float)(wp[i * 16 + j] & 15) + mn;
        op[i * 32 + j + 16] = sc * (float)(wp[i * 16 + j] >> 4) + mn;
      }
    }
  });
  return out;
}

// ---- decode-step element-wise ops, fused (each replaces 2-10 PyTorch ops and their dispatch) --

// y = x * rsqrt(mean(x^2) + eps) * w over the last dim; x (M, D) fp32, w (D) fp32
at::Tensor rms_norm(at::Tensor x, at::Tensor w, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "rms_norm: x must be contiguous fp32 (M, D)");
  const int64_t M = x.size(0), D = x.size(1);
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous() && w.numel() == D, "rms_norm: w must be fp32 (D,)");
  auto y = at::empty_like(x);
  const float* xp = x.data_ptr<float>(); const float* wp = w.data_ptr<float>(); float* yp = y.data_ptr<float>();
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)), [&](int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) {
      const float* xr = xp + m * D; float* yr = yp + m * D; float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < D; ++i) ss += xr[i] * xr[i];
      const float r = 1.f / std::sqrt(ss / (float)D + (float)eps);
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) yr[i] = (xr[i] * r) * wp[i];
    }
  });
  return y;
}

// rotate adjacent pairs of x (N, H, D) fp32 by angle tables cos/sin (T, D/2): row n uses n % T.
// Rows may be strided (the Q or K heads of a fused QKV projection); the result is contiguous.
at::Tensor rope(at::Tensor x, at::Tensor cos, at::Tensor sin) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == at::kFloat && x.stride(2) == 1 && x.stride(1) == x.size(2) && x.size(2) % 2 == 0,
              "rope: x must be fp32 (N, H, D) with contiguous heads");
  const int64_t N = x.size(0), H = x.size(1), D = x.size(2), P = D / 2, T = cos.size(0), rs = x.stride(0);
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.is_contiguous() && sin.is_contiguous() &&
              cos.dim() == 2 && cos.size(1) == P && sin.sizes() == cos.sizes() && T > 0 && N % T == 0, "rope: cos/sin must be fp32 (T, D/2)");
  auto y = at::empty({N, H, D}, x.options());
  const float* xp = x.data_ptr<float>(); const float* cp = cos.data_ptr<float>(); const float* sp = sin.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, std::max<int64_t>(1, 8192 / std::max<int64_t>(H * D, 1)), [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const float* c = cp + (n % T) * P; const float* s = sp + (n % T) * P;
      for (int64_t h = 0; h < H; ++h) {
        const float* xr = xp + n * rs + h * D; float* yr = yp + (n * H + h) * D;
#pragma omp simd
        for (int64_t i = 0; i < P; ++i) {
          const float x0 = xr[2 * i], x1 = xr[2 * i + 1];
          yr[2 * i] = x0 * c[i] - x1 * s[i];
          yr[2 * i + 1] = x0 * s[i] + x1 * c[i];
        }
      }
    }
  });
  return y;
}

// silu(a) * b for gu (M, 2F) = [a | b] fp32 -> (M, F)
// e^x for 16 floats: 2^n * e^r with n = round(x / ln 2), r = x - n ln 2 (|r| <= 0.35, ln 2 in two
// parts) and a degree-7 Taylor polynomial for e^r (relative error ~1e-7); x clamped to +-88
__attribute__((target("avx512f")))
static inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.f)), _mm512_set1_ps(88.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040.f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

static void silu_mul_row(const float* a, const float* u, float* y, int64_t F) {
  for (int64_t i = 0; i < F; ++i) y[i] = a[i] / (1.f + std::exp(-a[i])) * u[i];
}

__attribute__((target("avx512f")))
static void silu_mul_row_avx512(const float* a, const float* u, float* y, int64_t F) {
  int64_t i = 0;
  for (; i + 16 <= F; i += 16) {
    const __m512 av = _mm512_loadu_ps(a + i);
    const __m512 s = _mm512_div_ps(av, _mm512_add_ps(_mm512_set1_ps(1.f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), av))));
    _mm512_storeu_ps(y + i, _mm512_mul_ps(s, _mm512_loadu_ps(u + i)));
  }
  silu_mul_row(a + i, u + i, y + i, F - i);
}

at::Tensor silu_mul(at::Tensor gu) {
  TORCH_CHECK(gu.dim() == 2 && gu.scalar_type() == at::kFloat && gu.is_contiguous() && gu.size(1) % 2 == 0,
              "silu_mul: expected contiguous fp32 (M, 2F)");
  const int64_t M = gu.size(0), F = gu.size(1) / 2;
  auto y = at::empty({M, F}, gu.options());
  const float* gp = gu.data_ptr<float>(); float* yp = y.data_ptr<float>();
  const bool fast = has_avx512();
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(F, 1)), [&](int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) {
      const float* a = gp + m * 2 * F;
      if (fast) silu_mul_row_avx512(a, a + F, yp + m * F, F); else silu_mul_row(a, a + F, yp + m * F, F);
    }
  });
  return y;
}

// p[j] = exp(p[j] - max) in place, for a softmax computed in parts; returns (max, sum)
static std::pair<float, float> exp_row(float* p, int64_t L) {
  float mx = -INFINITY, sum = 0.f;
  for (int64_t j = 0; j < L; ++j) mx = std::max(mx, p[j]);
  for (int64_t j = 0; j < L; ++j) { p[j] = std::exp(p[j] - mx); sum += p[j]; }
  return {mx, sum};
}

__attribute__((target("avx512f")))
static std::pair<float, float> exp_row_avx512(float* p, int64_t L) {
  const int64_t L16 = L & ~int64_t(15);
  __m512 mv = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < L16; j += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(p + j));
  float mx = _mm512_reduce_max_ps(mv);
  for (int64_t j = L16; j < L; ++j) mx = std::max(mx, p[j]);
  const __m512 m = _mm512_set1_ps(mx);
  __m512 sv = _mm512_setzero_ps();
  for (int64_t j = 0; j < L16; j += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p + j), m));
    _mm512_storeu_ps(p + j, e);
    sv = _mm512_add_ps(sv, e);
  }
  float sum = _mm512_reduce_add_ps(sv);
  for (int64_t j = L16; j < L; ++j) { p[j] = std::exp(p[j] - mx); sum += p[j]; }
  return {mx, sum};
}

// ---- paged attention for decode: one query per sequence, K/V read through its slot list ------
// q (B, H, D) fp32; kc / vc (Hkv, S, D) fp32 or bf16 (one layer of the paged cache); slots (B, W)
// int64 (cache slot of each position, padded); lens (B,) int64 (positions to attend) -> (B, H, D)
// fp32. A task is one (sequence, KV head, span of up to PAGED_SPAN positions): it reads its keys
// and values once for all the query heads of its group and leaves an unnormalised output with
// its softmax max and sum; a second pass merges a sequence's spans. Spans keep both threads busy
// when one sequence has fewer KV heads than there are threads (SmolLM2: 3 on 2 cores). No gather
// copy, no padding computed, and a sequence's result does not depend on the rest of the batch
// (its spans depend on its own length only).

static constexpr int64_t PAGED_SPAN = 64;

// the task's part: o (rep, D) unnormalised, then max (rep) and sum (rep)
template <typename T, bool FAST>
static inline __attribute__((always_inline)) void paged_task(const float* q, const T* kg, const T* vg, const int64_t* sl, int64_t L, int64_t S, int64_t rep,
                       int64_t D, float scale, float* part, std::vector<float>& sc) {
  sc.assign(rep * L, 0.f);
  const int64_t row_bytes = D * (int64_t)sizeof(T);
  for (int64_t j = 0; j < L; ++j) {
    TORCH_CHECK(sl[j] >= 0 && sl[j] < S, "paged_decode: slot out of range");
    if (j + 8 < L && sl[j + 8] >= 0 && sl[j + 8] < S)  // the next rows: the slot list defeats the hardware prefetcher
      for (int64_t o = 0; o < row_bytes; o += 64) {
        _mm_prefetch((const char*)(kg + sl[j + 8] * D) + o, _MM_HINT_T0);
        _mm_prefetch((const char*)(vg + sl[j + 8] * D) + o, _MM_HINT_T1);
      }
    const T* kr = kg + sl[j] * D;
    for (int64_t r = 0; r < rep; ++r) {
      const float* qr = q + r * D; float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < D; ++i) s += qr[i] * (float)kr[i];
      sc[r * L + j] = s * scale;
    }
  }
  for (int64_t r = 0; r < rep; ++r) {
    const auto ms = FAST ? exp_row_avx512(sc.data() + r * L, L) : exp_row(sc.data() + r * L, L);
    part[rep * D + r] = ms.first; part[rep * D + rep + r] = ms.second;
    std::memset(part + r * D, 0, D * sizeof(float));
  }
  for (int64_t j = 0; j < L; ++j) {
    const T* vr = vg + sl[j] * D;
    for (int64_t r = 0; r < rep; ++r) {
      const float p = sc[r * L + j]; float* o = part + r * D;
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) o[i] += p * (float)vr[i];
    }
  }
}

// AVX-512 version for head sizes that are multiples of 16 (64 and 128 in Llama models): a key
// row is loaded once into registers for all the query heads of its group, and the output rows
// stay in registers while the values stream past (the plain loops above reload them per value)
template <typename T>
__attribute__((target("avx512f,avx512bw,fma")))
static void paged_task_avx512(const float* q, const T* kg, const T* vg, const int64_t* sl, int64_t L, int64_t S, int64_t rep,
                              int64_t D, float scale, float* part, std::vector<float>& sc) {
  if (D % 16 != 0 || D > 256) { paged_task<T, true>(q, kg, vg, sl, L, S, rep, D, scale, part, sc); return; }
  const int64_t nv = D / 16, row_bytes = D * (int64_t)sizeof(T);
  sc.assign(rep * L, 0.f);
  int64_t j = 0;
  for (; j + 4 <= L; j += 4) {  // four keys at a time: one transposing reduction for their four dots
    const T* kr[4];
    for (int t = 0; t < 4; ++t) {
      TORCH_CHECK(sl[j + t] >= 0 && sl[j + t] < S, "paged_decode: slot out of range");
      kr[t] = kg + sl[j + t] * D;
      if (j + t + 8 < L && sl[j + t + 8] >= 0 && sl[j + t + 8] < S)  // the slot list defeats the hardware prefetcher
        for (int64_t o = 0; o < row_bytes; o += 64) {
          _mm_prefetch((const char*)(kg + sl[j + t + 8] * D) + o, _MM_HINT_T0);
          _mm_prefetch((const char*)(vg + sl[j + t + 8] * D) + o, _MM_HINT_T1);
        }
    }
    for (int64_t r = 0; r < rep; ++r) {
      const float* qr = q + r * D;
      __m512 a[4];
      for (int t = 0; t < 4; ++t) a[t] = _mm512_mul_ps(_mm512_loadu_ps(qr), load16(kr[t]));
      for (int64_t v = 1; v < nv; ++v) {
        const __m512 qv = _mm512_loadu_ps(qr + 16 * v);
        for (int t = 0; t < 4; ++t) a[t] = _mm512_fmadd_ps(qv, load16(kr[t] + 16 * v), a[t]);
      }
      // per 128-bit lane: [a0, a1, a2, a3] partial sums, then the four lanes added
      const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a[0], a[1]), _mm512_unpackhi_ps(a[0], a[1]));
      const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a[2], a[3]), _mm512_unpackhi_ps(a[2], a[3]));
      __m512 s4 = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
      s4 = _mm512_add_ps(s4, _mm512_shuffle_f32x4(s4, s4, _MM_SHUFFLE(1, 0, 3, 2)));
      s4 = _mm512_add_ps(s4, _mm512_shuffle_f32x4(s4, s4, _MM_SHUFFLE(2, 3, 0, 1)));
      _mm_storeu_ps(sc.data() + r * L + j, _mm_mul_ps(_mm512_castps512_ps128(s4), _mm_set1_ps(scale)));
    }
  }
  for (; j < L; ++j) {
    TORCH_CHECK(sl[j] >= 0 && sl[j] < S, "paged_decode: slot out of range");
    if (j + 8 < L && sl[j + 8] >= 0 && sl[j + 8] < S)  // the slot list defeats the hardware prefetcher
      for (int64_t o = 0; o < row_bytes; o += 64) {
        _mm_prefetch((const char*)(kg + sl[j + 8] * D) + o, _MM_HINT_T0);
        _mm_prefetch((const char*)(vg + sl[j + 8] * D) + o, _MM_HINT_T1);
      }
    const T* kr = kg + sl[j] * D;
    __m512 kv[16];
    for (int64_t v = 0; v < nv; ++v) kv[v] = load16(kr + 16 * v);
    for (int64_t r = 0; r < rep; ++r) {
      const float* qr = q + r * D;
      __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(qr), kv[0]);
      for (int64_t v = 1; v < nv; ++v) acc = _mm512_fmadd_ps(_mm512_loadu_ps(qr + 16 * v), kv[v], acc);
      sc[r * L + j] = _mm512_reduce_add_ps(acc) * scale;
    }
  }
  for (int64_t r = 0; r < rep; ++r) {
    const auto ms = exp_row_avx512(sc.data() + r * L, L);
    part[rep * D + r] = ms.first; part[rep * D + rep + r] = ms.second;
  }
  // o[r] = sum_j p[r, j] v_j, for up to 4 heads x 64 values at a time in 16 registers
  for (int64_t r0 = 0; r0 < rep; r0 += 4) {
    const int64_t nr = std::min<int64_t>(4, rep - r0);
    for (int64_t v0 = 0; v0 < nv; v0 += 4) {
      const int64_t nw = std::min<int64_t>(4, nv - v0);
      __m512 acc[4][4];
      for (int r = 0; r < 4; ++r) for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
      for (int64_t j = 0; j < L; ++j) {
        const T* vr = vg + sl[j] * D + 16 * v0;
        __m512 vv[4];
        for (int v = 0; v < 4; ++v) if (v < nw) vv[v] = load16(vr + 16 * v);
        for (int r = 0; r < 4; ++r) {
          if (r >= nr) break;
          const __m512 p = _mm512_set1_ps(sc[(r0 + r) * L + j]);
          for (int v = 0; v < 4; ++v) if (v < nw) acc[r][v] = _mm512_fmadd_ps(p, vv[v], acc[r][v]);
        }
      }
      for (int r = 0; r < nr; ++r)
        for (int v = 0; v < nw; ++v) _mm512_storeu_ps(part + (r0 + r) * D + 16 * (v0 + v), acc[r][v]);
    }
  }
}

at::Tensor paged_decode(at::Tensor q, at::Tensor kc, at::Tensor vc, at::Tensor slots, at::Tensor lens) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat && q.is_contiguous(), "paged_decode: q must be contiguous fp32 (B, H, D)");
  TORCH_CHECK(kc.dim() == 3 && kc.is_contiguous() && vc.is_contiguous() && vc.sizes() == kc.sizes() &&
              kc.scalar_type() == vc.scalar_type() && (kc.scalar_type() == at::kFloat || kc.scalar_type() == at::kBFloat16),
              "paged_decode: kc / vc must be contiguous fp32 or bf16 (Hkv, S, D)");
  TORCH_CHECK(slots.dim() == 2 && slots.scalar_type() == at::kLong && slots.is_contiguous() && slots.size(0) == q.size(0) &&
              lens.scalar_type() == at::kLong && lens.is_contiguous() && lens.numel() == q.size(0), "paged_decode: bad slots / lens");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), Hkv = kc.size(0), S = kc.size(1), W = slots.size(1);
  TORCH_CHECK(kc.size(2) == D && H % Hkv == 0, "paged_decode: head shapes do not match");
  const int64_t rep = H / Hkv, P = rep * (D + 2);  // floats per task part
  const int64_t* sp = slots.data_ptr<int64_t>(); const int64_t* lp = lens.data_ptr<int64_t>();
  std::vector<int64_t> first(B + 1, 0);  // the first task of each sequence
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lp[b] > 0 && lp[b] <= W, "paged_decode: length out of range");
    first[b + 1] = first[b] + Hkv * ((lp[b] + PAGED_SPAN - 1) / PAGED_SPAN);
  }
  std::vector<float> parts(first[B] * P);
  auto out = at::empty({B, H, D}, q.options());
  const float* qp = q.data_ptr<float>(); float* op = out.data_ptr<float>();
  const float scale = 1.f / std::sqrt((float)D);
  const bool fast = has_avx512();
  at::parallel_for(0, first[B], 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> sc;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = std::upper_bound(first.begin(), first.end(), t) - first.begin() - 1;
      const int64_t spans = (first[b + 1] - first[b]) / Hkv, g = (t - first[b]) / spans, s = (t - first[b]) % spans;
      const int64_t j0 = s * PAGED_SPAN, n = std::min(PAGED_SPAN, lp[b] - j0);
      const float* qg = qp + (b * H + g * rep) * D; float* part = parts.data() + t * P;
      const int64_t* sl = sp + b * W + j0;
      if (kc.scalar_type() == at::kFloat) {
        const float* kg = kc.data_ptr<float>() + g * S * D; const float* vg = vc.data_ptr<float>() + g * S * D;
        if (fast) paged_task_avx512<float>(qg, kg, vg, sl, n, S, rep, D, scale, part, sc);
        else paged_task<float, false>(qg, kg, vg, sl, n, S, rep, D, scale, part, sc);
      } else {
        const at::BFloat16* kg = kc.data_ptr<at::BFloat16>() + g * S * D; const at::BFloat16* vg = vc.data_ptr<at::BFloat16>() + g * S * D;
        if (fast) paged_task_avx512<at::BFloat16>(qg, kg, vg, sl, n, S, rep, D, scale, part, sc);
        else paged_task<at::BFloat16, false>(qg, kg, vg, sl, n, S, rep, D, scale, part, sc);
      }
    }
  });
  // merge each (sequence, KV head)'s spans: out = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s
  at::parallel_for(0, B * Hkv, 16, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / Hkv, g = u % Hkv, spans = (first[b + 1] - first[b]) / Hkv;
      const float* p0 = parts.data() + (first[b] + g * spans) * P;
      for (int64_t r = 0; r < rep; ++r) {
        float M = -INFINITY, l = 0.f;
        for (int64_t s = 0; s < spans; ++s) M = std::max(M, p0[s * P + rep * D + r]);
        float* o = op + (b * H + g * rep + r) * D;
        std::memset(o, 0, D * sizeof(float));
        for (int64_t s = 0; s < spans; ++s) {
          const float* ps = p0 + s * P; const float w = std::exp(ps[rep * D + r] - M);
          l += w * ps[rep * D + rep + r];
          for (int64_t i = 0; i < D; ++i) o[i] += w * ps[r * D + i];
        }
        const float inv = 1.f / l;
        for (int64_t i = 0; i < D; ++i) o[i] *= inv;
      }
    }
  });
  return out;
}

// ---- one whole transformer block for a decode step, in one call --------------------------
// A small model's decode step is dominated by per-op overhead (a Python call and a dispatch
// per op, ~35 ops per block); this runs the block's ops back to back in C++. Projections are
// given as (format, tensor, tensor): 0 dense fp32/bf16 (w), 1 int8 (w, d), 2 int4 (w, dm).
// Same kernels as the per-op path, in the same order: the results are identical.

static at::Tensor proj(const at::Tensor& x, int64_t fmt, const at::Tensor& a, const at::Tensor& b) {
  switch (fmt) {
    case 0: return dense_mm(x, a);
    case 1: return int8_mm(x, a, b);
    case 2: return int4_mm(x, a, b);
    default: TORCH_CHECK(false, "decode_layer: unknown projection format ", fmt);
  }
}

// t: attention-norm w, ffn-norm w, then (a, b) for wqkv, wo, w13, w2 (b unused for dense)
at::Tensor decode_layer(at::Tensor x, std::vector<at::Tensor> t, std::vector<int64_t> fmt, double eps, int64_t H, int64_t Hkv,
                        at::Tensor cos, at::Tensor sin, at::Tensor kc, at::Tensor vc, at::Tensor slot_mapping,
                        at::Tensor slots, at::Tensor lens) {
  TORCH_CHECK(t.size() == 10 && fmt.size() == 4, "decode_layer: expected 10 tensors and 4 formats");
  TORCH_CHECK((kc.scalar_type() == at::kFloat || kc.scalar_type() == at::kBFloat16) && vc.scalar_type() == kc.scalar_type() &&
              kc.is_contiguous() && vc.is_contiguous(), "decode_layer: the KV cache must be contiguous fp32 or bf16");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.is_contiguous() && slot_mapping.numel() == x.size(0),
              "decode_layer: one cache slot per row");
  const int64_t M = x.size(0), D = kc.size(2), S = kc.size(1);
  auto n1 = rms_norm(x, t[0], eps);
  auto qkv = proj(n1, fmt[0], t[2], t[3]).view({M, H + 2 * Hkv, D});
  auto q = rope(qkv.narrow(1, 0, H), cos, sin);       // (M, H, D)
  auto k = rope(qkv.narrow(1, H, Hkv), cos, sin);     // (M, Hkv, D)
  {  // store this step's K / V in their cache slots (bf16: rounded to nearest even)
    const float* kp = k.data_ptr<float>(); const float* qkvp = qkv.data_ptr<float>();
    const int64_t* sm = slot_mapping.data_ptr<int64_t>();
    const bool bf = kc.scalar_type() == at::kBFloat16;
    for (int64_t m = 0; m < M; ++m) {
      TORCH_CHECK(sm[m] >= 0 && sm[m] < S, "decode_layer: slot out of range");
      for (int64_t g = 0; g < Hkv; ++g) {
        const float* ks = kp + (m * Hkv + g) * D; const float* vs = qkvp + (m * (H + 2 * Hkv) + H + Hkv + g) * D;
        const int64_t at_ = (g * S + sm[m]) * D;
        if (bf) {
          at::BFloat16* kd = kc.data_ptr<at::BFloat16>() + at_; at::BFloat16* vd = vc.data_ptr<at::BFloat16>() + at_;
          for (int64_t i = 0; i < D; ++i) { kd[i] = at::BFloat16(ks[i]); vd[i] = at::BFloat16(vs[i]); }
        } else {
          std::memcpy(kc.data_ptr<float>() + at_, ks, D * sizeof(float));
          std::memcpy(vc.data_ptr<float>() + at_, vs, D * sizeof(float));
        }
      }
    }
  }
  auto att = paged_decode(q, kc, vc, slots, lens);    // (M, H, D)
  auto h = proj(att.view({M, H * D}), fmt[1], t[4], t[5]);
  h.add_(x);  // x + attention, the residual stream (same sum as x + o)
  auto n2 = rms_norm(h, t[1], eps);
  auto f = proj(silu_mul(proj(n2, fmt[2], t[6], t[7])), fmt[3], t[8], t[9]);
  return h.add_(f);
}

// every block of the model in one call: t holds the 10 tensors of each layer in turn, fmt its 4
// formats, kc / vc its cache tensors (the per-block Python call costs ~15 us x layers a step)
at::Tensor decode_layers(at::Tensor x, std::vector<at::Tensor> t, std::vector<int64_t> fmt, double eps, int64_t H, int64_t Hkv,
                         at::Tensor cos, at::Tensor sin, std::vector<at::Tensor> kc, std::vector<at::Tensor> vc,
                         at::Tensor slot_mapping, at::Tensor slots, at::Tensor lens) {
  const size_t L = kc.size();
  TORCH_CHECK(vc.size() == L && t.size() == 10 * L && fmt.size() == 4 * L, "decode_layers: 10 tensors, 4 formats and a K / V cache per layer");
  for (size_t l = 0; l < L; ++l)
    x = decode_layer(x, std::vector<at::Tensor>(t.begin() + 10 * l, t.begin() + 10 * (l + 1)),
                     std::vector<int64_t>(fmt.begin() + 4 * l, fmt.begin() + 4 * (l + 1)), eps, H, Hkv, cos, sin,
                     kc[l], vc[l], slot_mapping, slots, lens);
  return x;
}

TORCH_LIBRARY(herd_woq, m) {
  m.def("int8_mm(Tensor x, Tensor w, Tensor d) -> Tensor");
  m.def("int4_mm(Tensor x, Tensor w, Tensor dm) -> Tensor");
  m.def("int8_dequant(Tensor w, Tensor d) -> Tensor");
  m.def("dense_mm(Tensor x, Tensor w) -> Tensor");
  m.def("int4_dequant(Tensor w, Tensor dm) -> Tensor");
}

TORCH_LIBRARY_IMPL(herd_woq, CPU, m) {
  m.impl("int8_mm", &int8_mm);
  m.impl("int4_mm", &int4_mm);
  m.impl("int8_dequant", &int8_dequant);
  m.impl("dense_mm", &dense_mm);
  m.impl("int4_dequant", &int4_dequant);
}
"""


_fns: dict = {}


@functools.lru_cache(maxsize=1)
def _load() -> bool:
    if os.environ.get("HERD_NO_CPU_KERNELS"):
        return False
    try:
        from torch.utils.cpp_extension import load_inline

        # the `ninja` wheel puts its binary beside this interpreter, which need not be on PATH
        bindir = os.path.dirname(sys.executable)
        if bindir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")

        log.info("herd: loading its CPU kernels (compiled once, about a minute, then cached)")

        # registers torch.ops.herd_woq.{int8_mm,int4_mm}: dispatcher ops, so torch.compile
        # (and its C++ wrapper) calls them directly
        # -fopenmp: at::parallel_for is a header template that is serial without it; the
        # link resolves to the libgomp that torch ships (torch/lib), so one thread pool
        # also bound as plain Python functions: a pybind call costs less than torch.ops dispatch,
        # which counts when a decode step makes ~200 of them
        mod = load_inline(name="herd_cpu_kernels_v32", cpp_sources=_SOURCE, extra_cflags=["-O3", "-fopenmp"],
                          extra_ldflags=["-fopenmp"], functions=["int8_mm", "int4_mm", "dense_mm", "rms_norm", "rope", "silu_mul", "paged_decode", "decode_layer", "decode_layers", "int8_activations"], verbose=False)
    except Exception as e:  # no compiler, no ninja, ...: the layers fall back to PyTorch ops
        log.warning("herd: weight-only CPU kernels unavailable (%s); using slower PyTorch ops", e)
        return False

    @torch.library.register_fake("herd_woq::int8_mm")
    def _(x, w, d):
        return x.new_empty(x.shape[0], w.shape[0])

    @torch.library.register_fake("herd_woq::int4_mm")
    def _(x, w, dm):
        return x.new_empty(x.shape[0], w.shape[0])

    @torch.library.register_fake("herd_woq::dense_mm")
    def _(x, w):
        return x.new_empty(x.shape[0], w.shape[0])

    @torch.library.register_fake("herd_woq::int8_dequant")
    def _(w, d):
        return w.new_empty(w.shape, dtype=torch.float32)

    @torch.library.register_fake("herd_woq::int4_dequant")
    def _(w, dm):
        return w.new_empty(w.shape[0], w.shape[1] * 2, dtype=torch.float32)

    _fns.update({name: getattr(mod, name) for name in (
        "int8_mm", "int4_mm", "dense_mm", "rms_norm", "rope", "silu_mul", "paged_decode", "decode_layer",
        "decode_layers", "int8_activations")})
    return True


def available() -> bool:
    """Whether the compiled kernels can be used (builds them on first call, ~30 s, then cached)."""
    return _load()


def kernel(name: str):
    """The kernel `name` as a plain function (fastest to call from eager code)."""
    _load()
    return _fns[name]


def int8_activations(enable: bool | None = None) -> bool:
    """Whether the int8 / int4 kernels round activations to int8 (per group of 32) and use
    AVX512-VNNI integer dot products (the default where the CPU has VNNI), or widen the weights
    to fp32 and keep fp32 activations. `enable` switches the VNNI path on or off for this
    process (for A/B measurements and tests); returns the state in effect."""
    if not _load():
        return False
    return bool(_fns["int8_activations"](-1 if enable is None else int(enable)))
