// herd's CPU kernels for the decode step: every entry point, declared once (module.cpp binds
// them for Python; herd/model/cpu_kernels.py is their Python face). Activations are contiguous
// fp32 (M, K) row-major tensors; a product returns y (M, N) = x W^T in fp32.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

// ---- matrix products for few activation rows (dense.cpp, packed.cpp) ------------------------
at::Tensor dense_mm(at::Tensor x, at::Tensor w);                 // w (N, K) fp32 or bf16
at::Tensor int8_mm(at::Tensor x, at::Tensor w, at::Tensor d);    // Q8_0: w (N, K) int8, d (N, K / gs) fp16
at::Tensor int4_mm(at::Tensor x, at::Tensor w, at::Tensor dm);   // Q4_1: w (N, K / 2) uint8, dm (N, K / 32, 2) fp16
at::Tensor int8_dequant(at::Tensor w, at::Tensor d);             // -> (N, K) fp32, for the dense GEMM
at::Tensor int4_dequant(at::Tensor w, at::Tensor dm);
bool int8_activations(int64_t mode);  // the VNNI path: mode 0 / 1 turns it off / on; < 0 asks

// ---- fused element-wise ops (elementwise.cpp) -------------------------------------------------
at::Tensor rms_norm(at::Tensor x, at::Tensor w, double eps);    // x (M, D), w (D)
at::Tensor rope(at::Tensor x, at::Tensor cos, at::Tensor sin);   // x (N, H, D) heads contiguous; cos / sin (T, D / 2)
at::Tensor silu_mul(at::Tensor gu);                              // gu (M, 2F) = [gate | up] -> (M, F)

// ---- paged attention of one query per sequence (attention.cpp) ----------------------------
// q (B, H, D) fp32; kc / vc (Hkv, S, D) fp32 or bf16; slots (B, W) int64; lens (B,) int64
at::Tensor paged_decode(at::Tensor q, at::Tensor kc, at::Tensor vc, at::Tensor slots, at::Tensor lens);

// ---- one transformer block per call (layer.cpp) ---------------------------------------------

// A projection as the products take it: format 0 dense (weight fp32 / bf16; scales unused),
// 1 int8 (Q8_0: weight, fp16 scales), 2 int4 (Q4_1: packed nibbles, fp16 (scale, min) pairs).
struct Projection {
  int64_t format;
  at::Tensor weight, scales;
  at::Tensor operator()(const at::Tensor& x) const;  // x W^T through the format's product
};

// One block as decode_layer runs it, built once per block (herd.model.cpu_kernels.LayerPlan).
struct LayerPlan {
  at::Tensor attention_norm, ffn_norm;  // fp32 (dim,)
  double eps;                           // of both norms
  int64_t n_heads, n_kv_heads;
  Projection wqkv, wo, w13, w2;         // q | k | v rows; output; gate | up rows; down
};

// x (M, dim): the block for M sequences' next tokens; the step's K / V are written to their cache
// slots (slot_mapping (M,)) of kc / vc (Hkv, S, D), then attended through slots / lens as paged_decode
at::Tensor decode_layer(at::Tensor x, const LayerPlan& plan, at::Tensor cos, at::Tensor sin, at::Tensor kc,
                        at::Tensor vc, at::Tensor slot_mapping, at::Tensor slots, at::Tensor lens);
// every block in turn, layer l with plans[l] on kc[l] / vc[l]
at::Tensor decode_layers(at::Tensor x, const std::vector<LayerPlan>& plans, at::Tensor cos, at::Tensor sin,
                         std::vector<at::Tensor> kc, std::vector<at::Tensor> vc, at::Tensor slot_mapping,
                         at::Tensor slots, at::Tensor lens);
