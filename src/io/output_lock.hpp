#pragma once
// One writer per output file. A run holds an exclusive lock on <path>.lock from before it
// creates <path> until it ends, so a second run naming the same --out is refused before
// it truncates anything. flock() locks vanish with their process, so a killed run leaves
// no stale lock, only a file that the next run takes over. The lock file holds the
// holder's host and pid, for the refusal message.
#include <string>

namespace moesim {

class OutputLock {
 public:
  OutputLock() = default;
  // Takes the lock of `path` or throws ConfigError naming the holder.
  explicit OutputLock(const std::string& path);
  ~OutputLock();
  OutputLock(OutputLock&& o) noexcept;
  OutputLock& operator=(OutputLock&& o) noexcept;
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;
  bool held() const { return fd_ >= 0; }

 private:
  void release();
  std::string lock_path_;
  int fd_ = -1;
};

}  // namespace moesim
