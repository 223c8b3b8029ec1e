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
  // Takes the lock of file `path` or throws ConfigError naming the holder.
  explicit OutputLock(const std::string& path);
  // The lock of a sweep directory: a whole sweep holds it alone (`whole`); runs of single
  // points (array tasks) share it, with each other but not with a whole sweep. Its file
  // (DIR/.sweep.lock) stays: removing a shared lock's file would let a third run in.
  static OutputLock sweep(const std::string& dir, bool whole);
  ~OutputLock();
  OutputLock(OutputLock&& o) noexcept;
  OutputLock& operator=(OutputLock&& o) noexcept;
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;
  bool held() const { return fd_ >= 0; }

 private:
  OutputLock(const std::string& lock_path, bool shared, bool remove, const std::string& busy);
  void release();
  std::string lock_path_;
  bool remove_ = true;
  int fd_ = -1;
};

// Whether another process holds the lock of file `path` (it is being written now).
bool output_locked(const std::string& path);

}  // namespace moesim
