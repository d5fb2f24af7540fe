#include "tests/fuzz/fuzz_targets.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/files.h"
#include "core/gguf.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "lora/peft_io.h"
#include "quant/ggml_blocks.h"
#include "quant/ggml_imatrix.h"
#include "trainer/generation_config.h"
#include "trainer/gguf_model.h"
#include "trainer/gsm8k.h"
#include "trainer/kld_file.h"
#include "trainer/llama2c_import.h"
#include "trainer/lora_model.h"
#include "trainer/qwen_config.h"
#include "trainer/qwen_model.h"
#include "trainer/sampling.h"
#include "trainer/chat_record.h"
#include "trainer/classify.h"
#include "trainer/multiple_choice.h"
#include "trainer/sft_data.h"
#include "trainer/text_data.h"
#include "trainer/tokenizer.h"

namespace qwenq::fuzz {
namespace {

// A missing or broken fixture, or an unknown target: not an outcome of the input, so not a qwenq::Error (which the
// targets expect and swallow); it escapes and fails the run.
struct SetupError : std::runtime_error {
  explicit SetupError(const std::string& m) : std::runtime_error("fuzz setup: " + m) {}
};
void setup_check(bool ok, const std::string& what) {
  if (!ok) throw SetupError(what);
}

const char* const kModels[] = {"dense", "gptq", "awq", "nf4", "ct", "fp8"};
const char* const kModelFiles[] = {"config.json", "model.safetensors", "tokenizer_config.json", "vocab.json",
                                   "merges.txt"};

std::string fixtures() {
  const char* d = std::getenv("QWENQ_FUZZ_DIR");
  setup_check(d != nullptr && *d, "QWENQ_FUZZ_DIR is not set (the directory tests/fuzz/make_seeds.sh fills)");
  return d;
}

// This process's scratch directory (created once).
const std::string& scratch() {
  static const std::string dir = [] {
    const char* s = std::getenv("QWENQ_FUZZ_SCRATCH");
    const std::string d = path_join(s && *s ? s : "/tmp", "qwenq_fuzz_" + std::to_string(getpid()));
    setup_check(make_dirs(d) == 0, "cannot create " + d);
    return d;
  }();
  return dir;
}

// A plain write (no fsync or rename: thousands of inputs a second go through these files).
void write_bytes(const std::string& path, const void* data, size_t size) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  setup_check(f != nullptr, "cannot write " + path);
  const bool ok = size == 0 || std::fwrite(data, 1, size, f) == size;
  setup_check(std::fclose(f) == 0 && ok, "cannot write " + path);
}

// A copy of fixture directory `name` (the listed files) under the scratch directory, made on first use.
std::string copy_of(const std::string& name, const std::vector<std::string>& files) {
  static std::map<std::string, std::string> made;
  auto it = made.find(name);
  if (it != made.end()) return it->second;
  const std::string src = path_join(fixtures(), name), dst = path_join(scratch(), name);
  setup_check(dir_exists(src), "no fixture " + src + " (run tests/fuzz/make_seeds.sh)");
  setup_check(make_dirs(dst) == 0, "cannot create " + dst);
  for (const std::string& f : files)
    if (file_exists(path_join(src, f))) write_file_atomic(path_join(dst, f), read_file(path_join(src, f)));
  return made[name] = dst;
}

// The data section of a .safetensors file (everything after its header).
std::string payload_of(const std::string& path) {
  setup_check(file_exists(path), "no fixture " + path);
  const std::string file = read_file(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0 && file.size() >= 8; --i) n = (n << 8) | static_cast<uint8_t>(file[i]);
  setup_check(file.size() >= 8 && 8 + n <= file.size(), path + ": not a safetensors fixture");
  return file.substr(8 + n);
}

// u64 length + header + payload, written to path.
void write_with_header(const std::string& path, const uint8_t* header, size_t size, const std::string& payload) {
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((static_cast<uint64_t>(size) >> (8 * i)) & 0xFF);
  file.append(reinterpret_cast<const char*>(header), size);
  file += payload;
  write_bytes(path, file.data(), file.size());
}

void load_and_forward(const std::string& dir) {
  QwenModel model(dir);
  const std::vector<float> logits = model.forward_logits(PackedBatch::from_sequences({{1, 2, 3}}));
  (void)logits;
}

void model_target(const std::string& variant, bool header, const uint8_t* data, size_t size) {
  const std::vector<std::string> files(std::begin(kModelFiles), std::end(kModelFiles));
  const std::string dir = copy_of("models/" + variant, files);
  if (header) {
    static std::map<std::string, std::string> payloads;
    auto it = payloads.find(variant);
    if (it == payloads.end())
      it = payloads.emplace(variant, payload_of(path_join(fixtures(), "models/" + variant + "/model.safetensors"))).first;
    write_with_header(path_join(dir, "model.safetensors"), data, size, it->second);
  } else {
    write_bytes(path_join(dir, "config.json"), data, size);
  }
  load_and_forward(dir);
}

// The bytes as a .gguf file: open it, dequantize every tensor of a type we read, then load it as a model (forward 3
// tokens) and its tokenizer (encode and decode a line).
void gguf_target(const uint8_t* data, size_t size) {
  const std::string path = path_join(scratch(), "input.gguf");
  write_bytes(path, data, size);
  {
    const GgufFile f(path);
    for (const GgufTensor& t : f.tensors())
      if (ggml_type_supported(t.type)) (void)dequantize_ggml(t);
  }
  load_and_forward(path);
  const Tokenizer tok = Tokenizer::from_model(path);
  (void)tok.decode(tok.encode("Hello world <|im_start|> 123"));
}

// The bytes as an importance matrix file (GGUF or legacy .dat: the first bytes decide): read it, take every entry's
// importance, and export the dense fixture model as Q4_K_M GGUF with it (an entry of the wrong width is refused).
void imatrix_target(const uint8_t* data, size_t size) {
  const std::string path = path_join(scratch(), "input.imatrix");
  write_bytes(path, data, size);
  const Imatrix m = read_imatrix(path);
  for (const auto& kv : m.entries) (void)m.importance(kv.first);
  GgufExportOptions o;
  o.type = "q4_k_m";
  o.quiet = true;
  o.overwrite = true;
  o.imatrix_path = path;
  export_gguf(path_join(fixtures(), "models/dense"), path_join(scratch(), "imatrix-out.gguf"), o);
}

// The bytes as a KL-divergence base file (llama-perplexity's --kl-divergence-base): open it, then score the dense
// fixture model against it (a file of another vocabulary is refused there).
void kld_target(const uint8_t* data, size_t size) {
  const std::string path = path_join(scratch(), "input.kld");
  write_bytes(path, data, size);
  const KldFile f(path);
  static const QwenModel model(path_join(fixtures(), "models/dense"));
  KldRunOptions o;
  o.quiet = true;
  o.max_chunks = 4;
  (void)evaluate_kl_divergence_file(model, f, o);
}

bool tokenizer_target(const uint8_t* data, size_t size) {
  static const Tokenizer tok = [] {
    const std::string dir = path_join(fixtures(), "tokenizer");
    setup_check(dir_exists(dir), "no fixture " + dir);
    return Tokenizer::from_dir(dir);
  }();
  const std::string text(reinterpret_cast<const char*>(data), size);
  (void)tok.decode(tok.encode(text, size % 2 == 0));
  std::vector<int32_t> raw(size / 4);  // the bytes as token ids
  if (!raw.empty()) std::memcpy(raw.data(), data, raw.size() * 4);
  try {
    (void)tok.decode(raw, size % 3 == 0);
  } catch (const Error&) {  // ids outside the vocabulary: refused, as expected
  }
  return true;
}

// The same over the hand-written tokenizers of the added-token and Metaspace oracle (make_seeds.sh): every cut of
// added tokens (lstrip, rstrip, single_word, special, with and without split_special_tokens) and every decoder.
bool tokenizer_features_target(const uint8_t* data, size_t size) {
  static const std::vector<Tokenizer> toks = [] {
    std::vector<Tokenizer> t;
    for (const char* name : {"byte", "sp-first", "sp-always"}) {
      const std::string dir = path_join(path_join(fixtures(), "tokenizer_features"), name);
      setup_check(dir_exists(dir), "no fixture " + dir);
      t.push_back(Tokenizer::from_dir(dir));
    }
    return t;
  }();
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (const Tokenizer& tok : toks) {
    for (bool parse_special : {true, false}) (void)tok.decode(tok.encode(text, size % 2 == 0, parse_special), size % 3 == 0);
  }
  return true;
}

// Records that read are also rendered with Qwen2.5's and Qwen3's chat templates (both enable_thinking values).
bool sft_target(const uint8_t* data, size_t size) {
  static const Tokenizer q25 = Tokenizer::from_dir(path_join(fixtures(), "chat/qwen2.5"));
  static const Tokenizer q3 = Tokenizer::from_dir(path_join(fixtures(), "chat/qwen3"));
  bool accepted = false;
  for (const char* ext : {".jsonl", ".json"}) {
    const std::string path = path_join(scratch(), std::string("sft") + ext);
    write_bytes(path, data, size);
    for (const char* format : {"auto", "text", "alpaca", "chat"})
      for (bool skip_bad : {false, true}) {
        std::vector<SftRecord> records;
        try {
          SftDataStats stats;
          records = read_sft_records(path, parse_sft_format(format), skip_bad, &stats);
          accepted = true;
        } catch (const Error&) {
        }
        for (size_t i = 0; i < records.size() && i < 16; ++i)
          for (const Tokenizer* tok : {&q25, &q3})
            for (bool thinking : {true, false}) {
              try {
                SftTemplateOptions o;
                o.enable_thinking = thinking;
                o.train_on_prompt = !thinking;
                (void)format_sft_record(records[i], *tok, o);
              } catch (const Error&) {
              }
            }
      }
  }
  return accepted;
}

// The bytes as labelled texts of every problem type (given, and inferred from the data), skip_bad on and off, with
// and without given label names; then as labels.json beside an adapter and as a classifier's config.json. The
// targets read are run through the objective's statistics and derivatives with zero logits.
bool classify_target(const uint8_t* data, size_t size) {
  static const Tokenizer tok = Tokenizer::from_dir(path_join(fixtures(), "chat/qwen2.5"));
  bool accepted = false;
  const std::string dir = path_join(scratch(), "classify");
  make_dirs(dir);
  const std::string path = path_join(dir, "data.jsonl");
  write_bytes(path, data, size);
  const std::optional<ProblemType> types[] = {std::nullopt, ProblemType::kSingleLabel, ProblemType::kMultiLabel,
                                              ProblemType::kRegression};
  for (const std::optional<ProblemType>& type : types)
    for (bool skip_bad : {false, true})
      for (bool named : {false, true}) {
        try {
          SftDataOptions opt;
          opt.skip_bad = skip_bad;
          opt.max_len = 64;
          opt.eval_fraction = 0.25;
          ClassifyDataOptions labels;
          labels.problem_type = type;
          if (named) labels.label_names = {"a", "b"};
          const SftDataset ds = load_classify_dataset(path, tok, opt, &labels);
          accepted = true;
          const ClassifyTask task{*labels.problem_type, static_cast<int64_t>(labels.label_names.size())};
          const std::vector<double> z(ds.train_targets.size() * static_cast<size_t>(task.num_labels), 0.0);
          (void)classify_batch_stats(z, ds.train_targets, task).pearson();
          (void)classify_objective(ds.train_targets, task, 1 + static_cast<int64_t>(ds.train_targets.size()), nullptr)(z);
        } catch (const Error&) {
        }
      }
  write_bytes(path_join(dir, "labels.json"), data, size);
  try {
    ProblemType t;
    (void)read_label_names(dir, &t);
    accepted = true;
  } catch (const Error&) {
  }
  write_bytes(path_join(dir, "config.json"), data, size);
  try {
    ProblemType t;
    (void)config_problem_type(dir, &t);
    (void)config_label_names(dir);
    accepted = true;
  } catch (const Error&) {
  }
  return accepted;
}

// Read as text, with a chat template for the chat records among them (calibration, eval), and as multiple-choice
// items; the same bytes as a generated reply read back into a message by both templates (generate --prompts;
// problems go into its error).
bool text_target(const uint8_t* data, size_t size) {
  static const Tokenizer q3 = Tokenizer::from_dir(path_join(fixtures(), "chat/qwen3"));
  static const Tokenizer q25 = Tokenizer::from_dir(path_join(fixtures(), "chat/qwen2.5"));
  const std::string reply(reinterpret_cast<const char*>(data), size);
  for (const Tokenizer* t : {&q3, &q25}) {
    (void)chat_message_json(t->parse_chat_reply(reply).message)
        .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);  // as generate --prompts writes it
  }
  bool accepted = false;
  for (const char* ext : {".txt", ".jsonl", ".json"}) {
    const std::string path = path_join(scratch(), std::string("corpus") + ext);
    write_bytes(path, data, size);
    try {
      (void)load_text_corpus(path);
      accepted = true;
    } catch (const Error&) {
    }
    try {
      (void)load_text_documents(path, "text", &q3);
      accepted = true;
    } catch (const Error&) {
    }
    try {
      (void)read_choice_items(path);  // qwen-quant multiple-choice's items
      accepted = true;
    } catch (const Error&) {
    }
    try {
      for (const Gsm8kItem& it : read_gsm8k(path)) {  // qwen-quant gsm8k's records, scored as an output would be
        (void)gsm8k_exact_match(gsm8k_flexible_extract(it.question), it.answer);
        (void)gsm8k_exact_match(gsm8k_strict_match(it.answer), it.answer);
      }
      accepted = true;
    } catch (const Error&) {
    }
  }
  return accepted;
}

void adapter_target(bool header, const uint8_t* data, size_t size) {
  static const LoraDims dims = [] {
    setup_check(dir_exists(path_join(fixtures(), "models/dense")), "no fixture models/dense");
    return lora_dims_of(load_qwen_config(path_join(fixtures(), "models/dense")));
  }();
  const std::string dir = copy_of("adapter", {"adapter_config.json", "adapter_model.safetensors"});
  if (header) {
    static const std::string payload = payload_of(path_join(fixtures(), "adapter/adapter_model.safetensors"));
    write_with_header(path_join(dir, "adapter_model.safetensors"), data, size, payload);
  } else {
    write_bytes(path_join(dir, "adapter_config.json"), data, size);
  }
  (void)load_peft_adapter(dir, dims);
}

// The bytes as a model's generation_config.json: read it, then pick a token with its settings as generate would
// (sampling when do_sample), from fixed logits over 64 ids with its eos ids (mod 64) as the penalty's context. The
// token must be one of the 64.
void generation_config_target(const uint8_t* data, size_t size) {
  const std::string dir = path_join(scratch(), "gencfg");
  setup_check(make_dirs(dir) == 0, "cannot create " + dir);
  write_bytes(path_join(dir, "generation_config.json"), data, size);
  const GenerationConfig g = load_generation_config(dir);
  SamplingOptions o;
  o.temperature = g.do_sample ? g.temperature : 0.f;
  o.top_k = g.top_k;
  o.top_p = g.top_p;
  o.min_p = g.min_p;
  o.repetition_penalty = g.repetition_penalty;
  check_sampling_options(o);
  constexpr int64_t V = 64;
  std::vector<int32_t> context;
  for (int32_t id : g.eos_token_ids) context.push_back(id % V);
  std::vector<float> logits(V);
  for (int64_t v = 0; v < V; ++v) logits[v] = static_cast<float>((v * 37) % 17) - 8.f;
  Rng rng(1);
  const int32_t t = sample_token(logits, o, rng, context);
  if (t < 0 || t >= V) throw std::logic_error("sample_token returned " + std::to_string(t) + " of 64 ids");
}

void llama2c_target(bool tokenizer, const uint8_t* data, size_t size) {
  const std::string input = path_join(scratch(), tokenizer ? "tok.bin" : "model.bin");
  write_bytes(input, data, size);
  setup_check(file_exists(path_join(fixtures(), tokenizer ? "llama2c/tiny.bin" : "llama2c/tok.bin")),
              "no fixture llama2c/" + std::string(tokenizer ? "tiny.bin" : "tok.bin"));
  Llama2cImportOptions o;
  o.checkpoint = tokenizer ? path_join(fixtures(), "llama2c/tiny.bin") : input;
  o.tokenizer = tokenizer ? input : path_join(fixtures(), "llama2c/tok.bin");
  o.out_dir = path_join(scratch(), "llama2c_out");
  o.overwrite = true;
  import_llama2c(o);
}

}  // namespace

std::vector<std::string> fuzz_target_names() {
  std::vector<std::string> names = {"safetensors"};
  for (const char* m : kModels) names.push_back(std::string("model_config:") + m);
  for (const char* m : kModels) names.push_back(std::string("model_header:") + m);
  for (const char* t : {"tokenizer", "tokenizer_features", "sft", "classify", "text", "adapter_config", "adapter_header", "llama2c", "llama2c_tokenizer",
                        "gguf", "imatrix", "kld", "generation_config"})
    names.push_back(t);
  return names;
}

bool run_fuzz_target(const std::string& target, const uint8_t* data, size_t size) {
  try {
    if (target == "safetensors") {
      const std::string path = path_join(scratch(), "input.safetensors");
      write_bytes(path, data, size);
      SafetensorsFile f(path);
      volatile uint64_t sum = 0;  // every byte of every tensor read
      for (const std::string& name : f.names()) {
        const TensorView& t = f.get(name);
        for (size_t i = 0; i < t.nbytes(); ++i) sum = sum + static_cast<const uint8_t*>(t.data)[i];
      }
    } else if (target.rfind("model_config:", 0) == 0) {
      model_target(target.substr(13), false, data, size);
    } else if (target.rfind("model_header:", 0) == 0) {
      model_target(target.substr(13), true, data, size);
    } else if (target == "tokenizer") {
      return tokenizer_target(data, size);
    } else if (target == "tokenizer_features") {
      return tokenizer_features_target(data, size);
    } else if (target == "sft") {
      return sft_target(data, size);
    } else if (target == "classify") {
      return classify_target(data, size);
    } else if (target == "text") {
      return text_target(data, size);
    } else if (target == "adapter_config" || target == "adapter_header") {
      adapter_target(target == "adapter_header", data, size);
    } else if (target == "llama2c" || target == "llama2c_tokenizer") {
      llama2c_target(target == "llama2c_tokenizer", data, size);
    } else if (target == "gguf") {
      gguf_target(data, size);
    } else if (target == "imatrix") {
      imatrix_target(data, size);
    } else if (target == "kld") {
      kld_target(data, size);
    } else if (target == "generation_config") {
      generation_config_target(data, size);
    } else {
      std::string all;
      for (const std::string& n : fuzz_target_names()) all += (all.empty() ? "" : ", ") + n;
      throw SetupError("unknown fuzz target '" + target + "' (targets: " + all + ")");
    }
  } catch (const Error&) {
    return false;  // bad input's one clear message: the expected outcome
  }
  return true;
}

}  // namespace qwenq::fuzz
