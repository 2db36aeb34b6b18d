// What herd's CPU kernels share: CPU feature checks, the row-tiling loop of the AVX-512
// products, software prefetch, and fp16 / bf16 -> fp32 conversion. Header-only (static inline):
// each kernel file compiles its own copy.
#pragma once

// the ATen pieces the kernels use: all of ATen/ATen.h would take longer to compile than they do
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

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

template <typename T> static inline float to_f(T v);
template <> inline float to_f<float>(float v) { return v; }
template <> inline float to_f<at::BFloat16>(at::BFloat16 v) { return (float)v; }

__attribute__((target("avx512f,avx512bw")))
static inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f,avx512bw")))
static inline __m512 load16(const at::BFloat16* p) {  // bf16 -> fp32 is a 16-bit shift
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

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

static inline void check_x(const at::Tensor& x, int64_t K) {  // the activations of a product
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.size(1) == K,
              "x must be a contiguous fp32 (M, K) tensor");
}

static inline bool has_avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return ok;
}
