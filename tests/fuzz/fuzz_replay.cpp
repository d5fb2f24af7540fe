// qwenq_fuzz_replay [--valid] TARGET PATH...: runs every file (a directory: every file in it, sorted) through one fuzz
// target (tests/fuzz/fuzz_targets.h) without libFuzzer, so any compiler builds it: ctest's fuzz.replay runs the seed
// corpus and scripts/fuzz.sh's findings through it. Prints "TARGET: N inputs, K refused" and exits 0; a crash, a
// sanitizer report or an exception other than qwenq::Error ends the process with the input's path on stderr. With
// --valid (the seeds, valid by construction) an input the reader refuses fails the run too: the target must reach
// the code past the checks.
#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "core/files.h"
#include "tests/fuzz/fuzz_targets.h"

namespace {

std::vector<std::string> inputs_of(const std::string& path) {
  if (!qwenq::dir_exists(path)) return {path};
  std::vector<std::string> out;
  if (DIR* d = opendir(path.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != ".." && qwenq::file_exists(qwenq::path_join(path, name)))
        out.push_back(qwenq::path_join(path, name));
    }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const bool valid = argc > 1 && std::string(argv[1]) == "--valid";
  if (valid) {
    --argc;
    ++argv;
  }
  if (argc < 3) {
    std::fprintf(stderr, "usage: qwenq_fuzz_replay [--valid] TARGET FILE_OR_DIR...\ntargets:");
    for (const std::string& t : qwenq::fuzz::fuzz_target_names()) std::fprintf(stderr, " %s", t.c_str());
    std::fprintf(stderr, "\n");
    return 2;
  }
  const std::string target = argv[1];
  size_t n = 0, refused = 0;
  for (int a = 2; a < argc; ++a) {
    for (const std::string& path : inputs_of(argv[a])) {
      const std::string bytes = qwenq::read_file(path);
      try {
        if (!qwenq::fuzz::run_fuzz_target(target, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size())) {
          ++refused;
          if (valid) {
            std::fprintf(stderr, "%s: %s: a valid input was refused\n", target.c_str(), path.c_str());
            return 1;
          }
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%s: %s: %s\n", target.c_str(), path.c_str(), e.what());
        return 1;
      }
      ++n;
    }
  }
  std::printf("%s: %zu inputs, %zu refused\n", target.c_str(), n, refused);
  return n > 0 ? 0 : 1;
}
