// The libFuzzer entry point (clang, -DQWENQ_FUZZ=ON, scripts/fuzz.sh): QWENQ_FUZZ_TARGET names the target
// (tests/fuzz/fuzz_targets.h). An exception other than qwenq::Error escapes and libFuzzer reports it as a crash.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "tests/fuzz/fuzz_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string target = [] {
    const char* t = std::getenv("QWENQ_FUZZ_TARGET");
    if (t == nullptr || !*t) {
      std::fprintf(stderr, "QWENQ_FUZZ_TARGET is not set\n");
      std::abort();
    }
    return std::string(t);
  }();
  qwenq::fuzz::run_fuzz_target(target, data, size);
  return 0;
}
