// The Python module: herd's kernels as plain functions (a pybind call costs less than a
// torch.ops dispatch, which counts when a decode step makes ~200 of them), the LayerPlan struct,
// and LayerPlans, a list of them that crosses into C++ without a copy per call.
// pybind11 with torch's tensor caster and error translation, without the C++ frontend that
// torch/extension.h also brings (most of the build time)
#include <pybind11/stl.h>
#include <pybind11/stl_bind.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/utils/pybind.h>

#include <tuple>

#include "kernels.h"

PYBIND11_MAKE_OPAQUE(std::vector<LayerPlan>);

namespace {

using ProjectionTuple = std::tuple<int64_t, at::Tensor, at::Tensor>;  // (format, weight, scales)

Projection projection(const ProjectionTuple& t, const char* name) {
  const auto& [format, weight, scales] = t;
  static const at::ScalarType weights[] = {at::kFloat, at::kChar, at::kByte};
  TORCH_CHECK(format >= 0 && format <= 2, name, ": unknown projection format ", format, " (0 dense, 1 int8, 2 int4)");
  TORCH_CHECK(weight.is_contiguous() && (weight.scalar_type() == weights[format] || (format == 0 && weight.scalar_type() == at::kBFloat16)),
              name, ": format ", format, " takes contiguous ", format == 0 ? "fp32 / bf16" : weights[format] == at::kChar ? "int8" : "uint8",
              " weights, got ", weight.scalar_type());
  TORCH_CHECK(format == 0 || (scales.scalar_type() == at::kHalf && scales.is_contiguous()), name, ": scales must be contiguous fp16");
  return {format, weight, scales};
}

LayerPlan make_plan(at::Tensor attention_norm, at::Tensor ffn_norm, double eps, int64_t n_heads, int64_t n_kv_heads,
                    const ProjectionTuple& wqkv, const ProjectionTuple& wo, const ProjectionTuple& w13, const ProjectionTuple& w2) {
  for (const auto& w : {attention_norm, ffn_norm})
    TORCH_CHECK(w.dim() == 1 && w.scalar_type() == at::kFloat && w.is_contiguous() && w.numel() == attention_norm.numel(),
                "LayerPlan: the norm weights must be contiguous fp32 (dim,)");
  TORCH_CHECK(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "LayerPlan: n_heads must be a multiple of n_kv_heads");
  return {attention_norm, ffn_norm, eps, n_heads, n_kv_heads, projection(wqkv, "wqkv"), projection(wo, "wo"),
          projection(w13, "w13"), projection(w2, "w2")};
}

ProjectionTuple as_tuple(const Projection& p) { return {p.format, p.weight, p.scales}; }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dense_mm", torch::wrap_pybind_function(dense_mm), "x (M, K) fp32 . w (N, K) fp32 / bf16 ^T -> (M, N)");
  m.def("int8_mm", torch::wrap_pybind_function(int8_mm), "x (M, K) fp32 . Q8_0 (w int8 (N, K), d fp16 (N, K / gs)) ^T");
  m.def("int4_mm", torch::wrap_pybind_function(int4_mm), "x (M, K) fp32 . Q4_1 (w uint8 (N, K / 2), dm fp16 (N, K / 32, 2)) ^T");
  m.def("int8_dequant", torch::wrap_pybind_function(int8_dequant), "Q8_0 (w, d) -> (N, K) fp32");
  m.def("int4_dequant", torch::wrap_pybind_function(int4_dequant), "Q4_1 (w, dm) -> (N, K) fp32");
  m.def("int8_activations", torch::wrap_pybind_function(int8_activations), "mode 0 / 1: VNNI path off / on; < 0: ask");
  m.def("rms_norm", torch::wrap_pybind_function(rms_norm), "x (M, D) * rsqrt(mean(x^2) + eps) * w");
  m.def("rope", torch::wrap_pybind_function(rope), "x (N, H, D) rotated by cos / sin (T, D / 2), row n by n % T");
  m.def("silu_mul", torch::wrap_pybind_function(silu_mul), "gu (M, 2F) -> silu(gu[:, :F]) * gu[:, F:]");
  m.def("paged_decode", torch::wrap_pybind_function(paged_decode), "q (B, H, D) over kc / vc (Hkv, S, D) through slots (B, W), lens (B,)");
  m.def("decode_layer", torch::wrap_pybind_function(decode_layer), "one block for a decode step, from its LayerPlan");
  m.def("decode_layers", torch::wrap_pybind_function(decode_layers), "every block for a decode step, from their LayerPlans");

  py::class_<LayerPlan>(m, "LayerPlan", "one block as decode_layer runs it (herd.model.cpu_kernels.LayerPlan.native())")
      .def(py::init([](at::Tensor attention_norm, at::Tensor ffn_norm, double eps, int64_t n_heads, int64_t n_kv_heads,
                       const ProjectionTuple& wqkv, const ProjectionTuple& wo, const ProjectionTuple& w13, const ProjectionTuple& w2) {
             try {
               return make_plan(attention_norm, ffn_norm, eps, n_heads, n_kv_heads, wqkv, wo, w13, w2);
             } catch (const c10::Error& e) {
               throw py::value_error(e.what_without_backtrace());
             }
           }),
           py::kw_only(), py::arg("attention_norm"), py::arg("ffn_norm"), py::arg("eps"), py::arg("n_heads"),
           py::arg("n_kv_heads"), py::arg("wqkv"), py::arg("wo"), py::arg("w13"), py::arg("w2"))
      .def_readonly("attention_norm", &LayerPlan::attention_norm)
      .def_readonly("ffn_norm", &LayerPlan::ffn_norm)
      .def_readonly("eps", &LayerPlan::eps)
      .def_readonly("n_heads", &LayerPlan::n_heads)
      .def_readonly("n_kv_heads", &LayerPlan::n_kv_heads)
      .def_property_readonly("wqkv", [](const LayerPlan& p) { return as_tuple(p.wqkv); })
      .def_property_readonly("wo", [](const LayerPlan& p) { return as_tuple(p.wo); })
      .def_property_readonly("w13", [](const LayerPlan& p) { return as_tuple(p.w13); })
      .def_property_readonly("w2", [](const LayerPlan& p) { return as_tuple(p.w2); });
  py::bind_vector<std::vector<LayerPlan>>(m, "LayerPlans");
}
