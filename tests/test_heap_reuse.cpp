// core/heap_reuse.h: after keep_heap_for_reuse(), a freed 96 MiB block stays in the heap (glibc's arena grows by it
// and keeps it as free space) instead of being an mmap handed back at free; a second block of that size reuses it.
// Without the call, glibc maps such a block on its own (above its 32 MiB largest dynamic threshold) and the arena
// never holds it: the test fails with keep_heap_for_reuse() made a no-op.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#include "core/heap_reuse.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace qwenq {
namespace {

TEST(HeapReuse, FreedLargeBlocksStayInTheHeap) {
#if !defined(__GLIBC__)
  GTEST_SKIP() << "not glibc: keep_heap_for_reuse changes nothing here";
#else
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer's allocator replaces glibc's: mallopt is not there to tune";
#endif
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") || std::getenv("MALLOC_TRIM_THRESHOLD_") || std::getenv("GLIBC_TUNABLES") ||
      std::getenv("QWENQ_HEAP_REUSE"))
    GTEST_SKIP() << "malloc tuned from the environment: keep_heap_for_reuse leaves it alone";
  ASSERT_TRUE(keep_heap_for_reuse());
  EXPECT_TRUE(keep_heap_for_reuse()) << "a second call gives the first answer";
  constexpr size_t kBytes = size_t{96} << 20;
  const struct mallinfo2 before = mallinfo2();
  char* p = static_cast<char*>(std::malloc(kBytes));
  ASSERT_NE(p, nullptr);
  std::memset(p, 1, kBytes);
  const struct mallinfo2 held = mallinfo2();
  EXPECT_EQ(held.hblkhd, before.hblkhd) << "the block was mapped on its own";
  EXPECT_GE(held.arena, before.arena + kBytes) << "the heap did not grow by the block";
  std::free(p);
  const struct mallinfo2 after = mallinfo2();
  EXPECT_GE(after.arena, before.arena + kBytes) << "the heap was trimmed at free";
  EXPECT_GE(after.fordblks, kBytes) << "the block is not free space of the heap";
  char* q = static_cast<char*>(std::malloc(kBytes));
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(mallinfo2().arena, after.arena) << "a second block of the same size grew the heap instead of reusing it";
  std::free(q);
#endif
}

}  // namespace
}  // namespace qwenq
