// Tokenizer::from_dir: which files a model directory holds and how transformers combines them.
//   model:          tokenizer.json, else vocab.json + merges.txt (Qwen2Tokenizer)
//   added tokens:   tokenizer.json "added_tokens", tokenizer_config.json "added_tokens_decoder",
//                   added_tokens.json (first one to name an id wins; the last only without a decoder)
//   special roles:  tokenizer_config.json bos/eos/pad/unk_token, overridden by special_tokens_map.json;
//                   role tokens and additional_special_tokens found in the vocabulary become special
//   BOS/EOS adding: Llama-class tokenizers: add_bos_token (default true) / add_eos_token (default false);
//                   others: tokenizer.json's TemplateProcessing post-processor, if any
//   chat template:  tokenizer_config.json "chat_template" (string or named list), chat_template.jinja,
//                   chat_template.json
#include "core/error.h"
#include "core/files.h"
#include "trainer/tokenizer_impl.h"

namespace qwenq {

using namespace tokenizer_detail;

namespace {

// A token named in a config: "text", {"content": "text", ...} or null.
std::string token_name(const nlohmann::ordered_json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object()) {
    auto it = v.find("content");
    if (it != v.end() && it->is_string()) return it->get<std::string>();
  }
  return std::string();
}

bool flag(const nlohmann::ordered_json& obj, const char* key, bool fallback) {
  auto it = obj.find(key);
  return (it == obj.end() || !it->is_boolean()) ? fallback : it->get<bool>();
}

bool has_added_id(const Tokenizer::Impl& t, int32_t id) {
  for (const AddedToken& a : t.added) {
    if (a.id == id) return true;
  }
  return false;
}

int32_t find_token(const Tokenizer::Impl& t, const std::string& text) {
  if (text.empty()) return -1;
  for (const AddedToken& a : t.added) {
    if (a.content == text) return a.id;
  }
  auto it = t.piece_to_id.find(text);
  return it == t.piece_to_id.end() ? -1 : it->second;
}

void read_added_tokens_decoder(const nlohmann::ordered_json& cfg, const std::string& path, Tokenizer::Impl* t) {
  auto it = cfg.find("added_tokens_decoder");
  if (it == cfg.end() || !it->is_object()) return;
  for (auto e = it->begin(); e != it->end(); ++e) {
    int32_t id;
    try {
      id = static_cast<int32_t>(std::stol(e.key()));
    } catch (const std::exception&) {
      QWENQ_FAIL(path << ": added_tokens_decoder key '" << e.key() << "' is not a token id");
    }
    if (has_added_id(*t, id)) continue;
    const auto& v = e.value();
    AddedToken a;
    a.id = id;
    a.content = token_name(v);
    QWENQ_CHECK(!a.content.empty(), path << ": added_tokens_decoder entry " << id << " has no content");
    a.special = flag(v, "special", false);
    a.lstrip = flag(v, "lstrip", false);
    a.rstrip = flag(v, "rstrip", false);
    a.single_word = flag(v, "single_word", false);
    a.normalized = flag(v, "normalized", !a.special);
    t->added.push_back(a);
  }
}

void read_added_tokens_json(const std::string& path, Tokenizer::Impl* t) {
  const nlohmann::ordered_json j = read_ordered_json_file(path);
  QWENQ_CHECK(j.is_object(), path << ": expected a JSON object {token: id}");
  for (auto e = j.begin(); e != j.end(); ++e) {
    QWENQ_CHECK(e.value().is_number_integer(), path << ": id of '" << e.key() << "' is not an integer");
    const int32_t id = e.value().get<int32_t>();
    if (has_added_id(*t, id)) continue;
    AddedToken a;
    a.id = id;
    a.content = e.key();
    a.special = false;  // made special below if a role or additional_special_tokens names it
    a.normalized = true;
    t->added.push_back(a);
  }
}

// Marks `name` special: an added token becomes special, a vocabulary token is added as a special token. Only the
// tokens read from added_tokens.json (t->added from index `first_legacy` on) lose their normalized flag: transformers
// builds those as normalized=not special, while a role keeps the flag tokenizer.json or added_tokens_decoder gave.
void make_special(const std::string& name, size_t first_legacy, Tokenizer::Impl* t) {
  if (name.empty()) return;
  for (size_t i = 0; i < t->added.size(); ++i) {
    AddedToken& a = t->added[i];
    if (a.content == name) {
      a.special = true;
      if (i >= first_legacy) a.normalized = false;
      return;
    }
  }
  auto it = t->piece_to_id.find(name);
  if (it == t->piece_to_id.end()) return;  // transformers would grow the vocabulary; we leave it unnamed
  AddedToken a;
  a.id = it->second;
  a.content = name;
  a.special = true;
  t->added.push_back(a);
}

std::string read_chat_template(const std::string& dir, const nlohmann::ordered_json& cfg, std::string* file) {
  const std::string cfg_path = path_join(dir, "tokenizer_config.json");
  auto it = cfg.is_object() ? cfg.find("chat_template") : cfg.end();
  if (it != cfg.end()) {
    *file = cfg_path;
    if (it->is_string()) return it->get<std::string>();
    if (it->is_array()) {
      for (const auto& e : *it) {
        if (e.is_object() && e.value("name", "") == "default") return e.value("template", "");
      }
      QWENQ_FAIL(cfg_path << ": chat_template is a list without a \"default\" entry");
    }
  }
  const std::string jinja = path_join(dir, "chat_template.jinja");
  if (file_exists(jinja)) {
    *file = jinja;
    return read_file(jinja);
  }
  const std::string json = path_join(dir, "chat_template.json");
  if (file_exists(json)) {
    *file = json;
    const nlohmann::ordered_json j = read_ordered_json_file(json);
    QWENQ_CHECK(j.is_object() && j.contains("chat_template") && j["chat_template"].is_string(),
                json << ": expected {\"chat_template\": \"...\"}");
    return j["chat_template"].get<std::string>();
  }
  file->clear();
  return std::string();
}

}  // namespace

Tokenizer Tokenizer::from_dir(const std::string& dir) {
  QWENQ_CHECK(dir_exists(dir), dir << ": not a directory (expected a model or tokenizer directory)");
  auto t = std::make_shared<Impl>();
  t->source = dir;
  const std::string cfg_path = path_join(dir, "tokenizer_config.json");
  if (file_exists(cfg_path)) {
    t->tokenizer_config = read_ordered_json_file(cfg_path);
    QWENQ_CHECK(t->tokenizer_config.is_object(), cfg_path << ": expected a JSON object");
  }
  const nlohmann::ordered_json& cfg = t->tokenizer_config;
  const nlohmann::ordered_json empty = nlohmann::ordered_json::object();
  const nlohmann::ordered_json& c = cfg.is_object() ? cfg : empty;
  t->tokenizer_class = c.contains("tokenizer_class") && c["tokenizer_class"].is_string()
                           ? c["tokenizer_class"].get<std::string>()
                           : std::string();

  const std::string tj = path_join(dir, "tokenizer.json");
  const std::string vocab = path_join(dir, "vocab.json"), merges = path_join(dir, "merges.txt");
  if (file_exists(tj)) {
    load_tokenizer_json(tj, t.get());
  } else {
    const bool has_vocab = file_exists(vocab), has_merges = file_exists(merges);
    if (!has_vocab && !has_merges) {
      const std::string spm = path_join(dir, "tokenizer.model");
      QWENQ_CHECK(!file_exists(spm), spm << ": SentencePiece .model files are not supported; provide tokenizer.json "
                                            "(transformers writes one with save_pretrained)");
      QWENQ_FAIL(dir << ": no tokenizer found (expected tokenizer.json, or vocab.json + merges.txt)");
    }
    QWENQ_CHECK(has_vocab, vocab << ": missing (a byte-level BPE tokenizer needs vocab.json next to merges.txt)");
    QWENQ_CHECK(has_merges, merges << ": missing (a byte-level BPE tokenizer needs merges.txt next to vocab.json)");
    QWENQ_CHECK(t->tokenizer_class.empty() || t->tokenizer_class.rfind("Qwen2Tokenizer", 0) == 0,
                cfg_path << ": tokenizer_class " << t->tokenizer_class
                         << " with vocab.json + merges.txt is not supported (only Qwen2Tokenizer's pre-tokenizer is "
                            "implemented; a tokenizer.json would say which pipeline to use)");
    load_vocab_merges(vocab, merges, t.get());
  }

  read_added_tokens_decoder(c, cfg_path, t.get());
  // transformers reads added_tokens.json only on its legacy path, when tokenizer_config.json has no
  // added_tokens_decoder; next to one, the file is ignored (even the tokens the decoder does not name).
  const std::string added_json = path_join(dir, "added_tokens.json");
  const size_t first_legacy = t->added.size();
  if (file_exists(added_json) && !c.contains("added_tokens_decoder")) read_added_tokens_json(added_json, t.get());

  // Special roles: tokenizer_config.json, then special_tokens_map.json on top (as transformers does).
  std::string role[4];  // bos, eos, pad, unk
  const char* keys[4] = {"bos_token", "eos_token", "pad_token", "unk_token"};
  std::vector<std::string> extra_specials;
  auto read_roles = [&](const nlohmann::ordered_json& j) {
    for (int k = 0; k < 4; ++k) {
      auto it = j.find(keys[k]);
      if (it != j.end()) role[k] = token_name(*it);
    }
    auto it = j.find("additional_special_tokens");
    if (it != j.end() && it->is_array()) {
      for (const auto& e : *it) extra_specials.push_back(token_name(e));
    }
  };
  if (t->kind == TokenizerKind::kSentencePiece) role[3] = t->model_unk_token;
  read_roles(c);
  const std::string map_path = path_join(dir, "special_tokens_map.json");
  if (file_exists(map_path)) {
    t->special_tokens_map_text = read_file(map_path);
    const nlohmann::ordered_json m = read_ordered_json_file(map_path);
    QWENQ_CHECK(m.is_object(), map_path << ": expected a JSON object");
    read_roles(m);
  }
  for (const std::string& r : role) make_special(r, first_legacy, t.get());
  for (const std::string& r : extra_specials) make_special(r, first_legacy, t.get());

  t->finalize(dir);
  t->bos = find_token(*t, role[0]);
  t->eos = find_token(*t, role[1]);
  t->pad = find_token(*t, role[2]);
  t->unk = find_token(*t, role[3]);

  const std::string& cls = t->tokenizer_class;
  const bool llama_class = cls.find("Llama") != std::string::npos || cls.find("Gemma") != std::string::npos ||
                           (cls.empty() && t->kind == TokenizerKind::kSentencePiece && !t->has_template_processing);
  t->llama_class = llama_class;
  if (llama_class) {
    t->add_bos = flag(c, "add_bos_token", true);
    t->add_eos = flag(c, "add_eos_token", false);
  } else if (t->has_template_processing) {
    const int32_t first = find_token(*t, t->template_first_special);
    const int32_t last = find_token(*t, t->template_last_special);
    if (first >= 0) {
      t->add_bos = true;
      if (t->bos < 0) t->bos = first;
    }
    if (last >= 0) {
      t->add_eos = true;
      if (t->eos < 0) t->eos = last;
    }
  }
  t->chat_template = read_chat_template(dir, c, &t->chat_template_file);
  return Tokenizer(std::move(t));
}

}  // namespace qwenq
