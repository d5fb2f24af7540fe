// Small file-system helpers: whole-file reads, atomic writes, read-only memory maps, and directories that
// appear under their final name only when complete.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace qwenq {

// Reads a whole file; throws naming the file if it cannot be opened or read.
std::string read_file(const std::string& path);
bool file_exists(const std::string& path);
bool dir_exists(const std::string& path);
std::string path_join(const std::string& a, const std::string& b);
// Drops the whole pages inside [data, data + bytes) of a read-only file mapping from this process's resident set
// (MADV_DONTNEED; touching them again re-reads the file). Streaming quantizers call it on weights they are done
// with, so resident memory stays near one block instead of growing with every page of the model read so far.
void release_mapped_pages(const void* data, size_t bytes);
// Bytes an unprivileged process may still write on the file system holding `path` (a file that need not exist yet:
// its directory is asked; "" is the working directory); UINT64_MAX when that cannot be told.
uint64_t free_bytes_for(const std::string& path);
// rm -rf; never throws (used from destructors); a missing path is fine.
void remove_tree(const std::string& path);
// mkdir -p; returns 0 or an errno.
int make_dirs(const std::string& path);

// Writes `bytes` to "<path>.tmp.<pid>", fsyncs, then renames onto `path`. On any failure the temporary is
// removed and an Error naming `path` is thrown (e.g. "No space left on device").
void write_file_atomic(const std::string& path, const void* data, size_t size);
inline void write_file_atomic(const std::string& path, const std::string& text) {
  write_file_atomic(path, text.data(), text.size());
}

// A file written piece by piece to "<path>.tmp.<pid>" and renamed onto `path` (after fsync) by commit();
// removed if commit() is never reached. Every failure names `path` and carries strerror. For outputs too
// large to build in memory first (checkpoint shards).
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(const std::string& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  void append(const void* data, size_t size);
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool done_ = false;
};

// Read-only mapping of a whole file (empty files map to size 0, data nullptr).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// An output directory that is built under "<final>.partial.<pid>" and renamed onto `final` by commit().
// If the object dies without commit() (exception, early return), the partial directory is removed.
// Refuses an existing `final` unless overwrite is true (then the old one is replaced at commit()).
class StagedDir {
 public:
  StagedDir(const std::string& final_path, bool overwrite);
  ~StagedDir();
  const std::string& path() const { return tmp_; }  // write files here
  void commit();

 private:
  std::string final_, tmp_;
  bool overwrite_, committed_ = false;
};

}  // namespace qwenq
