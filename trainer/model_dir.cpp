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

// A leading "~" (alone or before a slash) as $HOME, as Python's os.path.expanduser does.
std::string expand_home(const std::string& p) {
  if (p == "~" || p.rfind("~/", 0) == 0) return env_or_empty("HOME") + p.substr(1);
  return p;
}

// The hub cache directory, in the order huggingface_hub (constants.py) resolves it: HF_HUB_CACHE, the legacy
// HUGGINGFACE_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub; a leading ~ expanded
// ($VAR references are not: huggingface_hub's expandvars is left out). A variable set to "" counts as unset.
std::string hub_cache_dir() {
  for (const char* name : {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"}) {
    const std::string v = env_or_empty(name);
    if (!v.empty()) return expand_home(v);
  }
  std::string v = env_or_empty("HF_HOME");
  if (!v.empty()) return path_join(expand_home(v), "hub");
  v = env_or_empty("XDG_CACHE_HOME");
  if (!v.empty()) return path_join(path_join(expand_home(v), "huggingface"), "hub");
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
