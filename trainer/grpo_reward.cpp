// The built-in reward functions and the external scorer of trainer/grpo_reward.h.
#include "trainer/grpo_reward.h"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <regex>
#include <thread>

#include "core/error.h"
#include "trainer/gsm8k.h"
#include "trainer/model_dir.h"
#include "trainer/reward_model.h"

namespace qwenq {

namespace {

using Json = nlohmann::ordered_json;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The reference answer of a record as text ("" when it has none): "solution", "answer" or "ground_truth".
std::string reference_of(const Json& record) {
  for (const char* key : {"solution", "answer", "ground_truth"}) {
    if (!record.contains(key)) continue;
    const Json& v = record[key];
    if (v.is_string()) return v.get<std::string>();
    if (v.is_number()) return v.dump();
  }
  return "";
}

// The contents of the last "\boxed{...}" (braces balanced), or "" when there is none.
std::string last_boxed(const std::string& s) {
  const size_t at = s.rfind("\\boxed{");
  if (at == std::string::npos) return "";
  int depth = 1;
  const size_t from = at + 7;
  for (size_t i = from; i < s.size(); ++i) {
    if (s[i] == '{') ++depth;
    if (s[i] == '}' && --depth == 0) return s.substr(from, i - from);
  }
  return "";
}

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// A number after gsm8k_normalize ("1,000" -> "1000", "$5" -> "5", "3." -> "3"), or NaN.
double as_number(const std::string& s) {
  const std::string n = trim(gsm8k_normalize(s));
  if (n.empty()) return kNaN;
  char* end = nullptr;
  const double v = std::strtod(n.c_str(), &end);
  return end != nullptr && *end == '\0' ? v : kNaN;
}

class Accuracy : public RewardFunction {
 public:
  std::string check_record(const Json& record) const override {
    return reference_of(record).empty() ? "the accuracy reward needs a reference answer: a \"solution\", \"answer\" or "
                                          "\"ground_truth\" field (a string or a number)"
                                        : "";
  }
  std::vector<double> score(const std::vector<RewardSample>& samples) override {
    std::vector<double> out;
    for (const RewardSample& s : samples) {
      const std::string ref = reference_final_answer(reference_of(*s.record));
      out.push_back(answers_agree(completion_final_answer(s.completion), ref) ? 1.0 : 0.0);
    }
    return out;
  }
};

class ThinkFormat : public RewardFunction {
 public:
  std::vector<double> score(const std::vector<RewardSample>& samples) override {
    std::vector<double> out;
    for (const RewardSample& s : samples) {
      const std::string& c = s.completion;
      const bool ok = c.rfind("<think>", 0) == 0 && c.find("<think>", 7) == std::string::npos &&
                      c.find("</think>", 7) != std::string::npos;
      out.push_back(ok ? 1.0 : 0.0);
    }
    return out;
  }
};

class RegexReward : public RewardFunction {
 public:
  explicit RegexReward(const std::string& pattern) {
    try {
      re_ = std::regex(pattern, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      QWENQ_FAIL("--reward regex=" << pattern << ": not a valid ECMAScript regular expression (" << e.what() << ")");
    }
  }
  std::vector<double> score(const std::vector<RewardSample>& samples) override {
    std::vector<double> out;
    for (const RewardSample& s : samples) out.push_back(std::regex_search(s.completion, re_) ? 1.0 : 0.0);
    return out;
  }

 private:
  std::regex re_;
};

class Contains : public RewardFunction {
 public:
  explicit Contains(std::string text) : text_(std::move(text)) {}
  std::vector<double> score(const std::vector<RewardSample>& samples) override {
    std::vector<double> out;
    for (const RewardSample& s : samples) out.push_back(s.completion.find(text_) != std::string::npos ? 1.0 : 0.0);
    return out;
  }

 private:
  std::string text_;
};

class SoftOverlong : public RewardFunction {
 public:
  SoftOverlong(int64_t max_len, int64_t cache) : max_(max_len), cache_(cache) {}
  std::vector<double> score(const std::vector<RewardSample>& samples) override {
    std::vector<double> out;
    for (const RewardSample& s : samples) {
      const int64_t n = static_cast<int64_t>(s.ids.size()), soft = max_ - cache_;
      out.push_back(n <= soft ? 0.0 : n <= max_ ? static_cast<double>(soft - n) / static_cast<double>(cache_) : -1.0);
    }
    return out;
  }

 private:
  int64_t max_, cache_;
};

// A reward model (trainer/reward_model.h) loaded once for the run; each batch's texts scored in packed forwards.
class ModelReward : public RewardFunction {
 public:
  explicit ModelReward(const std::string& dir) : rm_(dir) {
    const std::string on = rm_.is_adapter() ? " (a LoRA adapter on " + rm_.base_dir() + ")" : "";
    std::fprintf(stderr, "reward model %s%s: %s, %lld layers, hidden %lld, score head [%lld, %lld]%s\n", dir.c_str(),
                 on.c_str(), rm_.model().config().model_type.c_str(), (long long)rm_.model().config().num_layers,
                 (long long)rm_.model().config().hidden_size, (long long)rm_.num_labels(),
                 (long long)rm_.model().config().hidden_size,
                 rm_.num_labels() > 1 ? " (the first label's logit is the reward)" : "");
  }
  std::string check_record(const Json& record) const override {
    const auto p = record.find("prompt");
    return p != record.end() && p->is_array() && !rm_.tokenizer().has_chat_template()
               ? "the reward model " + rm_.dir() + " has no chat template for a conversational prompt"
               : "";
  }
  std::vector<double> score(const std::vector<RewardSample>& samples) override {
    std::vector<std::vector<int32_t>> seqs;
    seqs.reserve(samples.size());
    for (const RewardSample& s : samples) seqs.push_back(rm_.tokens(rm_.text(s.record->at("prompt"), s.completion)));
    return rm_.score(seqs);
  }

 private:
  RewardModel rm_;
};

// The external scorer: `/bin/sh -c command` on one end of a socket pair (its stdin and stdout), the lines exchanged
// with poll() so that neither side can block the other whatever the batch size.
class CommandReward : public RewardFunction {
 public:
  explicit CommandReward(std::string command) : cmd_(std::move(command)) {
    int sv[2];
    QWENQ_CHECK(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0,
                "--reward cmd=" << cmd_ << ": cannot make a socket pair: " << std::strerror(errno));
    pid_ = ::fork();
    if (pid_ == 0) {  // the child: the other end as stdin and stdout, then the shell
      ::close(sv[0]);
      ::dup2(sv[1], 0);
      ::dup2(sv[1], 1);
      if (sv[1] > 1) ::close(sv[1]);
      ::execl("/bin/sh", "sh", "-c", cmd_.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(sv[1]);
    if (pid_ < 0) {
      ::close(sv[0]);
      QWENQ_FAIL("--reward cmd=" << cmd_ << ": cannot start it: " << std::strerror(errno));
    }
    fd_ = sv[0];
  }
  ~CommandReward() override {
    if (fd_ >= 0) ::close(fd_);  // the scorer reads end of input and should exit
    if (pid_ <= 0) return;
    for (int i = 0; i < 200; ++i) {  // up to 2 s, then it is stopped
      if (::waitpid(pid_, nullptr, WNOHANG) != 0) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }

  std::vector<double> score(const std::vector<RewardSample>& samples) override {
    std::string out;
    for (const RewardSample& s : samples) {
      Json line = s.record->is_object() ? *s.record : Json::object();
      line["completion"] = s.conversational ? Json::array({Json{{"role", "assistant"}, {"content", s.completion}}})
                                            : Json(s.completion);
      line["completion_ids"] = s.ids;
      line["truncated"] = s.truncated;
      out += line.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n";
    }
    std::vector<double> values;
    size_t sent = 0;
    while (values.size() < samples.size()) {
      pollfd p{fd_, static_cast<short>(POLLIN | (sent < out.size() ? POLLOUT : 0)), 0};
      if (::poll(&p, 1, -1) < 0) {
        if (errno == EINTR) continue;
        fail("poll failed: " + std::string(std::strerror(errno)), values.size(), samples.size());
      }
      if ((p.revents & POLLOUT) && sent < out.size()) {
        const ssize_t n = ::send(fd_, out.data() + sent, out.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) fail(ended(), values.size(), samples.size());
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
          fail("writing to it failed (" + std::string(std::strerror(errno)) + ")", values.size(), samples.size());
        if (n > 0) sent += static_cast<size_t>(n);
      }
      if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
        char buf[4096];
        const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno == ECONNRESET)) fail(ended(), values.size(), samples.size());
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
          fail("reading it failed (" + std::string(std::strerror(errno)) + ")", values.size(), samples.size());
        if (n > 0) pending_.append(buf, static_cast<size_t>(n));
        size_t nl;
        while ((nl = pending_.find('\n')) != std::string::npos) {
          const std::string text = trim(pending_.substr(0, nl));
          pending_.erase(0, nl + 1);
          if (values.size() >= samples.size())
            fail("it wrote more lines than completions (\"" + text + "\")", values.size(), samples.size());
          values.push_back(parse_value(text, values.size(), samples.size()));
        }
      }
    }
    return values;
  }

 private:
  double parse_value(const std::string& text, size_t at, size_t total) const {
    if (text == "null" || text == "nan" || text == "NaN" || text == "None") return kNaN;
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    if (text.empty() || end == nullptr || *end != '\0' || !std::isfinite(v))
      fail("line " + std::to_string(at + 1) + " is \"" + text + "\", not a number (or null)", at, total);
    return v;
  }
  // "it ended" and how, once the scorer has gone (reaped here, so the destructor has nothing to wait for).
  std::string ended() {
    int status = 0;
    for (int i = 0; i < 100 && pid_ > 0; ++i) {  // up to 1 s for it to be gone
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        if (WIFEXITED(status)) return "it ended (exit status " + std::to_string(WEXITSTATUS(status)) + ")";
        if (WIFSIGNALED(status)) return "it ended (killed by signal " + std::to_string(WTERMSIG(status)) + ")";
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return "it closed its end";
  }
  [[noreturn]] void fail(const std::string& why, size_t got, size_t total) const {
    QWENQ_FAIL("--reward cmd=" << cmd_ << ": " << why << " after " << got << " of " << total
                               << " rewards (it must write one number, or null, per JSON line it reads)");
  }

  std::string cmd_;
  pid_t pid_ = -1;
  int fd_ = -1;
  std::string pending_;
};

}  // namespace

std::string RewardFunction::check_record(const Json&) const { return ""; }

std::string completion_final_answer(const std::string& completion) {
  const std::string boxed = last_boxed(completion);
  if (!boxed.empty()) return boxed;
  const std::string strict = gsm8k_strict_match(completion);
  if (strict != "[invalid]") return strict;
  return gsm8k_flexible_extract(completion);
}

std::string reference_final_answer(const std::string& reference) {
  const size_t hashes = reference.rfind("#### ");
  if (hashes != std::string::npos) return trim(reference.substr(hashes + 5));
  const std::string boxed = last_boxed(reference);
  return boxed.empty() ? trim(reference) : boxed;
}

bool answers_agree(const std::string& predicted, const std::string& reference) {
  if (predicted == "[invalid]" || predicted.empty()) return false;
  if (trim(gsm8k_normalize(predicted)) == trim(gsm8k_normalize(reference))) return true;
  const double a = as_number(predicted), b = as_number(reference);
  return std::isfinite(a) && std::isfinite(b) && std::fabs(a - b) <= 1e-9 * std::max(1.0, std::fabs(b));
}

std::vector<std::unique_ptr<RewardFunction>> make_reward_functions(const std::vector<std::string>& specs,
                                                                   int64_t max_completion_len) {
  QWENQ_CHECK(!specs.empty(), "--objective grpo needs at least one --reward (accuracy, think_format, regex=PATTERN, "
                              "contains=TEXT, soft_overlong=CACHE, model=DIR or cmd=COMMAND)");
  std::vector<std::unique_ptr<RewardFunction>> out;
  std::map<std::string, int> seen;
  for (const std::string& spec : specs) {
    const size_t eq = spec.find('=');
    const std::string kind = spec.substr(0, eq), arg = eq == std::string::npos ? "" : spec.substr(eq + 1);
    const bool takes_arg =
        kind == "regex" || kind == "contains" || kind == "soft_overlong" || kind == "model" || kind == "cmd";
    QWENQ_CHECK(takes_arg == (eq != std::string::npos) && (!takes_arg || !arg.empty()),
                "--reward " << spec << ": " << (takes_arg ? kind + " takes a value: " + kind + "=..." : kind + " takes no value"));
    std::unique_ptr<RewardFunction> f;
    if (kind == "accuracy") {
      f = std::make_unique<Accuracy>();
    } else if (kind == "think_format") {
      f = std::make_unique<ThinkFormat>();
    } else if (kind == "regex") {
      f = std::make_unique<RegexReward>(arg);
    } else if (kind == "contains") {
      f = std::make_unique<Contains>(arg);
    } else if (kind == "soft_overlong") {
      char* end = nullptr;
      const long long cache = std::strtoll(arg.c_str(), &end, 10);
      QWENQ_CHECK(end && *end == '\0' && cache >= 1 && cache < max_completion_len,
                  "--reward " << spec << ": the cache must be a whole number in [1, --max-completion-len "
                              << max_completion_len << ")");
      f = std::make_unique<SoftOverlong>(max_completion_len, cache);
    } else if (kind == "model") {
      try {
        // A SEQ_CLS adapter directory as it is (RewardModel finds its base); a model directory or repo id resolved.
        f = std::make_unique<ModelReward>(is_adapter_dir(arg) ? arg : resolve_model_dir(arg, "main"));
      } catch (const Error& e) {
        QWENQ_FAIL("--reward " << spec << ": " << e.what());
      }
    } else if (kind == "cmd") {
      f = std::make_unique<CommandReward>(arg);
    } else {
      QWENQ_FAIL("--reward " << spec << ": unknown reward; use accuracy, think_format, regex=PATTERN, contains=TEXT, "
                             << "soft_overlong=CACHE, model=DIR or cmd=COMMAND");
    }
    const int n = ++seen[kind];
    f->set_name(n == 1 ? kind : kind + "_" + std::to_string(n));
    out.push_back(std::move(f));
  }
  return out;
}

}  // namespace qwenq
