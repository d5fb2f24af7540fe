// Tokenizer::save_hf: a Hugging Face tokenizer directory that `tokenizers.Tokenizer.from_file` and
// `transformers.AutoTokenizer.from_pretrained` load and that encodes exactly like this Tokenizer.
//   tokenizer.json          the file we loaded, verbatim, or one we write describing our pipeline
//                           (byte-level: NFC + Split(Qwen2 regex) + ByteLevel; SentencePiece-style:
//                           Prepend("▁") + Replace(" ", "▁") normalizer, BPE with byte_fallback, the
//                           Llama decoder and a TemplateProcessing post-processor that adds BOS)
//   tokenizer_config.json   the one we loaded (kept as is) or a new one; added_tokens_decoder and
//                           chat_template always filled in
//   special_tokens_map.json verbatim or from the special roles
//   vocab.json, merges.txt  byte-level models only (so the slow Qwen2Tokenizer loads too)
// The big vocab/merges arrays are written by hand: nlohmann's ordered_json is quadratic for 150K keys.
#include <algorithm>

#include "core/error.h"
#include "core/files.h"
#include "trainer/tokenizer_impl.h"

namespace qwenq {

using namespace tokenizer_detail;
using ojson = nlohmann::ordered_json;

namespace {

std::string quoted(const std::string& s, const std::string& source) {
  try {
    return nlohmann::json(s).dump();
  } catch (const nlohmann::json::exception& e) {
    QWENQ_FAIL(source << ": token '" << s << "' is not valid UTF-8 and cannot be written to JSON");
  }
}

bool is_regular(const Tokenizer::Impl& t, size_t id) {
  return !(t.flags[id] & kFlagAdded) || t.piece_to_id.count(t.pieces[id]);
}

bool in_vocab(const Tokenizer::Impl& t, size_t id) {
  return id < t.pieces.size() && !t.pieces[id].empty() && is_regular(t, id);
}

// Hugging Face tokenizers gives an added token that model.vocab lacks the next id after the vocabulary (its entries
// counted), whatever id the file writes; ours survive only when such tokens follow the vocabulary in id order
// (Qwen's layout). Otherwise (a llama GGUF's <unk>, <s>, </s> at ids 0-2) they must be in model.vocab too, as
// Llama's own tokenizer.json lists them.
bool added_follow_vocab(const Tokenizer::Impl& t) {
  int64_t next = 0;
  for (size_t id = 0; id < t.pieces.size(); ++id) next += in_vocab(t, id);
  for (const AddedToken& a : t.added) {
    if (!in_vocab(t, static_cast<size_t>(a.id)) && a.id != next++) return false;
  }
  return true;
}

// The vocabulary as a JSON object, by id; with_added: the added tokens it lacks too, at their ids.
std::string vocab_text(const Tokenizer::Impl& t, const std::string& indent, bool with_added = false) {
  std::string out = "{";
  bool first = true;
  size_t next_added = 0;  // t.added is sorted by id
  const size_t n = std::max(t.pieces.size(), t.added.empty() ? size_t{0} : static_cast<size_t>(t.added.back().id) + 1);
  for (size_t id = 0; id < n; ++id) {
    while (next_added < t.added.size() && t.added[next_added].id < static_cast<int32_t>(id)) ++next_added;
    const bool added_here = with_added && next_added < t.added.size() && t.added[next_added].id == static_cast<int32_t>(id);
    if (!in_vocab(t, id) && !added_here) continue;
    out += first ? "\n" : ",\n";
    first = false;
    out += indent + "  " + quoted(in_vocab(t, id) ? t.pieces[id] : t.added[next_added].content, t.source) + ": " +
           std::to_string(id);
  }
  out += "\n" + indent + "}";
  return out;
}

std::string merges_text(const Tokenizer::Impl& t, const std::string& indent) {
  bool has_space = false;
  for (const auto& m : t.merges) {
    has_space |= t.pieces[m[0]].find(' ') != std::string::npos || t.pieces[m[1]].find(' ') != std::string::npos;
  }
  std::string out = "[";
  for (size_t i = 0; i < t.merges.size(); ++i) {
    const std::string& a = t.pieces[t.merges[i][0]];
    const std::string& b = t.pieces[t.merges[i][1]];
    out += i ? ",\n" : "\n";
    out += indent + "  ";
    out += has_space ? "[" + quoted(a, t.source) + ", " + quoted(b, t.source) + "]" : quoted(a + " " + b, t.source);
  }
  out += "\n" + indent + "]";
  return out;
}

ojson added_token_json(const AddedToken& a) {
  return ojson{{"id", a.id},          {"content", a.content}, {"single_word", a.single_word}, {"lstrip", a.lstrip},
               {"rstrip", a.rstrip}, {"normalized", a.normalized}, {"special", a.special}};
}

std::string name_or_empty(const Tokenizer::Impl& t, int32_t id) {
  return id >= 0 && id < static_cast<int32_t>(t.pieces.size()) ? t.pieces[id] : std::string();
}

ojson name_or_null(const Tokenizer::Impl& t, int32_t id) {
  const std::string n = name_or_empty(t, id);
  return n.empty() ? ojson(nullptr) : ojson(n);
}

std::string tokenizer_json_text(const Tokenizer::Impl& t) {
  ojson doc;
  doc["version"] = "1.0";
  doc["truncation"] = nullptr;
  doc["padding"] = nullptr;
  ojson added = ojson::array();
  for (const AddedToken& a : t.added) added.push_back(added_token_json(a));
  doc["added_tokens"] = added;
  ojson model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  if (t.kind == TokenizerKind::kByteLevel) {
    const ojson byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false},
                              {"use_regex", false}};
    doc["normalizer"] = t.nfc ? ojson{{"type", "NFC"}} : ojson(nullptr);
    doc["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", kQwen2Pattern}}}, {"behavior", "Isolated"}, {"invert", false}},
          byte_level}}};
    doc["post_processor"] = byte_level;
    doc["decoder"] = byte_level;
    model["unk_token"] = nullptr;
    model["continuing_subword_prefix"] = "";
    model["end_of_word_suffix"] = "";
    model["fuse_unk"] = false;
    model["byte_fallback"] = false;
  } else {
    ojson norms = ojson::array();
    if (t.sp_prepend) norms.push_back({{"type", "Prepend"}, {"prepend", kSpaceMarker}});
    if (t.sp_replace_space) norms.push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpaceMarker}});
    doc["normalizer"] = norms.empty() ? ojson(nullptr) : ojson{{"type", "Sequence"}, {"normalizers", norms}};
    if (t.metaspace) {
      const char* scheme = t.metaspace_prepend == PrependScheme::kAlways  ? "always"
                           : t.metaspace_prepend == PrependScheme::kFirst ? "first"
                                                                          : "never";
      doc["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", kSpaceMarker}, {"prepend_scheme", scheme},
                              {"split", t.metaspace_split}};
    } else {
      doc["pre_tokenizer"] = nullptr;
    }
    // TemplateProcessing with BOS/EOS as configured, as transformers' LlamaTokenizerFast rebuilds it
    // (update_post_processor): single "[bos:0] $A:0 [eos:0]", pair that + "[bos:1] $B:1 [eos:1]" (the second
    // sequence's BOS/EOS take its type id 1, as in Llama's own tokenizer.json).
    ojson single = ojson::array(), pair = ojson::array(), specials = ojson::object();
    auto special_item = [&](int32_t id, int type_id) {
      const std::string n = name_or_empty(t, id);
      specials[n] = {{"id", n}, {"ids", {id}}, {"tokens", {n}}};
      return ojson{{"SpecialToken", {{"id", n}, {"type_id", type_id}}}};
    };
    auto seq = [](const char* which, int type_id) { return ojson{{"Sequence", {{"id", which}, {"type_id", type_id}}}}; };
    const bool bos = t.add_bos && t.bos >= 0, eos = t.add_eos && t.eos >= 0;
    if (bos) single.push_back(special_item(t.bos, 0));
    single.push_back(seq("A", 0));
    if (eos) single.push_back(special_item(t.eos, 0));
    pair = single;
    if (bos) pair.push_back(special_item(t.bos, 1));
    pair.push_back(seq("B", 1));
    if (eos) pair.push_back(special_item(t.eos, 1));
    doc["post_processor"] = {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair},
                             {"special_tokens", specials}};
    ojson decs = ojson::array();
    decs.push_back({{"type", "Replace"}, {"pattern", {{"String", kSpaceMarker}}}, {"content", " "}});
    if (t.byte_fallback) decs.push_back({{"type", "ByteFallback"}});
    decs.push_back({{"type", "Fuse"}});
    if (t.strip_leading_space) decs.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    doc["decoder"] = {{"type", "Sequence"}, {"decoders", decs}};
    model["unk_token"] = name_or_null(t, t.unk);
    model["continuing_subword_prefix"] = nullptr;
    model["end_of_word_suffix"] = nullptr;
    model["fuse_unk"] = t.fuse_unk;
    model["byte_fallback"] = t.byte_fallback;
  }
  model["ignore_merges"] = t.ignore_merges;
  model["vocab"] = "@@QWENQ_VOCAB@@";
  model["merges"] = "@@QWENQ_MERGES@@";
  doc["model"] = model;
  std::string text = doc.dump(2);
  auto splice = [&](const std::string& marker, const std::string& value) {
    const size_t at = text.find("\"" + marker + "\"");
    QWENQ_CHECK(at != std::string::npos, "internal: marker " << marker << " missing");
    text.replace(at, marker.size() + 2, value);
  };
  splice("@@QWENQ_VOCAB@@", vocab_text(t, "    ", /*with_added=*/!added_follow_vocab(t)));
  splice("@@QWENQ_MERGES@@", merges_text(t, "    "));
  return text + "\n";
}

ojson tokenizer_config_json(const Tokenizer::Impl& t) {
  ojson cfg = t.tokenizer_config.is_object() ? t.tokenizer_config : ojson::object();
  const bool fresh = !t.tokenizer_config.is_object();
  ojson decoder = ojson::object();
  for (const AddedToken& a : t.added) {
    decoder[std::to_string(a.id)] = {{"content", a.content}, {"lstrip", a.lstrip},   {"normalized", a.normalized},
                                     {"rstrip", a.rstrip},   {"single_word", a.single_word}, {"special", a.special}};
  }
  if (fresh) {
    if (t.kind == TokenizerKind::kSentencePiece) {
      cfg["add_bos_token"] = t.add_bos;
      cfg["add_eos_token"] = t.add_eos;
    } else {
      cfg["add_prefix_space"] = false;
    }
    cfg["added_tokens_decoder"] = decoder;
    cfg["bos_token"] = name_or_null(t, t.bos);
    cfg["clean_up_tokenization_spaces"] = false;
    cfg["eos_token"] = name_or_null(t, t.eos);
    if (t.kind == TokenizerKind::kByteLevel) cfg["errors"] = "replace";
    if (t.kind == TokenizerKind::kSentencePiece) cfg["legacy"] = true;
    cfg["pad_token"] = name_or_null(t, t.pad);
    cfg["split_special_tokens"] = false;
    cfg["tokenizer_class"] = !t.tokenizer_class.empty() ? t.tokenizer_class
                             : t.kind == TokenizerKind::kByteLevel ? "Qwen2Tokenizer"
                                                                   : "LlamaTokenizerFast";
    cfg["unk_token"] = name_or_null(t, t.unk);
  } else {
    cfg["added_tokens_decoder"] = decoder;
  }
  if (!t.chat_template.empty()) cfg["chat_template"] = t.chat_template;
  return cfg;
}

std::string special_tokens_map_text(const Tokenizer::Impl& t) {
  if (!t.special_tokens_map_text.empty()) return t.special_tokens_map_text;
  ojson m = ojson::object();
  const char* keys[4] = {"bos_token", "eos_token", "pad_token", "unk_token"};
  const int32_t ids[4] = {t.bos, t.eos, t.pad, t.unk};
  for (int k = 0; k < 4; ++k) {
    const std::string n = name_or_empty(t, ids[k]);
    if (n.empty()) continue;
    m[keys[k]] = {{"content", n}, {"lstrip", false}, {"normalized", false}, {"rstrip", false}, {"single_word", false}};
  }
  return m.dump(2) + "\n";
}

}  // namespace

void Tokenizer::save_hf(const std::string& dir) const {
  const Impl& t = *impl_;
  QWENQ_CHECK(dir_exists(dir), dir << ": output directory does not exist");
  const std::string tj = t.tokenizer_json_text.empty() ? tokenizer_json_text(t) : t.tokenizer_json_text;
  write_file_atomic(path_join(dir, "tokenizer.json"), tj);
  write_file_atomic(path_join(dir, "tokenizer_config.json"), tokenizer_config_json(t).dump(2) + "\n");
  write_file_atomic(path_join(dir, "special_tokens_map.json"), special_tokens_map_text(t));
  if (t.kind == TokenizerKind::kByteLevel) {
    write_file_atomic(path_join(dir, "vocab.json"), vocab_text(t, "") + "\n");
    std::string merges = "#version: 0.2\n";
    for (const auto& m : t.merges) merges += t.pieces[m[0]] + " " + t.pieces[m[1]] + "\n";
    write_file_atomic(path_join(dir, "merges.txt"), merges);
  }
}

}  // namespace qwenq
