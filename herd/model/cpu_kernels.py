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
  there (see BENCHMARKS.md).
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
#include <cstring>

static constexpr int64_t PF = 2048;  // software prefetch distance (bytes)
// dense (fp32 / bf16) tiles prefetch the same columns two 4-row tiles ahead: rows here are short
// (1-6 KiB), so a distance along the row runs into the next rows; +4-6% in an interleaved A/B
static constexpr int64_t PF_ROWS = 8;

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
      if ((k & 63) == 0) for (int r = 0; r < 4; ++r) _mm_prefetch((const char*)(wr[r] + PF + k), _MM_HINT_T0);
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
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4)
    for (int64_t m = 0; m < M; m += 4) {
      const float* xm = x + m * K; float* ym = y + m * N;
      switch (std::min<int64_t>(4, M - m)) {
        case 4: i8_tile<4>(xm, K, gs, w, d, ym, N, n); break;
        case 3: i8_tile<3>(xm, K, gs, w, d, ym, N, n); break;
        case 2: i8_tile<2>(xm, K, gs, w, d, ym, N, n); break;
        default: i8_tile<1>(xm, K, gs, w, d, ym, N, n);
      }
    }
  i8_rows_ref(x, M, K, gs, w, d, y, N, n, n1);
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
    for (int r = 0; r < 4; ++r) _mm_prefetch((const char*)(wr[r] + PF_ROWS * K + k), _MM_HINT_T0);
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
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4)
    for (int64_t m = 0; m < M; m += 4) {
      const float* xm = x + m * K; float* ym = y + m * N;
      switch (std::min<int64_t>(4, M - m)) {
        case 4: f_tile<4, T>(xm, K, w, ym, N, n); break;
        case 3: f_tile<3, T>(xm, K, w, ym, N, n); break;
        case 2: f_tile<2, T>(xm, K, w, ym, N, n); break;
        default: f_tile<1, T>(xm, K, w, ym, N, n);
      }
    }
  f_rows_ref<T>(x, M, K, w, y, N, n, n1);
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
      if ((g & 3) == 0) _mm_prefetch((const char*)(w + row * 16 + PF), _MM_HINT_T0);
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
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4)
    for (int64_t m = 0; m < M; m += 4) {
      const float* xm = x + m * K; float* ym = y + m * N;
      switch (std::min<int64_t>(4, M - m)) {
        case 4: i4_tile<4>(xm, K, w, dm, ym, N, n); break;
        case 3: i4_tile<3>(xm, K, w, dm, ym, N, n); break;
        case 2: i4_tile<2>(xm, K, w, dm, ym, N, n); break;
        default: i4_tile<1>(xm, K, w, dm, ym, N, n);
      }
    }
  i4_rows_ref(x, xs, M, K, w, dm, y, N, n, n1);
}

static bool has_avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return ok;
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
  const bool fast = has_avx512();
  // (M, G) group sums for the minimum term of the plain loop (the AVX-512 one dequantizes instead)
  auto xs = fast ? at::empty({0}, x.options()) : x.view({M, G, 32}).sum(-1).contiguous();
  auto y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>(); const float* xsp = xs.data_ptr<float>();
  const uint8_t* wp = w.data_ptr<uint8_t>(); const uint16_t* dp = reinterpret_cast<const uint16_t*>(dm.data_ptr<at::Half>());
  float* yp = y.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(4, ((131072 / std::max<int64_t>(K, 1)) + 3) & ~int64_t(3));
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
      _mm_prefetch((const char*)(wr[r] + PF_ROWS * K + k), _MM_HINT_T0);
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
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4)
    for (int64_t m = 0; m < M; m += 4) {
      const uint16_t* xm = x + m * K; float* ym = y + m * N;
      switch (std::min<int64_t>(4, M - m)) {
        case 4: bf_tile<4>(xm, K, w, ym, N, n); break;
        case 3: bf_tile<3>(xm, K, w, ym, N, n); break;
        case 2: bf_tile<2>(xm, K, w, ym, N, n); break;
        default: bf_tile<1>(xm, K, w, ym, N, n);
      }
    }
  bf_rows_ref(x, M, K, w, y, N, n, n1);
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

// softmax of p[0..L) in place
static void softmax_row(float* p, int64_t L) {
  float mx = -INFINITY, sum = 0.f;
  for (int64_t j = 0; j < L; ++j) mx = std::max(mx, p[j]);
  for (int64_t j = 0; j < L; ++j) { p[j] = std::exp(p[j] - mx); sum += p[j]; }
  const float inv = 1.f / sum;
  for (int64_t j = 0; j < L; ++j) p[j] *= inv;
}

__attribute__((target("avx512f")))
static void softmax_row_avx512(float* p, int64_t L) {
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
  const __m512 inv = _mm512_set1_ps(1.f / sum);
  for (int64_t j = 0; j < L16; j += 16) _mm512_storeu_ps(p + j, _mm512_mul_ps(_mm512_loadu_ps(p + j), inv));
  for (int64_t j = L16; j < L; ++j) p[j] *= 1.f / sum;
}

// ---- paged attention for decode: one query per sequence, K/V read through its slot list ------
// q (B, H, D) fp32; kc / vc (Hkv, S, D) fp32 or bf16 (one layer of the paged cache); slots (B, W)
// int64 (cache slot of each position, padded); lens (B,) int64 (positions to attend) -> (B, H, D)
// fp32. Each (sequence, KV head) is one task that reads its keys and values once for all the
// query heads of its group: no gather copy, no padding computed, and the result of a sequence
// does not depend on what else is in the batch.

template <typename T, bool FAST>
static inline __attribute__((always_inline)) void paged_task(const float* q, const T* kg, const T* vg, const int64_t* sl, int64_t L, int64_t S, int64_t rep,
                       int64_t D, float scale, float* out, std::vector<float>& sc) {
  sc.assign(rep * L, 0.f);
  for (int64_t j = 0; j < L; ++j) {
    TORCH_CHECK(sl[j] >= 0 && sl[j] < S, "paged_decode: slot out of range");
    const T* kr = kg + sl[j] * D;
    for (int64_t r = 0; r < rep; ++r) {
      const float* qr = q + r * D; float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < D; ++i) s += qr[i] * (float)kr[i];
      sc[r * L + j] = s * scale;
    }
  }
  for (int64_t r = 0; r < rep; ++r) {
    if (FAST) softmax_row_avx512(sc.data() + r * L, L); else softmax_row(sc.data() + r * L, L);
    std::memset(out + r * D, 0, D * sizeof(float));
  }
  for (int64_t j = 0; j < L; ++j) {
    const T* vr = vg + sl[j] * D;
    for (int64_t r = 0; r < rep; ++r) {
      const float p = sc[r * L + j]; float* o = out + r * D;
#pragma omp simd
      for (int64_t i = 0; i < D; ++i) o[i] += p * (float)vr[i];
    }
  }
}

template <typename T>
__attribute__((target("avx512f,avx512bw,fma")))
static void paged_task_avx512(const float* q, const T* kg, const T* vg, const int64_t* sl, int64_t L, int64_t S, int64_t rep,
                              int64_t D, float scale, float* out, std::vector<float>& sc) {
  paged_task<T, true>(q, kg, vg, sl, L, S, rep, D, scale, out, sc);
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
  const int64_t rep = H / Hkv;
  const int64_t* sp = slots.data_ptr<int64_t>(); const int64_t* lp = lens.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(lp[b] > 0 && lp[b] <= W, "paged_decode: length out of range");
  auto out = at::empty({B, H, D}, q.options());
  const float* qp = q.data_ptr<float>(); float* op = out.data_ptr<float>();
  const float scale = 1.f / std::sqrt((float)D);
  const bool fast = has_avx512();
  at::parallel_for(0, B * Hkv, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> sc;
    for (int64_t t = b0; t < b1; ++t) {
      const int64_t b = t / Hkv, g = t % Hkv;
      const float* qg = qp + (b * H + g * rep) * D; float* og = op + (b * H + g * rep) * D;
      if (kc.scalar_type() == at::kFloat) {
        const float* kg = kc.data_ptr<float>() + g * S * D; const float* vg = vc.data_ptr<float>() + g * S * D;
        if (fast) paged_task_avx512<float>(qg, kg, vg, sp + b * W, lp[b], S, rep, D, scale, og, sc);
        else paged_task<float, false>(qg, kg, vg, sp + b * W, lp[b], S, rep, D, scale, og, sc);
      } else {
        const at::BFloat16* kg = kc.data_ptr<at::BFloat16>() + g * S * D; const at::BFloat16* vg = vc.data_ptr<at::BFloat16>() + g * S * D;
        if (fast) paged_task_avx512<at::BFloat16>(qg, kg, vg, sp + b * W, lp[b], S, rep, D, scale, og, sc);
        else paged_task<at::BFloat16, false>(qg, kg, vg, sp + b * W, lp[b], S, rep, D, scale, og, sc);
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
  TORCH_CHECK(kc.scalar_type() == at::kFloat && vc.scalar_type() == at::kFloat && kc.is_contiguous() && vc.is_contiguous(),
              "decode_layer: the KV cache must be contiguous fp32");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.is_contiguous() && slot_mapping.numel() == x.size(0),
              "decode_layer: one cache slot per row");
  const int64_t M = x.size(0), D = kc.size(2), S = kc.size(1);
  auto n1 = rms_norm(x, t[0], eps);
  auto qkv = proj(n1, fmt[0], t[2], t[3]).view({M, H + 2 * Hkv, D});
  auto q = rope(qkv.narrow(1, 0, H), cos, sin);       // (M, H, D)
  auto k = rope(qkv.narrow(1, H, Hkv), cos, sin);     // (M, Hkv, D)
  {  // store this step's K / V in their cache slots
    const float* kp = k.data_ptr<float>(); const float* qkvp = qkv.data_ptr<float>();
    float* kcp = kc.data_ptr<float>(); float* vcp = vc.data_ptr<float>();
    const int64_t* sm = slot_mapping.data_ptr<int64_t>();
    for (int64_t m = 0; m < M; ++m) {
      TORCH_CHECK(sm[m] >= 0 && sm[m] < S, "decode_layer: slot out of range");
      for (int64_t g = 0; g < Hkv; ++g) {
        std::memcpy(kcp + (g * S + sm[m]) * D, kp + (m * Hkv + g) * D, D * sizeof(float));
        std::memcpy(vcp + (g * S + sm[m]) * D, qkvp + (m * (H + 2 * Hkv) + H + Hkv + g) * D, D * sizeof(float));
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
        mod = load_inline(name="herd_cpu_kernels_v15", cpp_sources=_SOURCE, extra_cflags=["-O3", "-fopenmp"],
                          extra_ldflags=["-fopenmp"], functions=["int8_mm", "int4_mm", "dense_mm", "rms_norm", "rope", "silu_mul", "paged_decode", "decode_layer"], verbose=False)
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
        "int8_mm", "int4_mm", "dense_mm", "rms_norm", "rope", "silu_mul", "paged_decode", "decode_layer")})
    return True


def available() -> bool:
    """Whether the compiled kernels can be used (builds them on first call, ~30 s, then cached)."""
    return _load()


def kernel(name: str):
    """The kernel `name` as a plain function (fastest to call from eager code)."""
    _load()
    return _fns[name]
