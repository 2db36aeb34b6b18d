"""CPU matrix-vector kernels for weight-only int8 / int4 layers (few rows of activations).

Decode multiplies one activation row per sequence by every weight matrix, so it is bound by
how fast the weights stream from memory. PyTorch's own weight-only CPU kernels
(`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) ran 2-4x *slower* than the fp32 GEMV
on the benchmark machine (see BENCHMARKS.md), so herd compiles these two small loops once
(torch.utils.cpp_extension, cached under ~/.cache/torch_extensions): fp32 activations and
weights as GGUF stores them: int8 in groups with an fp16 scale (Q8_0: w = q * d), or int4
in groups of 32 (Q4_1: 16 bytes of nibbles, element j in the low nibble of byte j and element
j+16 in the high one, with an fp16 scale and minimum: w = q * d + m). AVX-512 code on CPUs that have it, a plain
loop elsewhere. When no C++ compiler is available `available()` is False and the layers fall
back to PyTorch ops.
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
    if ((k & 15) == 0) for (int r = 0; r < 4; ++r) _mm_prefetch((const char*)(wr[r] + k) + PF, _MM_HINT_T0);
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
        mod = load_inline(name="herd_woq_cpu_v10", cpp_sources=_SOURCE, extra_cflags=["-O3", "-fopenmp"],
                          extra_ldflags=["-fopenmp"], functions=["int8_mm", "int4_mm", "dense_mm"], verbose=False)
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

    _fns.update(int8_mm=mod.int8_mm, int4_mm=mod.int4_mm, dense_mm=mod.dense_mm)
    return True


def available() -> bool:
    """Whether the compiled kernels can be used (builds them on first call, ~1 minute once)."""
    return _load()


def kernel(name: str):
    """The kernel `name` as a plain function (fastest to call from eager code)."""
    _load()
    return _fns[name]


def int8_mm(x: torch.Tensor, w: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """x (M, K) fp32 @ Q8_0-style weights (w int8 (N, K), d (N, K/gs) fp16 group scales).T → (M, N)."""
    return torch.ops.herd_woq.int8_mm(x, w, d)


def dense_mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (M, K) fp32 @ w (N, K) fp32 or bf16 .T → (M, N) fp32."""
    return torch.ops.herd_woq.dense_mm(x, w)


def int4_mm(x: torch.Tensor, w: torch.Tensor, dm: torch.Tensor) -> torch.Tensor:
    """x (M, K) fp32 @ Q4_1 weights (w (N, K/2) uint8, dm (N, K/32, 2) fp16 scale/min).T → (M, N)."""
    return torch.ops.herd_woq.int4_mm(x, w, dm)
