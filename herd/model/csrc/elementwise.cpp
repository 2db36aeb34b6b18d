// Fused element-wise ops of the decode step, each replacing 2-10 PyTorch ops and their dispatch:
// RMSNorm, RoPE and SiLU(gate) * up, on contiguous fp32 rows.
#include "common.h"
#include "kernels.h"

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
