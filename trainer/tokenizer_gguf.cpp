// Tokenizer <-> GGUF's tokenizer.ggml.* metadata (llama.cpp's vocabulary keys).
//
//   tokenizer.ggml.model        "gpt2" (byte-level BPE: Qwen) or "llama" (SentencePiece-style BPE)
//   tokenizer.ggml.pre          "qwen2" (the only byte-level pre-tokenizer we implement) / "default"
//   tokenizer.ggml.tokens       one spelling per id up to the embedding's rows; "[PAD<i>]" for ids without one
//   tokenizer.ggml.token_type   NORMAL 1, UNKNOWN 2, CONTROL 3 (special added tokens), USER_DEFINED 4 (other added
//                               tokens), UNUSED 5 (padding ids), BYTE 6 (<0xNN>)
//   tokenizer.ggml.merges       gpt2: "left right" per merge, by rank
//   tokenizer.ggml.scores       llama: llama.cpp merges the adjacent pair whose joined token scores highest, so a
//                               merged token scores -(rank of the first merge that makes it): the same order as
//                               the ranked merges (merges_from_scores turns them back into those merges); single
//                               characters 0, control/unknown/byte -1000, unused -10000
//   tokenizer.ggml.{bos,eos,unknown,padding}_token_id, add_bos_token, add_eos_token, tokenizer.chat_template
#include <algorithm>
#include <string>

#include "core/error.h"
#include "core/gguf.h"
#include "trainer/tokenizer_impl.h"

namespace qwenq {

using namespace tokenizer_detail;

namespace {

enum TokenType : int { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

}  // namespace

void Tokenizer::write_gguf(GgufWriter& w, int64_t n_vocab, int32_t fallback_bos, int32_t fallback_eos) const {
  const Impl& t = *impl_;
  const bool sp = t.kind == TokenizerKind::kSentencePiece;
  const int64_t n = std::max<int64_t>(n_vocab, static_cast<int64_t>(t.pieces.size()));
  std::vector<std::string> tokens(n);
  std::vector<int64_t> types(n);
  std::vector<double> scores;
  std::vector<int64_t> first_rank;
  if (sp) {
    scores.assign(n, 0.0);
    first_rank.assign(n, -1);
    for (size_t r = 0; r < t.merges.size(); ++r) {
      int64_t& fr = first_rank[t.merges[r][2]];
      if (fr < 0) fr = static_cast<int64_t>(r);
    }
  }
  for (int64_t id = 0; id < n; ++id) {
    const bool known = id < static_cast<int64_t>(t.pieces.size()) && !t.pieces[id].empty();
    if (!known) {
      tokens[id] = "[PAD" + std::to_string(id) + "]";
      types[id] = kUnused;
      if (sp) scores[id] = -10000.0;
      continue;
    }
    tokens[id] = t.pieces[id];
    const uint8_t f = t.flags[id];
    if (f & kFlagAdded) {
      types[id] = id == t.unk && sp ? kUnknown : (f & kFlagSpecial) ? kControl : kUserDefined;
    } else if (sp && parse_byte_token(t.pieces[id]) >= 0) {
      types[id] = kByte;
    } else {
      types[id] = kNormal;
    }
    if (sp) {
      if (types[id] != kNormal) scores[id] = -1000.0;
      else if (first_rank[id] >= 0) scores[id] = -static_cast<double>(first_rank[id]) - 1.0;
      else scores[id] = codepoint_count(t.pieces[id]) == 1 ? 0.0 : -1000.0;
    }
  }
  w.set("tokenizer.ggml.model", GgufValue::str(sp ? "llama" : "gpt2"));
  w.set("tokenizer.ggml.pre", GgufValue::str(sp ? "default" : "qwen2"));
  w.set("tokenizer.ggml.tokens", GgufValue::str_array(std::move(tokens)));
  if (sp) w.set("tokenizer.ggml.scores", GgufValue::f32_array(std::move(scores)));
  w.set("tokenizer.ggml.token_type", GgufValue::i32_array(std::move(types)));
  if (!sp) {
    std::vector<std::string> merges;
    merges.reserve(t.merges.size());
    for (const auto& m : t.merges) merges.push_back(t.pieces[m[0]] + " " + t.pieces[m[1]]);
    w.set("tokenizer.ggml.merges", GgufValue::str_array(std::move(merges)));
  }
  const int32_t bos = t.bos >= 0 ? t.bos : fallback_bos, eos = t.eos >= 0 ? t.eos : fallback_eos;
  if (bos >= 0) w.set("tokenizer.ggml.bos_token_id", GgufValue::u32(static_cast<uint32_t>(bos)));
  if (eos >= 0) w.set("tokenizer.ggml.eos_token_id", GgufValue::u32(static_cast<uint32_t>(eos)));
  if (t.unk >= 0) w.set("tokenizer.ggml.unknown_token_id", GgufValue::u32(static_cast<uint32_t>(t.unk)));
  if (t.pad >= 0) w.set("tokenizer.ggml.padding_token_id", GgufValue::u32(static_cast<uint32_t>(t.pad)));
  w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(t.add_bos));
  w.set("tokenizer.ggml.add_eos_token", GgufValue::boolean(t.add_eos));
  if (!t.chat_template.empty()) w.set("tokenizer.chat_template", GgufValue::str(t.chat_template));
}

Tokenizer Tokenizer::from_model(const std::string& dir_or_gguf) {
  return is_gguf_file(dir_or_gguf) ? from_gguf(GgufFile(dir_or_gguf)) : from_dir(dir_or_gguf);
}

Tokenizer Tokenizer::from_gguf(const GgufFile& f) {
  const std::string& path = f.path();
  const std::string& model = f.get_string("tokenizer.ggml.model");
  QWENQ_CHECK(model == "gpt2" || model == "llama", path << ": tokenizer.ggml.model '" << model
                                                         << "' is not supported (gpt2 and llama are)");
  const bool sp = model == "llama";
  if (!sp) {
    const std::string pre = f.has("tokenizer.ggml.pre") ? f.get_string("tokenizer.ggml.pre") : "default";
    QWENQ_CHECK(pre == "qwen2", path << ": tokenizer.ggml.pre '" << pre
                                     << "' is not supported: the only byte-level pre-tokenizer implemented is qwen2's");
  }
  const GgufValue& tokens = f.get("tokenizer.ggml.tokens");
  QWENQ_CHECK(tokens.type == GgufType::ARRAY && tokens.elem == GgufType::STRING && !tokens.strs.empty(),
              path << ": tokenizer.ggml.tokens is not a non-empty array of strings");
  const size_t V = tokens.strs.size();
  std::vector<int64_t> types(V, kNormal);
  if (f.has("tokenizer.ggml.token_type")) {
    const GgufValue& tt = f.get("tokenizer.ggml.token_type");
    QWENQ_CHECK(tt.type == GgufType::ARRAY && tt.ints.size() == V,
                path << ": tokenizer.ggml.token_type has " << tt.array_size() << " entries for " << V << " tokens");
    types = tt.ints;
  }
  auto t = std::make_shared<Impl>();
  t->source = path;
  t->kind = sp ? TokenizerKind::kSentencePiece : TokenizerKind::kByteLevel;
  t->pieces.assign(V, std::string());
  std::vector<bool> eligible(V, false);
  for (size_t id = 0; id < V; ++id) {
    const std::string& s = tokens.strs[id];
    const int64_t ty = types[id];
    if (ty == kUnused) continue;
    if (ty == kControl || ty == kUnknown || ty == kUserDefined) {
      AddedToken a;
      a.id = static_cast<int32_t>(id);
      a.content = s;
      a.special = ty != kUserDefined;
      t->added.push_back(a);
      continue;
    }
    QWENQ_CHECK(!s.empty(), path << ": token " << id << " is empty");
    t->pieces[id] = s;
    const bool fresh = t->piece_to_id.emplace(s, static_cast<int32_t>(id)).second;
    QWENQ_CHECK(fresh, path << ": token " << id << " ('" << s << "') duplicates token " << t->piece_to_id[s]);
    eligible[id] = ty == kNormal;
  }
  if (sp) {
    const GgufValue& sc = f.get("tokenizer.ggml.scores");
    QWENQ_CHECK(sc.type == GgufType::ARRAY && sc.floats.size() == V,
                path << ": tokenizer.ggml.scores has " << sc.array_size() << " entries for " << V << " tokens");
    const std::vector<float> scores(sc.floats.begin(), sc.floats.end());
    t->merges = merges_from_scores(t->pieces, scores, eligible);
    set_llama_sentencepiece_options(t.get());
  } else {
    t->nfc = true;
    t->tokenizer_class = "Qwen2Tokenizer";
    // Absent: no merges (gguf-py writes no empty arrays; llama.cpp itself requires the key).
    const GgufValue empty = GgufValue::str_array({});
    const GgufValue& mg = f.has("tokenizer.ggml.merges") ? f.get("tokenizer.ggml.merges") : empty;
    QWENQ_CHECK(mg.type == GgufType::ARRAY && (mg.elem == GgufType::STRING || mg.strs.empty()),
                path << ": tokenizer.ggml.merges is not an array of strings");
    t->merges.reserve(mg.strs.size());
    for (size_t r = 0; r < mg.strs.size(); ++r) {
      const std::string& line = mg.strs[r];
      const size_t sp_at = line.find(' ');
      QWENQ_CHECK(sp_at != std::string::npos && line.find(' ', sp_at + 1) == std::string::npos,
                  path << ": tokenizer.ggml.merges[" << r << "] '" << line << "' is not two tokens and one space");
      auto id_of = [&](const std::string& s) {
        auto it = t->piece_to_id.find(s);
        return it == t->piece_to_id.end() ? -1 : it->second;
      };
      const std::string a = line.substr(0, sp_at), b = line.substr(sp_at + 1);
      const int32_t l = id_of(a), rr = id_of(b), m = id_of(a + b);
      QWENQ_CHECK(l >= 0 && rr >= 0 && m >= 0, path << ": tokenizer.ggml.merges[" << r << "] '" << line
                                                     << "' uses a token that is not in tokenizer.ggml.tokens");
      t->merges.push_back({l, rr, m});
    }
  }
  t->finalize(path);
  auto id_key = [&](const char* key) {
    const int64_t id = f.get_int_or(key, -1);
    QWENQ_CHECK(id < static_cast<int64_t>(V), path << ": " << key << " " << id << " is outside the " << V << " tokens");
    return static_cast<int32_t>(id);
  };
  t->bos = id_key("tokenizer.ggml.bos_token_id");
  t->eos = id_key("tokenizer.ggml.eos_token_id");
  t->unk = id_key("tokenizer.ggml.unknown_token_id");
  t->pad = id_key("tokenizer.ggml.padding_token_id");
  t->add_bos = f.get_int_or("tokenizer.ggml.add_bos_token", sp ? 1 : 0) != 0 && t->bos >= 0;
  t->add_eos = f.get_int_or("tokenizer.ggml.add_eos_token", 0) != 0 && t->eos >= 0;
  if (f.has("tokenizer.chat_template")) t->chat_template = f.get_string("tokenizer.chat_template");
  return Tokenizer(std::move(t));
}

}  // namespace qwenq
