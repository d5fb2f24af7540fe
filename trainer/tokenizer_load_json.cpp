// Reading the model part of a tokenizer: a Hugging Face tokenizer.json (BPE model, normalizer,
// pre-tokenizer, decoder, post-processor, added tokens) or a vocab.json + merges.txt pair (Qwen2Tokenizer).
// We accept exactly the pipelines we reproduce and refuse anything else with the file and the reason, so
// a tokenizer never silently encodes differently from Hugging Face.
#include <cstring>

#include "core/error.h"
#include "core/files.h"
#include "core/json_file.h"
#include "trainer/tokenizer_impl.h"

namespace qwenq::tokenizer_detail {

namespace {

// Flattens a normalizer / pre_tokenizer / decoder / post_processor node into its components (Sequence
// nodes are expanded; null gives nothing).
void flatten(const nlohmann::json& node, std::vector<const nlohmann::json*>* out) {
  if (node.is_null()) return;
  if (!node.is_object()) return;
  const std::string type = node.value("type", "");
  if (type == "Sequence") {
    for (const char* key : {"normalizers", "pretokenizers", "decoders", "processors"}) {
      auto it = node.find(key);
      if (it != node.end() && it->is_array()) {
        for (const auto& child : *it) flatten(child, out);
      }
    }
    return;
  }
  out->push_back(&node);
}

// The member `key` of `obj`, or null (a reference that outlives the call, unlike json::value()).
const nlohmann::json& member(const nlohmann::json& obj, const char* key) {
  static const nlohmann::json null_json;
  auto it = obj.find(key);
  return it == obj.end() ? null_json : *it;
}

std::string type_of(const nlohmann::json& node) { return node.is_object() ? node.value("type", "?") : "?"; }

bool bool_field(const nlohmann::json& node, const char* key, bool fallback) {
  auto it = node.find(key);
  if (it == node.end() || it->is_null()) return fallback;
  return it->get<bool>();
}

std::string pattern_of(const nlohmann::json& node) {
  auto it = node.find("pattern");
  if (it == node.end()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  for (const char* key : {"Regex", "String"}) {
    auto p = it->find(key);
    if (p != it->end() && p->is_string()) return p->get<std::string>();
  }
  return std::string();
}

int32_t vocab_id(const Tokenizer::Impl& t, const std::string& piece) {
  auto it = t.piece_to_id.find(piece);
  return it == t.piece_to_id.end() ? -1 : it->second;
}

void add_vocab_entry(Tokenizer::Impl* t, const std::string& piece, int64_t id, const std::string& path) {
  QWENQ_CHECK(id >= 0 && id < (int64_t{1} << 24), path << ": token '" << piece << "' has an invalid id " << id);
  if (static_cast<size_t>(id) >= t->pieces.size()) t->pieces.resize(static_cast<size_t>(id) + 1);
  QWENQ_CHECK(t->pieces[id].empty(), path << ": id " << id << " is used by both '" << t->pieces[id] << "' and '"
                                         << piece << "'");
  t->pieces[id] = piece;
  t->piece_to_id.emplace(piece, static_cast<int32_t>(id));
}

void add_merge(Tokenizer::Impl* t, const std::string& a, const std::string& b, size_t index, const std::string& path) {
  const int32_t l = vocab_id(*t, a), r = vocab_id(*t, b), m = vocab_id(*t, a + b);
  QWENQ_CHECK(l >= 0 && r >= 0 && m >= 0, path << ": merge " << index + 1 << " ('" << a << "' '" << b
                                                << "') uses a token that is not in the vocabulary");
  t->merges.push_back({l, r, m});
}

void load_byte_level_pipeline(const nlohmann::json& j, const std::string& path, Tokenizer::Impl* t) {
  t->kind = TokenizerKind::kByteLevel;
  std::vector<const nlohmann::json*> norms, pres;
  flatten(member(j, "normalizer"), &norms);
  flatten(member(j, "pre_tokenizer"), &pres);
  t->nfc = false;
  for (const auto* n : norms) {
    QWENQ_CHECK(type_of(*n) == "NFC", path << ": normalizer '" << type_of(*n)
                                           << "' is not supported for byte-level BPE (only NFC)");
    t->nfc = true;
  }
  bool split_ok = false, bytelevel_ok = false;
  for (const auto* p : pres) {
    const std::string type = type_of(*p);
    if (type == "Split") {
      const std::string pat = pattern_of(*p);
      QWENQ_CHECK(pat == kQwen2Pattern, path << ": pre-tokenizer regex " << pat
                                             << " is not supported (only the Qwen2 one: " << kQwen2Pattern << ")");
      QWENQ_CHECK(p->value("behavior", "Isolated") == "Isolated" && !bool_field(*p, "invert", false),
                  path << ": the Split pre-tokenizer must be behavior Isolated, invert false");
      split_ok = true;
    } else if (type == "ByteLevel") {
      QWENQ_CHECK(!bool_field(*p, "use_regex", true),
                  path << ": ByteLevel pre-tokenizer with use_regex (GPT-2's pre-tokenizer) is not supported; only "
                          "Qwen2's Split regex + ByteLevel(use_regex=false)");
      QWENQ_CHECK(!bool_field(*p, "add_prefix_space", false),
                  path << ": ByteLevel add_prefix_space=true is not supported");
      bytelevel_ok = true;
    } else {
      QWENQ_FAIL(path << ": pre-tokenizer '" << type << "' is not supported for byte-level BPE");
    }
  }
  QWENQ_CHECK(split_ok && bytelevel_ok,
              path << ": byte-level BPE needs the pre-tokenizer Sequence[Split(Qwen2 regex), ByteLevel]");
}

void load_sentencepiece_pipeline(const nlohmann::json& j, const std::string& path, Tokenizer::Impl* t) {
  t->kind = TokenizerKind::kSentencePiece;
  std::vector<const nlohmann::json*> norms, pres, decs;
  flatten(member(j, "normalizer"), &norms);
  flatten(member(j, "pre_tokenizer"), &pres);
  flatten(member(j, "decoder"), &decs);
  t->sp_prepend = t->sp_replace_space = false;
  for (const auto* n : norms) {
    const std::string type = type_of(*n);
    if (type == "Prepend" && n->value("prepend", "") == kSpaceMarker) {
      t->sp_prepend = true;
    } else if (type == "Replace" && pattern_of(*n) == " " && n->value("content", "") == kSpaceMarker) {
      t->sp_replace_space = true;
    } else {
      QWENQ_FAIL(path << ": normalizer '" << type << "' is not supported (SentencePiece-style models: Prepend(\"▁\") "
                      << "and Replace(\" \", \"▁\") only)");
    }
  }
  for (const auto* p : pres) {
    const std::string type = type_of(*p);
    QWENQ_CHECK(type == "Metaspace", path << ": pre-tokenizer '" << type
                                          << "' is not supported for SentencePiece-style BPE (only Metaspace)");
    QWENQ_CHECK(p->value("replacement", kSpaceMarker) == kSpaceMarker, path << ": Metaspace replacement must be ▁");
    t->metaspace = true;
    t->metaspace_split = bool_field(*p, "split", true);
    const std::string scheme = p->value("prepend_scheme", "");
    if (scheme == "first") {
      t->metaspace_prepend = PrependScheme::kFirst;
    } else if (scheme == "never") {
      t->metaspace_prepend = PrependScheme::kNever;
    } else if (scheme == "always" || bool_field(*p, "add_prefix_space", true)) {
      t->metaspace_prepend = PrependScheme::kAlways;
    } else {
      t->metaspace_prepend = PrependScheme::kNever;
    }
  }
  t->strip_leading_space = false;
  for (const auto* d : decs) {
    const std::string type = type_of(*d);
    if (type == "Strip" && d->value("content", "") == " " && d->value("start", 0) >= 1) t->strip_leading_space = true;
    if (type == "Metaspace" && (d->value("prepend_scheme", "always") != "never" && bool_field(*d, "add_prefix_space", true))) {
      t->metaspace_decoder = true;
    }
  }
}

}  // namespace

void load_tokenizer_json(const std::string& path, Tokenizer::Impl* t) {
  std::string text = read_file(path);
  const nlohmann::json j = parse_json_text(text, path);
  QWENQ_CHECK(j.is_object(), path << ": not a tokenizer.json (top level is not an object)");
  auto mit = j.find("model");
  QWENQ_CHECK(mit != j.end() && mit->is_object(), path << ": no \"model\" object");
  const nlohmann::json& model = *mit;
  const std::string mtype = model.value("type", "BPE");
  QWENQ_CHECK(mtype == "BPE", path << ": model type '" << mtype << "' is not supported (only BPE)");
  try {
    auto dit = model.find("dropout");
    QWENQ_CHECK(dit == model.end() || dit->is_null() || dit->get<double>() == 0.0,
                path << ": BPE dropout is not supported");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      auto it = model.find(key);
      QWENQ_CHECK(it == model.end() || it->is_null() || it->get<std::string>().empty(),
                  path << ": BPE " << key << " is not supported");
    }
    t->byte_fallback = bool_field(model, "byte_fallback", false);
    t->fuse_unk = bool_field(model, "fuse_unk", false);
    t->ignore_merges = bool_field(model, "ignore_merges", false);
    auto uit = model.find("unk_token");
    t->model_unk_token = (uit != model.end() && uit->is_string()) ? uit->get<std::string>() : std::string();

    auto vit = model.find("vocab");
    QWENQ_CHECK(vit != model.end() && vit->is_object(), path << ": model has no \"vocab\" object");
    t->pieces.assign(vit->size(), std::string());
    t->piece_to_id.reserve(vit->size() * 2);
    for (auto it = vit->begin(); it != vit->end(); ++it) add_vocab_entry(t, it.key(), it.value().get<int64_t>(), path);

    auto git = model.find("merges");
    QWENQ_CHECK(git != model.end() && git->is_array(), path << ": model has no \"merges\" array");
    t->merges.reserve(git->size());
    size_t index = 0;
    for (const auto& m : *git) {
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ');
        QWENQ_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos,
                    path << ": merge " << index + 1 << " '" << s << "' is not two tokens separated by one space");
        add_merge(t, s.substr(0, sp), s.substr(sp + 1), index, path);
      } else {
        QWENQ_CHECK(m.is_array() && m.size() == 2, path << ": merge " << index + 1 << " is not a pair");
        add_merge(t, m[0].get<std::string>(), m[1].get<std::string>(), index, path);
      }
      ++index;
    }

    auto ait = j.find("added_tokens");
    if (ait != j.end() && ait->is_array()) {
      for (const auto& a : *ait) {
        AddedToken tok;
        tok.id = a.at("id").get<int32_t>();
        tok.content = a.at("content").get<std::string>();
        tok.special = bool_field(a, "special", false);
        tok.lstrip = bool_field(a, "lstrip", false);
        tok.rstrip = bool_field(a, "rstrip", false);
        tok.single_word = bool_field(a, "single_word", false);
        tok.normalized = bool_field(a, "normalized", false);
        t->added.push_back(tok);
      }
    }

    // Which of the two pipelines is this?
    std::vector<const nlohmann::json*> pres, decs, norms;
    flatten(member(j, "pre_tokenizer"), &pres);
    flatten(member(j, "decoder"), &decs);
    flatten(member(j, "normalizer"), &norms);
    bool byte_level = false, sentencepiece = t->byte_fallback;
    for (const auto* p : pres) {
      byte_level |= type_of(*p) == "ByteLevel";
      sentencepiece |= type_of(*p) == "Metaspace";
    }
    for (const auto* d : decs) byte_level |= type_of(*d) == "ByteLevel";
    for (const auto* n : norms) sentencepiece |= n->value("content", "") == kSpaceMarker;
    if (byte_level) {
      load_byte_level_pipeline(j, path, t);
    } else if (sentencepiece) {
      load_sentencepiece_pipeline(j, path, t);
    } else {
      QWENQ_FAIL(path << ": neither a byte-level (ByteLevel) nor a SentencePiece-style (▁, byte_fallback) BPE "
                         "tokenizer; not supported");
    }

    auto pit = j.find("post_processor");
    if (pit != j.end() && pit->is_object() && pit->value("type", "") == "TemplateProcessing") {
      t->has_template_processing = true;
      const auto& single = pit->at("single");
      auto special_of = [](const nlohmann::json& item) {
        auto s = item.find("SpecialToken");
        return s == item.end() ? std::string() : s->at("id").get<std::string>();
      };
      if (single.is_array() && !single.empty()) {
        t->template_first_special = special_of(single.front());
        t->template_last_special = single.size() > 1 ? special_of(single.back()) : std::string();
      }
      const auto pair = pit->find("pair");
      if (pair != pit->end() && pair->is_array()) {
        for (const auto& item : *pair) {
          const auto seq = item.find("Sequence");
          if (seq != item.end()) {
            const std::string id = seq->at("id").get<std::string>();
            QWENQ_CHECK(id == "A" || id == "B", path << ": a TemplateProcessing pair item names sequence \"" << id
                                                     << "\" (A or B)");
            t->template_pair.push_back("$" + id);
          } else {
            const std::string special = special_of(item);
            QWENQ_CHECK(!special.empty(), path << ": a TemplateProcessing pair item is neither a Sequence nor a "
                                                  "SpecialToken: " << item.dump());
            t->template_pair.push_back(special);
          }
        }
      }
    }
  } catch (const nlohmann::json::exception& e) {
    QWENQ_FAIL(path << ": unexpected tokenizer.json content (" << e.what() << ")");
  }
  t->tokenizer_json_text = std::move(text);
}

namespace {

// SAX reader for vocab.json ({token: id, ...}): fills the vocabulary without building a 150K-key DOM.
class VocabSax : public nlohmann::json_sax<nlohmann::json> {
 public:
  VocabSax(Tokenizer::Impl* t, const std::string& path) : t_(t), path_(path) {}
  bool null() override { return bad("null"); }
  bool boolean(bool) override { return bad("a boolean"); }
  bool number_integer(number_integer_t v) override { return value(v); }
  bool number_unsigned(number_unsigned_t v) override { return value(static_cast<int64_t>(v)); }
  bool number_float(number_float_t, const string_t&) override { return bad("a float"); }
  bool string(string_t&) override { return bad("a string"); }
  bool binary(binary_t&) override { return bad("binary"); }
  bool start_object(std::size_t) override { return ++depth_ == 1 || bad("an object"); }
  bool key(string_t& k) override {
    key_ = std::move(k);
    return true;
  }
  bool end_object() override {
    --depth_;
    return true;
  }
  bool start_array(std::size_t) override { return bad("an array"); }
  bool end_array() override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    QWENQ_FAIL(path_ << ": not valid JSON (" << e.what() << ")");
  }
  size_t count() const { return count_; }

 private:
  bool value(int64_t id) {
    QWENQ_CHECK(depth_ == 1, path_ << ": expected a JSON object {token: id}");
    add_vocab_entry(t_, key_, id, path_);
    ++count_;
    return true;
  }
  bool bad(const char* what) { QWENQ_FAIL(path_ << ": expected a JSON object {token: id}, found " << what); }

  Tokenizer::Impl* t_;
  const std::string& path_;
  std::string key_;
  int depth_ = 0;
  size_t count_ = 0;
};

}  // namespace

void load_vocab_merges(const std::string& vocab_path, const std::string& merges_path, Tokenizer::Impl* t) {
  t->kind = TokenizerKind::kByteLevel;
  t->nfc = true;  // Qwen2Tokenizer normalizes to NFC
  {
    const std::string text = read_file(vocab_path);
    t->pieces.reserve(text.size() / 16);
    t->piece_to_id.reserve(text.size() / 8);
    VocabSax sax(t, vocab_path);
    nlohmann::json::sax_parse(text, &sax);
    QWENQ_CHECK(sax.count() > 0, vocab_path << ": expected a non-empty JSON object {token: id}");
  }
  const std::string text = read_file(merges_path);
  size_t pos = 0, line_no = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
    size_t lead = 0;
    while (lead < line.size() && (line[lead] == ' ' || line[lead] == '\t')) ++lead;
    line.erase(0, lead);
    if (line.empty() || (line_no == 1 && line.rfind("#version:", 0) == 0)) continue;
    const size_t sp = line.find(' ');
    QWENQ_CHECK(sp != std::string::npos && line.find(' ', sp + 1) == std::string::npos,
                merges_path << ":" << line_no << ": expected two tokens separated by one space, got '" << line << "'");
    const std::string a = line.substr(0, sp), b = line.substr(sp + 1);
    const int32_t l = vocab_id(*t, a), r = vocab_id(*t, b), m = vocab_id(*t, a + b);
    QWENQ_CHECK(l >= 0 && r >= 0 && m >= 0, merges_path << ":" << line_no << ": merge '" << line
                                                        << "' uses a token that is not in " << vocab_path);
    t->merges.push_back({l, r, m});
  }
}

}  // namespace qwenq::tokenizer_detail
