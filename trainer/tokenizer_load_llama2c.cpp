// Tokenizer::from_llama2c: llama2.c's tokenizer .bin (tok512.bin, tokenizer.bin) as a SentencePiece-style BPE.
//
// File: int32 max_token_length, then per token float32 score, int32 byte length, bytes (no count: tokens
// run to the end of the file). llama2.c's exporter writes pieces with real spaces instead of "▁" and wraps
// BOS/EOS as "\n<s>\n" / "\n</s>\n"; we store the Hugging Face spellings ("▁the", "<s>") so that the same
// Impl encodes like llama2.c's encode() and saves a tokenizer.json that transformers loads.
//
// llama2.c's encode: BOS, a dummy-prefix " ", one token per UTF-8 character (unknown ones as <0xNN> =
// byte + 3), then repeatedly merge the adjacent pair whose concatenation is in the vocabulary with the
// highest score (leftmost on ties). We express the same thing as ranked merges (merges_from_scores, the
// transformers conversion), which is what a Hugging Face BPE with byte_fallback applies.
#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/files.h"
#include "trainer/tokenizer_impl.h"
#include "trainer/unicode_text.h"

namespace qwenq {

using namespace tokenizer_detail;

namespace tokenizer_detail {

size_t codepoint_count(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::vector<std::array<int32_t, 3>> merges_from_scores(const std::vector<std::string>& pieces,
                                                       const std::vector<float>& scores,
                                                       const std::vector<bool>& eligible) {
  std::unordered_map<std::string, int32_t> id_of;
  id_of.reserve(pieces.size() * 2);
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (eligible[i]) id_of.emplace(pieces[i], static_cast<int32_t>(i));
  }
  struct Row {
    int32_t l, r, m;
    float score;
    size_t len_l, len_r;
  };
  std::vector<Row> rows;
  for (size_t m = 0; m < pieces.size(); ++m) {
    if (!eligible[m]) continue;
    const std::string& p = pieces[m];
    std::vector<Row> local;
    for (size_t cut = 1; cut < p.size(); ++cut) {
      if ((static_cast<unsigned char>(p[cut]) & 0xC0) == 0x80) continue;  // split between code points only
      auto l = id_of.find(p.substr(0, cut));
      auto r = id_of.find(p.substr(cut));
      if (l == id_of.end() || r == id_of.end()) continue;
      local.push_back({l->second, r->second, static_cast<int32_t>(m), scores[m], codepoint_count(l->first),
                       codepoint_count(r->first)});
    }
    std::sort(local.begin(), local.end(), [](const Row& a, const Row& b) { return a.l != b.l ? a.l < b.l : a.r < b.r; });
    rows.insert(rows.end(), local.begin(), local.end());
  }
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.len_l != b.len_l) return a.len_l > b.len_l;
    return a.len_r > b.len_r;
  });
  std::vector<std::array<int32_t, 3>> merges;
  merges.reserve(rows.size());
  for (const Row& r : rows) merges.push_back({r.l, r.r, r.m});
  return merges;
}

void set_llama_sentencepiece_options(Tokenizer::Impl* t) {
  t->sp_prepend = true;
  t->sp_replace_space = true;
  t->byte_fallback = true;
  t->fuse_unk = true;
  t->strip_leading_space = true;
  t->tokenizer_class = "LlamaTokenizerFast";
}

}  // namespace tokenizer_detail

Tokenizer Tokenizer::from_llama2c(const std::string& tok_bin_path) {
  const std::string data = read_file(tok_bin_path);
  QWENQ_CHECK(data.size() >= 4, tok_bin_path << ": file too short for a llama2.c tokenizer (" << data.size()
                                             << " bytes)");
  size_t off = 0;
  auto read_i32 = [&](int32_t* v) {
    std::memcpy(v, data.data() + off, 4);
    off += 4;
  };
  int32_t max_len;
  read_i32(&max_len);
  QWENQ_CHECK(max_len > 0 && max_len < (1 << 16), tok_bin_path << ": implausible max token length " << max_len
                                                                << " (not a llama2.c tokenizer?)");
  auto t = std::make_shared<Impl>();
  t->source = tok_bin_path;
  t->kind = TokenizerKind::kSentencePiece;
  std::vector<float> scores;
  while (off < data.size()) {
    const size_t id = t->pieces.size();
    QWENQ_CHECK(data.size() - off >= 8, tok_bin_path << ": file ends inside the header of token " << id);
    float score;
    std::memcpy(&score, data.data() + off, 4);
    off += 4;
    int32_t len;
    read_i32(&len);
    QWENQ_CHECK(len >= 0 && len <= max_len, tok_bin_path << ": token " << id << " has length " << len
                                                         << " (max_token_length is " << max_len << ")");
    QWENQ_CHECK(data.size() - off >= static_cast<size_t>(len), tok_bin_path << ": file ends inside token " << id);
    t->pieces.push_back(data.substr(off, static_cast<size_t>(len)));
    scores.push_back(score);
    off += static_cast<size_t>(len);
  }
  const size_t V = t->pieces.size();
  QWENQ_CHECK(V >= 3, tok_bin_path << ": only " << V << " tokens");

  std::vector<bool> eligible(V, true);
  for (size_t id = 0; id < V; ++id) {
    std::string& p = t->pieces[id];
    // llama2.c's exporter decorates BOS/EOS with newlines.
    if (p.size() > 2 && p.front() == '\n' && p.back() == '\n' && p[1] == '<') p = p.substr(1, p.size() - 2);
    if (p == "<unk>" || p == "<s>" || p == "</s>") {
      AddedToken a;
      a.id = static_cast<int32_t>(id);
      a.content = p;
      a.special = true;
      t->added.push_back(a);
      eligible[id] = false;
      continue;
    }
    if (parse_byte_token(p) >= 0) {
      eligible[id] = false;
      continue;
    }
    QWENQ_CHECK(!p.empty(), tok_bin_path << ": token " << id << " is empty");
    QWENQ_CHECK(unicode::is_valid_utf8(p), tok_bin_path << ": token " << id << " is not valid UTF-8");
    QWENQ_CHECK(p.find(kSpaceMarker) == std::string::npos,
                tok_bin_path << ": token " << id << " contains both spaces and '▁'; ambiguous");
    std::string spelled;
    for (char ch : p) {
      if (ch == ' ') {
        spelled += kSpaceMarker;
      } else {
        spelled.push_back(ch);
      }
    }
    p = std::move(spelled);
  }
  for (size_t id = 0; id < V; ++id) {
    const bool fresh = t->piece_to_id.emplace(t->pieces[id], static_cast<int32_t>(id)).second;
    QWENQ_CHECK(fresh, tok_bin_path << ": token " << id << " ('" << t->pieces[id] << "') duplicates token "
                                    << t->piece_to_id[t->pieces[id]]);
  }
  t->merges = merges_from_scores(t->pieces, scores, eligible);
  set_llama_sentencepiece_options(t.get());
  t->finalize(tok_bin_path);
  auto id_of = [&](const char* name) {
    auto it = t->added_to_id.find(name);
    return it == t->added_to_id.end() ? -1 : it->second;
  };
  t->unk = id_of("<unk>");
  t->bos = id_of("<s>");
  t->eos = id_of("</s>");
  t->add_bos = t->bos >= 0;
  return Tokenizer(std::move(t));
}

}  // namespace qwenq
