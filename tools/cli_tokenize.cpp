// qwen-quant tokenize: run the tokenizer from the command line (and the oracle tests' entry point).
//
//   qwen-quant tokenize --model DIR_OR_REPO --text "Hello world"          -> {"ids":[9707,1879]}
//   qwen-quant tokenize --model DIR --file corpus.txt --lines --out ids.jsonl
//   qwen-quant tokenize --model DIR --decode --file ids.jsonl             -> the text again
//   qwen-quant tokenize --llama2c-tokenizer tok512.bin --save-hf OUT_DIR
//
// --lines encodes every line separately INCLUDING its terminator ("\n" or "\r\n"): a final line without
// one is encoded as it is. That is what Python gets from data.split(b"\n") with the "\n" put back, and
// what the oracle test feeds Hugging Face; concatenating the decoded lines gives the file back.
// --jsonl takes one JSON string (or {"text": ...}) per line instead, for texts that contain newlines.
// --chat takes one chat record per line ({"messages": [...], "tools": [...]}, trainer/chat_record.h) and writes
// {"text": ..., "ids": [...]}: the tokenizer's chat template applied as transformers' apply_chat_template does
// (--add-generation-prompt, --no-thinking = enable_thinking=False), then encoded without BOS/EOS.
// Output: one JSON object {"ids":[...]} per input (line). Speed goes to stderr: tokens/s and MB/s of
// the encoding itself (loading and writing excluded).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/jsonl.h"
#include "core/gguf.h"
#include "tools/cli.h"
#include "tools/cli_common.h"
#include "trainer/chat_record.h"
#include "trainer/model_dir.h"
#include "trainer/tokenizer.h"

namespace qwenq::cli {

namespace {

struct TokenizeArgs {
  std::string model, llama2c, text, file, out, save_hf, text_pair;
  int64_t max_len = 0;  // with --text-pair
  bool text_given = false, lines = false, jsonl = false, no_special = false, split_special = false, decode = false;
  bool skip_special = false, quiet = false, chat = false, add_generation_prompt = false, no_thinking = false;
  int threads = 1;
};

Tokenizer load_tokenizer(const TokenizeArgs& a) {
  QWENQ_CHECK(a.model.empty() != a.llama2c.empty(), "tokenize: give exactly one of --model or --llama2c-tokenizer");
  if (!a.llama2c.empty()) return Tokenizer::from_llama2c(a.llama2c);
  // A local directory is used as it is (it may hold only tokenizer files); anything else is a repo id.
  return Tokenizer::from_model(dir_exists(a.model) || is_gguf_file(a.model) ? a.model : resolve_model_dir(a.model));
}

std::string read_input(const TokenizeArgs& a) {
  if (a.text_given) return a.text;
  if (a.file == "-") return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  return read_file(a.file);
}

std::vector<std::string> split_records(const std::string& input, bool lines) {
  std::vector<std::string> out;
  if (!lines) {
    out.push_back(input);
    return out;
  }
  size_t pos = 0;
  while (pos < input.size()) {
    size_t end = input.find('\n', pos);
    end = end == std::string::npos ? input.size() : end + 1;
    out.push_back(input.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

// One record of ids: {"ids":[...]}, a bare JSON array, or whitespace-separated integers.
std::vector<int32_t> parse_ids(const std::string& record, const std::string& where) {
  std::vector<int32_t> ids;
  const size_t first = record.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return ids;
  if (record[first] == '{' || record[first] == '[') {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(record);
    } catch (const nlohmann::json::parse_error& e) {
      QWENQ_FAIL(where << ": not valid JSON (" << e.what() << ")");
    }
    const nlohmann::json& arr = j.is_object() ? j.at("ids") : j;
    QWENQ_CHECK(arr.is_array(), where << ": expected an array of token ids");
    for (const auto& v : arr) {
      QWENQ_CHECK(v.is_number_integer(), where << ": token ids must be integers");
      ids.push_back(v.get<int32_t>());
    }
    return ids;
  }
  size_t p = first;
  while (p < record.size()) {
    size_t used = 0;
    try {
      ids.push_back(static_cast<int32_t>(std::stol(record.substr(p), &used)));
    } catch (const std::exception&) {
      QWENQ_FAIL(where << ": expected token ids, got '" << record.substr(p, 20) << "'");
    }
    p += used;
    p = record.find_first_not_of(" \t\r\n,", p);
    if (p == std::string::npos) break;
  }
  return ids;
}

// --jsonl: every non-empty line is a JSON string or an object with a "text" field.
std::vector<std::string> parse_jsonl_records(const std::string& input, const std::string& where) {
  std::vector<std::string> out;
  for_each_json_line(input, where, [&](const nlohmann::ordered_json& record, const std::string& at) {
    const nlohmann::ordered_json& j = record.is_object() && record.contains("text") ? record["text"] : record;
    QWENQ_CHECK(j.is_string(), at << ": expected a JSON string or {\"text\": ...}");
    out.push_back(j.get<std::string>());
  });
  return out;
}

void append_ids_json(const std::vector<int32_t>& ids, std::string* out) {
  *out += "{\"ids\":[";
  char buf[16];
  for (size_t i = 0; i < ids.size(); ++i) {
    const int n = std::snprintf(buf, sizeof(buf), i ? ",%d" : "%d", ids[i]);
    out->append(buf, static_cast<size_t>(n));
  }
  *out += "]}\n";
}

void write_output(const TokenizeArgs& a, const std::string& text) {
  if (a.out.empty()) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  } else {
    write_file_atomic(a.out, text);
  }
}

void save_hf_dir(const Tokenizer& tok, const std::string& dir) {
  if (dir_exists(dir)) {
    tok.save_hf(dir);
    return;
  }
  StagedDir staged(dir, false);
  tok.save_hf(staged.path());
  staged.commit();
}

// --chat: every non-empty line is a chat record; writes {"text", "ids"} per record.
std::string render_chat_records(const Tokenizer& tok, const TokenizeArgs& a, const std::string& input,
                                const std::string& where) {
  ChatOptions opt;
  opt.add_generation_prompt = a.add_generation_prompt;
  opt.enable_thinking = !a.no_thinking;
  warn_if_no_thinking_switch(tok, a.no_thinking, "tokenize");
  std::string out;
  for_each_json_line(input, where, [&](const nlohmann::ordered_json& j, const std::string& at) {
    std::vector<ChatMessage> messages;
    opt.tools.clear();
    const std::string why = parse_chat_record(j, /*need_assistant=*/false, &messages, &opt.tools);
    QWENQ_CHECK(why.empty(), at << ": " << why);
    std::string text;
    try {
      text = tok.render_chat(messages, opt).text;
    } catch (const Error& e) {
      QWENQ_FAIL(at << ": " << e.what());
    }
    nlohmann::json rec;
    rec["text"] = text;
    rec["ids"] = tok.encode(text, /*add_special_tokens=*/false, /*parse_special=*/true);
    out += rec.dump() + "\n";
  });
  return out;
}

void run_tokenize(const TokenizeArgs& a) {
  const auto t_load = std::chrono::steady_clock::now();
  const Tokenizer tok = load_tokenizer(a);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  if (!a.quiet) std::fprintf(stderr, "tokenizer: %s (loaded in %.2fs)\n", tok.describe().c_str(), load_s);
  if (!a.save_hf.empty()) {
    save_hf_dir(tok, a.save_hf);
    if (!a.quiet) std::fprintf(stderr, "wrote a Hugging Face tokenizer to %s\n", a.save_hf.c_str());
  }
  if (!a.text_given && a.file.empty()) {
    QWENQ_CHECK(!a.save_hf.empty(), "tokenize: give --text or --file (or --save-hf)");
    return;
  }
  const std::string input = read_input(a);
  const std::string where = a.text_given ? std::string("--text") : a.file;

  if (a.chat) {
    QWENQ_CHECK(!a.decode && !a.lines && !a.jsonl, "tokenize: --chat reads its own records (one JSON per line); "
                                                   "it cannot be combined with --decode, --lines or --jsonl");
    write_output(a, render_chat_records(tok, a, input, where));
    return;
  }
  QWENQ_CHECK(!a.add_generation_prompt && !a.no_thinking, "tokenize: --add-generation-prompt and --no-thinking need --chat");

  if (a.decode) {
    std::string out;
    size_t line_no = 0;
    for (const std::string& rec : split_records(input, true)) {
      ++line_no;
      out += tok.decode(parse_ids(rec, where + ":" + std::to_string(line_no)), a.skip_special);
    }
    write_output(a, out);
    return;
  }

  if (!a.text_pair.empty()) {  // tokenizer(text, text_pair, truncation=True, max_length=N)
    QWENQ_CHECK(a.text_given && !a.lines && !a.jsonl && !a.split_special,
                "tokenize: --text-pair goes with --text (not --file, --lines, --jsonl or --split-special)");
    std::string out;
    append_ids_json(tok.encode_pair(input, a.text_pair, a.max_len, !a.no_special), &out);
    write_output(a, out);
    return;
  }
  QWENQ_CHECK(a.max_len == 0, "tokenize: --max-len cuts a --text-pair");
  const std::vector<std::string> records =
      a.jsonl ? parse_jsonl_records(input, where) : split_records(input, a.lines);
  std::vector<std::vector<int32_t>> ids(records.size());
  const int threads = std::max(1, std::min<int>(a.threads, static_cast<int>(records.size())));
  const auto t0 = std::chrono::steady_clock::now();
  auto work = [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) ids[i] = tok.encode(records[i], !a.no_special, !a.split_special);
  };
  if (threads <= 1) {
    work(0, records.size());
  } else {
    std::vector<std::thread> pool;
    const size_t chunk = (records.size() + threads - 1) / threads;
    for (int t = 0; t < threads; ++t) {
      const size_t b = std::min(records.size(), t * chunk), e = std::min(records.size(), b + chunk);
      pool.emplace_back(work, b, e);
    }
    for (auto& th : pool) th.join();
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string out;
  size_t n_tokens = 0;
  for (const auto& r : ids) {
    append_ids_json(r, &out);
    n_tokens += r.size();
  }
  write_output(a, out);
  if (!a.quiet) {
    const double secs = s > 0 ? s : 1e-9;
    std::fprintf(stderr, "tokenize: %zu record(s), %zu tokens, %.2f MB in %.3fs: %.0f tokens/s, %.2f MB/s (%d thread%s)\n",
                 records.size(), n_tokens, input.size() / 1e6, s, n_tokens / secs, input.size() / 1e6 / secs, threads,
                 threads == 1 ? "" : "s");
  }
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto a = std::make_shared<TokenizeArgs>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Encode text to token ids (JSONL) or decode ids, like Hugging Face");
  cmd->add_option("--model,-m", a->model, "model/tokenizer directory or Hugging Face repo id");
  cmd->add_option("--llama2c-tokenizer", a->llama2c, "llama2.c tokenizer .bin (e.g. tok512.bin)")
      ->check(CLI::ExistingFile);
  CLI::Option* text = cmd->add_option("--text", a->text, "input text (with --decode: token ids)");
  CLI::Option* file = cmd->add_option("--file", a->file, "input file ('-' for stdin)");
  cmd->add_option("--text-pair", a->text_pair,
                  "with --text: encode the sequence pair (text, text_pair), as tokenizer(text, text_pair) does");
  cmd->add_option("--max-len", a->max_len,
                  "with --text-pair: cut the pair to this many tokens, longest first (truncation=True, max_length)")
      ->check(at_least(0, "NONNEGATIVE"));
  text->excludes(file);
  cmd->add_flag("--lines", a->lines,
                "encode each line separately, including its \\n or \\r\\n terminator (one JSON object per line)");
  cmd->add_flag("--jsonl", a->jsonl,
                "input lines are JSON strings or {\"text\": ...} objects, one record each (e.g. C4 JSONL)");
  cmd->add_flag("--no-special", a->no_special, "do not add BOS/EOS (add_special_tokens=false)");
  cmd->add_flag("--split-special", a->split_special,
                "encode special-token text as ordinary text (Hugging Face split_special_tokens=True)");
  cmd->add_flag("--decode", a->decode,
                "input holds token ids ({\"ids\":[...]}, JSON arrays or integers; one record per line); print text");
  cmd->add_flag("--skip-special", a->skip_special, "with --decode: drop special tokens");
  cmd->add_flag("--chat", a->chat,
                "input lines are chat records {\"messages\": [...], \"tools\": [...]}: apply the chat template, "
                "then encode; writes {\"text\", \"ids\"} per record");
  cmd->add_flag("--add-generation-prompt", a->add_generation_prompt, "with --chat: end with the assistant's prompt");
  cmd->add_flag("--no-thinking", a->no_thinking,
                "with --chat: Qwen3's enable_thinking=False (an empty think block in the generation prompt)");
  cmd->add_option("--out,-o", a->out, "output file (default: stdout)");
  cmd->add_option("--save-hf", a->save_hf,
                  "write the tokenizer as a Hugging Face directory (tokenizer.json, tokenizer_config.json, ...)");
  cmd->add_option("--threads", a->threads, "threads for --lines (default 1)")->check(CLI::PositiveNumber);
  cmd->add_flag("--quiet,-q", a->quiet, "no progress lines on stderr");
  cmd->callback([a, text]() {
    a->text_given = text->count() > 0;
    run_tokenize(*a);
  });
}

}  // namespace qwenq::cli
