// Finding a model: a local directory, or a Hugging Face repo id ("Qwen/Qwen2.5-0.5B") resolved offline from
// the local Hugging Face cache exactly as transformers does with HF_HUB_OFFLINE=1:
//   $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub;
//   models--{org}--{name}/refs/{revision or "main"} holds a commit hash; snapshots/{hash}/ is the directory.
#pragma once

#include <string>

namespace qwenq {

// Returns a directory that holds config.json (or, with allow_gguf, a GGUF file given by path: the commands that
// read one, eval and generate). Throws with the places it looked if none does.
std::string resolve_model_dir(const std::string& dir_or_repo_id, const std::string& revision = "main",
                              bool allow_gguf = false);

}  // namespace qwenq
