#include "trainer/model_dir.h"

#include <cstdlib>
#include <vector>

#include "core/error.h"
#include "core/files.h"
#include "core/gguf.h"

namespace qwenq {

namespace {

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

// The hub cache directory, in the order huggingface_hub resolves it.
std::string hub_cache_dir() {
  std::string v = env_or_empty("HF_HUB_CACHE");
  if (!v.empty()) return v;
  v = env_or_empty("HUGGINGFACE_HUB_CACHE");
  if (!v.empty()) return v;
  v = env_or_empty("HF_HOME");
  if (!v.empty()) return path_join(v, "hub");
  v = env_or_empty("XDG_CACHE_HOME");
  if (!v.empty()) return path_join(path_join(v, "huggingface"), "hub");
  return path_join(env_or_empty("HOME"), ".cache/huggingface/hub");
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

bool looks_like_repo_id(const std::string& s) {
  size_t slash = s.find('/');
  return slash != std::string::npos && slash > 0 && slash + 1 < s.size() && s.find('/', slash + 1) == std::string::npos &&
         s[0] != '.' && s.find("..") == std::string::npos;
}

}  // namespace

std::string resolve_model_dir(const std::string& spec, const std::string& revision, bool allow_gguf) {
  QWENQ_CHECK(!spec.empty(), "no model given (pass a directory or a Hugging Face repo id)");
  if (is_gguf_file(spec)) {
    QWENQ_CHECK(allow_gguf, spec << ": a GGUF file; this command reads Hugging Face model directories (eval, generate, "
                                    "dequantize and gguf read GGUF files)");
    return spec;
  }
  QWENQ_CHECK(!file_exists(spec) || dir_exists(spec),
              spec << ": not a directory" << (allow_gguf ? " nor a GGUF file" : "") << " (expected a model directory)");
  if (dir_exists(spec)) {
    QWENQ_CHECK(file_exists(path_join(spec, "config.json")),
                "model directory " << spec << " has no config.json (is it a Hugging Face model directory?)");
    return spec;
  }
  std::vector<std::string> looked = {spec + " (not a directory)"};
  if (looks_like_repo_id(spec)) {
    std::string org = spec.substr(0, spec.find('/'));
    std::string name = spec.substr(spec.find('/') + 1);
    std::string repo_dir = path_join(hub_cache_dir(), "models--" + org + "--" + name);
    std::string commit = revision;
    std::string ref_file = path_join(repo_dir, "refs/" + revision);
    if (file_exists(ref_file)) commit = trim(read_file(ref_file));
    std::string snap = path_join(repo_dir, "snapshots/" + commit);
    if (file_exists(path_join(snap, "config.json"))) return snap;
    looked.push_back(snap + " (Hugging Face cache, revision '" + revision + "')");
  }
  std::string where;
  for (const auto& l : looked) where += "\n  " + l;
  if (looks_like_repo_id(spec)) {
    QWENQ_FAIL("cannot find model '" << spec << "'; looked at:" << where << "\nDownload it first (e.g. `huggingface-cli download "
                                     << spec << "`) or pass a local directory.");
  }
  QWENQ_FAIL("cannot find model '" << spec << "': no such directory");
}

}  // namespace qwenq
