// qwen-quant generate: continue a prompt (or a ChatML conversation) with greedy or sampled decoding, on the CPU
// (trainer/generate.h) or, with --device cuda, on the GPU (trainer/qwen_decode_cuda.h: same sampling, same seed use).
// --kv-cache f32|bf16: the KV cache's storage on either device (trainer/qwen_model.h, KvCacheDType).
// --int8-activations: a GGUF or GPTQ/AWQ model's products with int8 activation rows on a CPU (quant/ggml_dot_int8.h,
// quant/int_dot_int8.h), as llama.cpp computes them.
#include <cstdio>
#include <memory>
#include <string>

#include "tools/cli.h"
#include "tools/cli_common.h"
#include "trainer/generate.h"
#include "trainer/model_dir.h"
#include "trainer/qwen_decode_cuda.h"
#include "trainer/tokenizer.h"

namespace qwenq::cli {

namespace {

struct GenerateArgs {
  std::string model, prompt, system;
  std::string kv_cache = "f32", cpu_matmul = "fp32";
  bool chat = false, int8_activations = false, no_thinking = false;
  SamplingOptions sampling;
  SamplingGiven given;  // the sampling flags on the command line (the rest: the model's generation_config.json)
  CommonOptions common;
};

void run_generate(const GenerateArgs& a) {
  const KvCacheDType kv = parse_kv_cache_dtype(a.kv_cache, "--kv-cache");
  apply_int8_activations(a.int8_activations, a.model, a.common);  // refused before any work
  DevicePick pick(a.common, "the generation");
  const std::string dir = resolve_model_dir(a.model, "main", /*allow_gguf=*/true);
  warn_if_pissa_residual(dir, "qwen-qlora generate --adapter");
  QwenModel model(dir);
  const Device device = pick.settle_for_model(model, GpuUse::Decode, int8_activations_refusal(a.int8_activations));
  note_bf16_activations(a.sampling, device);
  apply_cpu_matmul(a.cpu_matmul, device);
#ifdef QWENQ_HAVE_CUDA
  std::unique_ptr<QwenModelCuda> gpu;
  if (device == Device::Cuda) {
    gpu = std::make_unique<QwenModelCuda>(model);
  }
#else
  (void)device;
#endif
  report_int8_coverage(model.weights());
  Tokenizer tok = Tokenizer::from_model(dir);
  std::vector<int32_t> prompt;
  if (a.chat) {
    std::vector<ChatMessage> msgs;
    if (!a.system.empty()) msgs.push_back({"system", a.system});
    msgs.push_back({"user", a.prompt});
    warn_if_no_thinking_switch(tok, a.no_thinking, "generate");
    prompt = tok.encode(tok.render_chat(msgs, generation_chat_options(a.no_thinking)).text, false);
  } else {
    prompt = tok.encode(a.prompt, true);
  }
  SamplingOptions opt = a.sampling;
  opt.kv_cache = kv;
  for (int32_t id : {tok.eos_id(), model.config().eos_token_id, tok.token_id("<|im_end|>"),
                     tok.token_id("<|endoftext|>")}) {
    if (id >= 0) opt.stop_ids.push_back(id);
  }
  check_prompt_fits(prompt.size(), model.config().max_position_embeddings, opt.max_new_tokens, dir);
  apply_generation_config(dir, a.given, &opt);
  if (!a.chat) std::printf("%s", a.prompt.c_str());
  std::fflush(stdout);
  GenerationTimer timer;
  const auto print = [&](int32_t id) {
    timer.on_token();
    if (!tok.is_special(id)) std::printf("%s", tok.decode_token(id).c_str());
    std::fflush(stdout);
  };
  std::vector<int32_t> out;
#ifdef QWENQ_HAVE_CUDA
  if (gpu) out = generate_cuda(*gpu, prompt, opt, print);
  else
#endif
    out = generate(model, prompt, opt, print);
  std::printf("\n");
  std::fflush(stdout);
  timer.print(prompt.size());
}

}  // namespace

void register_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Continue a prompt with the model (decoding as the model's generation_config.json asks, greedy without one)");
  cmd->add_option("--model,-m", a->model, "model directory or Hugging Face repo id")->required();
  cmd->add_option("--prompt,-p", a->prompt, "prompt text")->required();
  cmd->add_flag("--chat", a->chat, "wrap the prompt as a user turn of the tokenizer's ChatML template");
  cmd->add_flag("--no-thinking", a->no_thinking, "with --chat: Qwen3's enable_thinking=False (an empty think block)");
  cmd->add_option("--system", a->system, "system message for --chat");
  add_int8_activations_flag(cmd, &a->int8_activations);
  add_sampling_options(cmd, &a->sampling, &a->kv_cache, "tokens to generate");
  add_cpu_matmul_option(cmd, &a->cpu_matmul, kCpuMatmulForwardHelp);
  add_common_options(cmd, &a->common);
  cmd->callback([a, cmd]() {
    a->given = sampling_flags_given(cmd);
    run_generate(*a);
  });
}

}  // namespace qwenq::cli
