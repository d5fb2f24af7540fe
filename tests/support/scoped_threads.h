// A test section at a chosen CPU thread count (core/threads.h), the previous count restored on exit: the
// determinism tests run the same call at 1 and at several threads and require the same bytes.
#pragma once

#include "core/threads.h"

namespace qwenq::test {

class ScopedThreads {
 public:
  explicit ScopedThreads(int n) : saved_(num_threads()) { set_num_threads(n); }
  ~ScopedThreads() { set_num_threads(saved_); }
  ScopedThreads(const ScopedThreads&) = delete;
  ScopedThreads& operator=(const ScopedThreads&) = delete;

 private:
  int saved_;
};

}  // namespace qwenq::test
