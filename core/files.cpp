// File-system helpers: whole-file reads, atomic writes (temp + fsync + rename), read-only mmaps, and
// StagedDir, an output directory that only appears under its final name once it is complete.
//
// Everything here speaks POSIX directly so that errors carry errno text ("No space left on device") and the
// path concerned; nothing is ever left half-written under a final name.
#include "core/files.h"

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <ftw.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace qwenq {

namespace {

std::string errno_str(int err) { return std::strerror(err); }

// Writes all of [data, data + size) to fd, retrying on EINTR and short writes. Returns 0 or an errno.
int write_all(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const size_t chunk = size < (size_t{1} << 30) ? size : (size_t{1} << 30);
    ssize_t n = ::write(fd, p, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return 0;
}

std::string parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Best effort: makes a rename durable. Failures are ignored (some file systems refuse fsync on directories).
void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

bool path_exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
  (void)::remove(path);
  return 0;
}

}  // namespace

void release_mapped_pages(const void* data, size_t bytes) {
  if (!data || bytes == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) / page * page;
  if (end > begin) (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

void remove_tree(const std::string& path) {
  if (!path_exists(path)) return;
  (void)::nftw(path.c_str(), remove_entry, 32, FTW_DEPTH | FTW_PHYS);
}

uint64_t free_bytes_for(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  struct statvfs st;
  if (statvfs(dir.c_str(), &st) != 0) return UINT64_MAX;
  return static_cast<uint64_t>(st.f_bavail) * static_cast<uint64_t>(st.f_frsize);
}

int make_dirs(const std::string& path) {
  if (path.empty() || dir_exists(path)) return 0;
  const std::string parent = parent_dir(path);
  if (parent != path) {
    int err = make_dirs(parent);
    if (err) return err;
  }
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) return errno;
  return 0;
}

std::string read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  QWENQ_CHECK(fd >= 0, "cannot open " << path << ": " << errno_str(errno));
  struct stat st;
  std::string out;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) out.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      QWENQ_FAIL("cannot read " << path << ": " << errno_str(err));
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool dir_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string path_join(const std::string& a, const std::string& b) {
  if (a.empty() || (!b.empty() && b[0] == '/')) return b;
  if (b.empty()) return a;
  return a.back() == '/' ? a + b : a + "/" + b;
}

namespace {
void remove_stale_staging(const std::string& final_path);
}  // namespace

AtomicFileWriter::AtomicFileWriter(const std::string& path)
    : path_(path), tmp_(path + ".tmp." + std::to_string(::getpid())) {
  remove_stale_staging(path_);  // a killed writer's "<path>.tmp.<pid>" (a multi-GB GGUF or shard)
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  QWENQ_CHECK(fd_ >= 0, "cannot write " << path_ << ": cannot create temporary file " << tmp_ << ": "
                                        << errno_str(errno));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!done_) ::unlink(tmp_.c_str());
}

void AtomicFileWriter::append(const void* data, size_t size) {
  const int err = write_all(fd_, data, size);
  QWENQ_CHECK(err == 0, "cannot write " << path_ << " (write failed): " << errno_str(err));
}

void AtomicFileWriter::commit() {
  QWENQ_CHECK(::fsync(fd_) == 0, "cannot write " << path_ << " (fsync failed): " << errno_str(errno));
  const int rc = ::close(fd_);
  fd_ = -1;
  QWENQ_CHECK(rc == 0, "cannot write " << path_ << " (close failed): " << errno_str(errno));
  QWENQ_CHECK(::rename(tmp_.c_str(), path_.c_str()) == 0,
              "cannot write " << path_ << " (rename failed): " << errno_str(errno));
  done_ = true;
  fsync_dir(parent_dir(path_));
}

void write_file_atomic(const std::string& path, const void* data, size_t size) {
  AtomicFileWriter out(path);
  out.append(data, size);
  out.commit();
}

MappedFile::MappedFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  QWENQ_CHECK(fd >= 0, "cannot open " << path << ": " << errno_str(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    QWENQ_FAIL("cannot stat " << path << ": " << errno_str(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    QWENQ_FAIL("cannot map " << path << ": not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      QWENQ_FAIL("cannot map " << path << " (" << size_ << " bytes): " << errno_str(err));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file alive
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

namespace {
// Removes "<final>.partial.<pid>" and "<final>.old.<pid>" directories and "<final>.tmp.<pid>" files left by runs that
// were killed (their pid no longer exists), so that an interrupted run leaves nothing behind once the next one starts.
void remove_stale_staging(const std::string& final_path) {
  const std::string dir = parent_dir(final_path);
  const std::string base = final_path.substr(final_path.find_last_of('/') == std::string::npos
                                                 ? 0 : final_path.find_last_of('/') + 1);
  DIR* d = ::opendir(dir.empty() ? "." : dir.c_str());
  if (!d) return;
  std::vector<std::string> stale;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    for (const char* tag : {".partial.", ".old.", ".tmp."}) {
      const std::string prefix = base + tag;
      if (name.compare(0, prefix.size(), prefix) != 0) continue;
      const std::string pid_text = name.substr(prefix.size());
      if (pid_text.empty() || pid_text.find_first_not_of("0123456789") != std::string::npos) continue;
      const long pid = std::strtol(pid_text.c_str(), nullptr, 10);
      if (pid > 0 && pid != ::getpid() && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
        stale.push_back(path_join(dir, name));
      }
    }
  }
  ::closedir(d);
  for (const auto& p : stale) remove_tree(p);
}
}  // namespace

StagedDir::StagedDir(const std::string& final_path, bool overwrite) : final_(final_path), overwrite_(overwrite) {
  QWENQ_CHECK(!final_.empty(), "output directory path is empty");
  while (final_.size() > 1 && final_.back() == '/') final_.pop_back();
  if (path_exists(final_)) {
    QWENQ_CHECK(overwrite_, "output directory " << final_ << " exists (pass --overwrite to replace it)");
    QWENQ_CHECK(dir_exists(final_), "output path " << final_ << " exists and is not a directory; refusing to "
                                                   << "replace it");
  }
  remove_stale_staging(final_);
  tmp_ = final_ + ".partial." + std::to_string(::getpid());
  remove_tree(tmp_);  // leftover of a crashed run that had the same pid
  const int err = make_dirs(tmp_);
  QWENQ_CHECK(err == 0, "cannot create output directory " << tmp_ << " (staging for " << final_
                                                         << "): " << errno_str(err));
}

StagedDir::~StagedDir() {
  if (!committed_) remove_tree(tmp_);
}

void StagedDir::commit() {
  QWENQ_CHECK(!committed_, "output directory " << final_ << " was already committed");
  std::string old;
  if (path_exists(final_)) {
    QWENQ_CHECK(overwrite_, "output directory " << final_ << " exists (pass --overwrite to replace it)");
    old = final_ + ".old." + std::to_string(::getpid());
    remove_tree(old);
    QWENQ_CHECK(::rename(final_.c_str(), old.c_str()) == 0,
                "cannot move the existing " << final_ << " out of the way: " << errno_str(errno));
  }
  if (::rename(tmp_.c_str(), final_.c_str()) != 0) {
    const int err = errno;
    if (!old.empty()) (void)::rename(old.c_str(), final_.c_str());  // put the previous output back
    QWENQ_FAIL("cannot rename " << tmp_ << " to " << final_ << ": " << errno_str(err));
  }
  committed_ = true;
  fsync_dir(parent_dir(final_));
  if (!old.empty()) remove_tree(old);
}

}  // namespace qwenq
