// qwen-qlora generate | chat: text from a base model with a LoRA adapter applied unmerged (tools/cli_common.h),
// greedy or sampled (trainer/generate.h). generate mirrors `qwen-quant generate`; chat is an interactive ChatML
// loop over stdin that keeps the whole conversation as the prompt of each turn; on the CPU it keeps the KV cache too,
// so a turn computes only the tokens its prompt adds to what the cache holds (generate_continuing).
// --device cuda decodes on the GPU (trainer/qwen_decode_cuda.h) with the adapter unmerged: the base is uploaded as
// stored (dense, or 4-bit GPTQ/AWQ/NF4/FP4 as Q4) and every adapted Linear adds s · (x Aᵀ) Bᵀ in fp32 after its base
// product (trainer/lora_inference_cuda.h), for dense and 4-bit bases alike; the CPU's model does the same
// (QwenModel::attach_adapter) but merges a DoRA or MoE-expert adapter in memory.
// --kv-cache f32|bf16: the KV cache's storage on either device (trainer/qwen_model.h, KvCacheDType).
// generate --prompts FILE --out FILE runs a whole evaluation set (one JSON record per line): chat records (a final
// assistant message is the reference, not the prompt), {"prompt": text or messages, "completion": reference}
// (TRL's prompt-only / prompt-completion), Alpaca records ("output" the reference); chat prompts are rendered with
// the generation prompt, plain ones encoded as --prompt is (--chat wraps them as a user turn). Writes one JSON line
// per record, {"where", "prompt", "output", "message" (chat prompts: the reply as the assistant message the template
// renders it from, Tokenizer::parse_chat_reply; "tool_call_error" when its tool calls do not read), "reference",
// "prompt_tokens", "new_tokens"}, atomically at the end.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/jsonl.h"
#include "tools/cli_common.h"
#include "tools/qlora_cli.h"
#include "trainer/chat_record.h"
#include "trainer/generate.h"
#include "trainer/model_dir.h"
#include "trainer/qwen_decode_cuda.h"
#include "trainer/sft_data.h"
#include "trainer/tokenizer.h"

namespace qwenq::cli {

namespace {

struct GenerateArgs {
  std::string model, adapter, prompt, system, prompts, out;
  std::string kv_cache = "f32", cpu_matmul = "fp32";
  int64_t batch = 8;  // generate --prompts on the CPU: records decoded together
  bool batch_given = false;
  bool chat = false, no_thinking = false;
  SamplingOptions sampling;
  SamplingGiven given;  // the sampling flags on the command line (the rest: the base's generation_config.json)
  CommonOptions common;
};

// The model (on the CPU with the adapter, if any, applied as load_adapter_for_device says), its tokenizer, and
// (--device cuda) its copy on the GPU with the adapter attached unmerged.
struct Loaded {
  Loaded(std::unique_ptr<QwenModel> m, Tokenizer t) : model(std::move(m)), tok(std::move(t)) {}
  std::unique_ptr<QwenModel> model;
  Tokenizer tok;
  CommandAdapter adapter;  // after the model: detached before it goes
#ifdef QWENQ_HAVE_CUDA
  std::unique_ptr<QwenModelCuda> gpu;
#endif
};

Loaded load(const GenerateArgs& a, bool need_chat_template) {
  parse_kv_cache_dtype(a.kv_cache, "--kv-cache");  // refused before any work
  DevicePick pick(a.common, "the generation");
  const std::string dir = resolve_model_dir(a.model, "main", /*allow_gguf=*/true);
  Tokenizer tok = Tokenizer::from_model(dir);
  if (need_chat_template) {
    QWENQ_CHECK(tok.has_chat_template(), dir << ": the tokenizer has no chat template (chat_template in "
                                                "tokenizer_config.json or chat_template.jinja), so a conversation "
                                                "cannot be formatted; use `qwen-qlora generate` without --chat");
    tok.apply_chat_template({{"user", "x"}}, true);  // refuses a template that is not ChatML, before any work
    warn_if_no_thinking_switch(tok, a.no_thinking, "generate");
  }
  auto model = std::make_unique<QwenModel>(dir);
  const Device device =
      pick.settle_for_model(*model, GpuUse::Decode, adapter_gpu_refusal(a.adapter, model->config()));
  note_bf16_activations(a.sampling, device);
  apply_cpu_matmul(a.cpu_matmul, device);
  Loaded out(std::move(model), std::move(tok));
  out.adapter = load_adapter_for_device(a.adapter, dir, device, *out.model, /*quiet=*/false);
#ifdef QWENQ_HAVE_CUDA
  if (device == Device::Cuda) {
    out.gpu = upload_model_cuda(*out.model, out.adapter.get(), a.adapter);
  }
#endif
  return out;
}

// The sampling options of the command line with the model's stop ids and the --kv-cache choice.
SamplingOptions generation_options(const GenerateArgs& a, const QwenModel& model, const Tokenizer& tok) {
  SamplingOptions opt = a.sampling;
  opt.kv_cache = parse_kv_cache_dtype(a.kv_cache, "--kv-cache");
  for (int32_t id : {tok.eos_id(), model.config().eos_token_id, tok.token_id("<|im_end|>"),
                     tok.token_id("<|endoftext|>")}) {
    if (id >= 0) opt.stop_ids.push_back(id);
  }
  apply_generation_config(model.dir(), a.given, &opt);
  return opt;
}

// Generates from `prompt` (on the GPU when m.gpu is set), streaming the text of non-special tokens to stdout;
// prints the speed to stderr. With ctx (chat on the CPU) the KV cache of the last turn is kept for the prefix the
// prompt shares with it (trainer/generate.h, generate_continuing).
std::vector<int32_t> stream(const Loaded& m, const std::vector<int32_t>& prompt, const SamplingOptions& opt,
                            CachedContext* ctx = nullptr) {
  GenerationTimer timer;
  const auto print = [&](int32_t id) {
    timer.on_token();
    if (!m.tok.is_special(id)) std::printf("%s", m.tok.decode_token(id).c_str());
    std::fflush(stdout);
  };
  std::vector<int32_t> out;
  size_t reused = 0;
#ifdef QWENQ_HAVE_CUDA
  if (m.gpu) out = generate_cuda(*m.gpu, prompt, opt, print);
  else
#endif
  if (ctx != nullptr) {
    out = generate_continuing(*m.model, ctx, prompt, opt, print);
    reused = static_cast<size_t>(ctx->reused);
  } else {
    out = generate(*m.model, prompt, opt, print);
  }
  std::printf("\n");
  std::fflush(stdout);
  timer.print(prompt.size(), reused);
  return out;
}

// One record of --prompts: the prompt as messages (chat) or text, and the reference answer when it has one.
struct EvalPrompt {
  std::string where, text, reference;
  std::vector<ChatMessage> messages;
  std::vector<std::string> tools;
  bool chat = false, has_reference = false;
};

EvalPrompt parse_eval_prompt(const nlohmann::ordered_json& j, const std::string& where, const GenerateArgs& a) {
  EvalPrompt p;
  p.where = where;
  QWENQ_CHECK(j.is_object(), where << ": expected a JSON object, got " << j.type_name());
  const auto take_reference = [&p](const nlohmann::ordered_json& r) {
    if (r.is_string()) {
      p.reference = r.get<std::string>();
    } else if (r.is_array() && !r.empty() && r.back().is_object() && r.back().value("content", nlohmann::ordered_json()).is_string()) {
      p.reference = r.back()["content"].get<std::string>();
    } else {
      return;
    }
    p.has_reference = true;
  };
  const bool messages = is_chat_record(j);
  if (messages || (j.contains("prompt") && j["prompt"].is_array())) {
    nlohmann::ordered_json rec = j;
    if (!messages) rec = {{"messages", j["prompt"]}, {"tools", j.value("tools", nlohmann::ordered_json())}};
    const std::string why = parse_chat_record(rec, /*need_assistant=*/false, &p.messages, &p.tools);
    QWENQ_CHECK(why.empty(), where << ": " << why);
    if (!p.messages.empty() && p.messages.back().role == "assistant") {
      p.reference = p.messages.back().content;
      p.has_reference = true;
      p.messages.pop_back();
    }
    QWENQ_CHECK(!p.messages.empty(), where << ": nothing left to prompt with once the final assistant message is taken as the reference");
    if (j.contains("completion")) take_reference(j["completion"]);
    p.chat = true;
    return p;
  }
  if (j.contains("instruction")) {
    const std::string input = j.value("input", nlohmann::ordered_json()).is_string() ? j["input"].get<std::string>() : "";
    QWENQ_CHECK(j["instruction"].is_string(), where << ": field \"instruction\" must be a string");
    const std::string instruction = j["instruction"].get<std::string>();
    if (j.contains("output")) take_reference(j["output"]);
    if (a.chat) {
      p.messages = {{"user", input.empty() ? instruction : instruction + "\n" + input}};
      p.chat = true;
    } else {
      p.text = alpaca_prompt(instruction, input);
    }
    return p;
  }
  const char* key = j.contains("prompt") ? "prompt" : "text";
  QWENQ_CHECK(j.contains(key) && j[key].is_string(), where << ": expected a chat record (\"messages\"), a \"prompt\", an "
                                                            "Alpaca \"instruction\" or a \"text\"");
  if (j.contains("completion")) take_reference(j["completion"]);
  if (a.chat) {
    p.messages = {{"user", j[key].get<std::string>()}};
    p.chat = true;
  } else {
    p.text = j[key].get<std::string>();
  }
  return p;
}

void run_generate_file(const GenerateArgs& a) {
  QWENQ_CHECK(!a.out.empty(), "generate --prompts needs --out (the JSONL file the outputs go to)");
  QWENQ_CHECK(a.prompt.empty(), "generate: give --prompt or --prompts, not both");
  std::vector<EvalPrompt> prompts;
  const std::string text = read_file(a.prompts);
  for_each_json_line(text, a.prompts, [&](const nlohmann::ordered_json& j, const std::string& where) {
    prompts.push_back(parse_eval_prompt(j, where, a));
  });
  QWENQ_CHECK(!prompts.empty(), a.prompts << ": no records");
  bool any_chat = false;
  for (const EvalPrompt& p : prompts) any_chat |= p.chat;
  Loaded m = load(a, any_chat);  // every record is read before the model loads: a bad line costs nothing
  const SamplingOptions opt = generation_options(a, *m.model, m.tok);
  // Every prompt is rendered, encoded and checked against the context before the first one is generated: the
  // outputs are written only at the end, so a record the template cannot render (or too long for the model) at the
  // end of the file would otherwise throw away all the generations before it. Each refusal names its record.
  std::vector<std::vector<int32_t>> prompt_ids(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    EvalPrompt& p = prompts[i];
    if (p.chat) {
      if (!a.system.empty() && (p.messages.empty() || p.messages[0].role != "system"))
        p.messages.insert(p.messages.begin(), ChatMessage("system", a.system));
      ChatOptions o = generation_chat_options(a.no_thinking);
      o.tools = p.tools;
      try {
        p.text = m.tok.render_chat(p.messages, o).text;
      } catch (const Error& e) {
        QWENQ_FAIL(p.where << ": " << e.what());
      }
    }
    prompt_ids[i] = m.tok.encode(p.text, /*add_special_tokens=*/!p.chat);
    check_prompt_fits(prompt_ids[i].size(), m.model->config().max_position_embeddings, a.sampling.max_new_tokens,
                      m.model->dir(), p.where + ": the prompt");
  }
  const auto t0 = std::chrono::steady_clock::now();
  int64_t new_tokens = 0;
  size_t done = 0;
  std::vector<std::vector<int32_t>> gens(prompts.size());
  const auto progress = [&](const std::vector<int32_t>& gen) {
    new_tokens += static_cast<int64_t>(gen.size());
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "generate: %zu/%zu records, %lld new tokens in %.1fs (%.1f tokens/s)\n", ++done,
                 prompts.size(), (long long)new_tokens, s, s > 0 ? new_tokens / s : 0.0);
  };
#ifdef QWENQ_HAVE_CUDA
  if (m.gpu) {
    if (a.batch > 1 && a.batch_given)
      std::fprintf(stderr, "--batch %lld: the GPU decodes the records one at a time\n", (long long)a.batch);
    for (size_t i = 0; i < prompts.size(); ++i) {
      gens[i] = generate_cuda(*m.gpu, prompt_ids[i], opt);
      progress(gens[i]);
    }
  } else
#endif
  {
    // Records decoded together share each step's weight reads; each one's tokens are its own generate()'s.
    gens = generate_batch(*m.model, prompt_ids, opt, a.batch,
                          [&](size_t, const std::vector<int32_t>& gen) { progress(gen); });
  }
  std::string out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const EvalPrompt& p = prompts[i];
    const std::vector<int32_t>& ids = prompt_ids[i];
    const std::vector<int32_t>& gen = gens[i];
    const std::string output = m.tok.decode(gen, true);
    nlohmann::ordered_json r = {{"where", p.where}, {"prompt", p.text}, {"output", output}};
    if (p.chat) {  // the reply as the assistant message the template renders it from
      const ChatReply reply = m.tok.parse_chat_reply(output);
      r["message"] = chat_message_json(reply.message);
      if (!reply.error.empty()) r["tool_call_error"] = reply.error;
    }
    if (p.has_reference) r["reference"] = p.reference;
    r["prompt_tokens"] = ids.size();
    r["new_tokens"] = gen.size();
    out += r.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  write_file_atomic(a.out, out);
  std::printf("wrote %s: %zu records, %lld new tokens\n", a.out.c_str(), prompts.size(), (long long)new_tokens);
}

void run_generate(const GenerateArgs& a) {
  if (!a.prompts.empty()) return run_generate_file(a);
  QWENQ_CHECK(!a.prompt.empty(), "generate needs --prompt (or --prompts FILE --out FILE)");
  Loaded m = load(a, a.chat);
  std::vector<int32_t> prompt;
  if (a.chat) {
    std::vector<ChatMessage> msgs;
    if (!a.system.empty()) msgs.push_back({"system", a.system});
    msgs.push_back({"user", a.prompt});
    prompt = m.tok.encode(m.tok.render_chat(msgs, generation_chat_options(a.no_thinking)).text, false);
  } else {
    prompt = m.tok.encode(a.prompt, true);
  }
  check_prompt_fits(prompt.size(), m.model->config().max_position_embeddings, a.sampling.max_new_tokens,
                    m.model->dir());
  if (!a.chat) std::printf("%s", a.prompt.c_str());
  std::fflush(stdout);
  stream(m, prompt, generation_options(a, *m.model, m.tok));
}

void run_chat(const GenerateArgs& a) {
  Loaded m = load(a, true);
  const SamplingOptions opt = generation_options(a, *m.model, m.tok);
  const bool tty = ::isatty(STDIN_FILENO);
  std::vector<ChatMessage> history;
  if (!a.system.empty()) history.push_back({"system", a.system});
  CachedContext kept;  // the CPU's KV cache from turn to turn (after /reset too: the system prompt is still its start)
  if (tty) std::fprintf(stderr, "chat: type a message; /reset forgets the conversation, /exit or Ctrl-D ends\n");
  std::string line;
  while (true) {
    if (tty) std::fprintf(stderr, "user> ");
    if (!std::getline(std::cin, line) || line == "/exit") break;
    if (line.empty()) continue;
    if (line == "/reset") {
      history.resize(a.system.empty() ? 0 : 1);
      std::fprintf(stderr, "(conversation reset)\n");
      continue;
    }
    history.push_back({"user", line});
    const std::vector<int32_t> prompt = m.tok.encode(m.tok.render_chat(history, generation_chat_options(a.no_thinking)).text, false);
    if (tty) std::fprintf(stderr, "assistant> ");
    try {
      const std::vector<int32_t> out = stream(m, prompt, opt, &kept);
      history.push_back({"assistant", m.tok.decode(out, true)});
    } catch (const Error& e) {  // e.g. the conversation outgrew the context: the user can /reset and go on
      history.pop_back();
      std::fprintf(stderr, "qwen-qlora: error: %s (/reset starts a new conversation)\n", e.what());
    }
  }
}

void add_generate_options(CLI::App* cmd, GenerateArgs* a) {
  cmd->add_option("--adapter,-a", a->adapter, "LoRA adapter directory (PEFT layout): applied unmerged (the base kept as stored; DoRA and MoE-expert adapters merged in memory on the CPU)");
  cmd->add_option("--system", a->system, "system message (chat, and generate --chat)");
  cmd->add_flag("--no-thinking", a->no_thinking,
                "chat, generate --chat: Qwen3's enable_thinking=False (the reply starts after an empty think block)");
  add_sampling_options(cmd, &a->sampling, &a->kv_cache, "tokens to generate (per reply)");
  add_cpu_matmul_option(cmd, &a->cpu_matmul, kCpuMatmulForwardHelp);
  add_common_options(cmd, &a->common);
}

}  // namespace

void register_qlora_generate(CLI::App& app) {
  auto g = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "Continue a prompt with the base model plus a LoRA adapter (decoding "
                                                 "as the base's generation_config.json asks, greedy without one)");
  cmd->add_option("--model,-m", g->model, "base model directory or Hugging Face repo id (dense or GPTQ/AWQ/NF4); "
                                          "default: the base --adapter's adapter_config.json names");
  cmd->add_option("--prompt,-p", g->prompt, "prompt text");
  cmd->add_option("--prompts", g->prompts,
                  "JSONL evaluation set: chat records (a final assistant message is the reference), {\"prompt\": text "
                  "or messages, \"completion\": reference}, Alpaca or {\"text\"} records; with --out");
  cmd->add_option("--out,-o", g->out, "with --prompts: JSONL of where, prompt, output, reference, token counts");
  cmd->add_option("--batch", g->batch,
                  "with --prompts on the CPU: records decoded together, each step's weights read once for all of "
                  "them (the outputs are those of one record at a time, bit for bit; the GPU decodes one at a time)")
      ->check(CLI::Range(int64_t{1}, kMaxDecodeBatch))
      ->capture_default_str();
  cmd->add_flag("--chat", g->chat, "wrap the prompt as a user turn of the tokenizer's ChatML template");
  add_generate_options(cmd, g.get());
  cmd->callback([g, cmd]() {
    g->given = sampling_flags_given(cmd);
    g->batch_given = cmd->count("--batch") > 0;
    QWENQ_CHECK(!g->batch_given || !g->prompts.empty(), "--batch goes with --prompts (one --prompt is one sequence)");
    g->model = model_or_adapter_base(g->model, g->adapter, false);
    run_generate(*g);
  });

  auto c = std::make_shared<GenerateArgs>();
  CLI::App* chat = app.add_subcommand("chat", "Interactive ChatML conversation on stdin (one user message per line; "
                                              "/reset, /exit)");
  chat->add_option("--model,-m", c->model, "base model directory or Hugging Face repo id (dense or GPTQ/AWQ/NF4); "
                                           "default: the base --adapter's adapter_config.json names");
  add_generate_options(chat, c.get());
  chat->callback([c, chat]() {
    c->given = sampling_flags_given(chat);
    c->model = model_or_adapter_base(c->model, c->adapter, false);
    run_chat(*c);
  });
}

}  // namespace qwenq::cli
