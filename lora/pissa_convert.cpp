#include "lora/pissa_convert.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/safetensors.h"
#include "core/strings.h"
#include "core/tensor.h"
#include "lora/peft_io.h"

namespace qwenq {
namespace {

// The adapter's tensors as fp32 matrices [rows, cols], checked to be 2-D.
std::vector<float> matrix_of(const SafetensorsFile& f, const std::string& name, int64_t* rows, int64_t* cols) {
  const TensorView& t = f.get(name);
  QWENQ_CHECK(t.shape.size() == 2, f.path() << ": " << name << " is not a matrix");
  *rows = t.shape[0];
  *cols = t.shape[1];
  return tensor_to_f32(t);
}

}  // namespace

PissaConvertReport convert_pissa_to_lora(const std::string& init_dir, const std::string& trained_dir,
                                         const std::string& out_dir, bool overwrite) {
  // PEFT saves a PiSSA adapter with init_lora_weights "pissa" (or "pissa_niter_<n>"); here only its tensors matter.
  const LoraConfig init = load_lora_config(init_dir, BaseRewritingInit::PissaAsTrue);
  const LoraConfig trained = load_lora_config(trained_dir, BaseRewritingInit::PissaAsTrue);
  const std::string both = "the initial PiSSA adapter " + init_dir + " and the trained one " + trained_dir;
  QWENQ_CHECK(init.r == trained.r && init.alpha == trained.alpha && init.use_rslora == trained.use_rslora &&
                  same_lora_selection(init, trained),
              both << " differ in their configs (r " << init.r << " / " << trained.r << ", lora_alpha " << init.alpha
                   << " / " << trained.alpha << ", use_rslora " << init.use_rslora << " / " << trained.use_rslora
                   << ", targets " << lora_selection_str(init) << " / " << lora_selection_str(trained)
                   << "): train from the initial adapter with its rank, alpha and targets");
  QWENQ_CHECK(!trained.use_rslora || (trained.rank_pattern.empty() && trained.alpha_pattern.empty()),
              both << ": use_rslora with rank_pattern or alpha_pattern cannot be converted (PEFT's "
                      "save_pretrained refuses the conversion too)");
  QWENQ_CHECK(!init.use_dora && !trained.use_dora,
              both << ": DoRA adapters cannot be converted (PEFT's conversion has no term for the magnitudes)");
  const SafetensorsFile fi(peft_weights_path(init_dir)), ft(peft_weights_path(trained_dir));
  QWENQ_CHECK(fi.names() == ft.names(), both << " hold different tensors (" << fi.names().size() << " and "
                                              << ft.names().size() << "): the trained adapter must start from the "
                                              << "initial one");
  SafetensorsWriter writer;
  writer.set_metadata("format", "pt");
  PissaConvertReport rep;
  for (const std::string& name : ft.names()) {
    const bool is_a = ends_with(name, ".lora_A.weight"), is_b = ends_with(name, ".lora_B.weight");
    QWENQ_CHECK(is_a || is_b, trained_dir << ": " << name << " is not a LoRA A or B matrix");
    int64_t r0, c0, r1, c1;
    const std::vector<float> x = matrix_of(ft, name, &r1, &c1);
    const std::vector<float> x0 = matrix_of(fi, name, &r0, &c0);
    QWENQ_CHECK(r0 == r1 && c0 == c1, both << ": " << name << " is [" << r0 << ", " << c0 << "] in the first and ["
                                           << r1 << ", " << c1 << "] in the second");
    std::vector<float> out(2 * x.size());
    if (is_a) {  // A' = [A ; A0]: the rows of A, then those of A0
      std::memcpy(out.data(), x.data(), x.size() * sizeof(float));
      std::memcpy(out.data() + x.size(), x0.data(), x0.size() * sizeof(float));
      writer.add_owned(name, DType::F32, {2 * r1, c1}, bytes_of(out));
      ++rep.linears;
    } else {  // B' = [B | −B0]: each row of B, then the same row of B0 negated
      for (int64_t n = 0; n < r1; ++n) {
        for (int64_t j = 0; j < c1; ++j) out[n * 2 * c1 + j] = x[n * c1 + j];
        for (int64_t j = 0; j < c1; ++j) out[n * 2 * c1 + c1 + j] = -x0[n * c1 + j];
      }
      writer.add_owned(name, DType::F32, {r1, 2 * c1}, bytes_of(out));
    }
  }
  rep.config = trained;
  rep.config.r = 2 * trained.r;
  rep.config.alpha = trained.use_rslora ? trained.alpha * std::sqrt(2.0) : 2 * trained.alpha;
  for (auto& kv : rep.config.rank_pattern) kv.second *= 2;  // PEFT doubles the patterns' ranks and alphas too
  for (auto& kv : rep.config.alpha_pattern) kv.second *= 2;
  write_peft_adapter_dir(out_dir, rep.config, writer, overwrite);
  return rep;
}

}  // namespace qwenq
