#include "io/output_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.hpp"

namespace moesim {

namespace {

std::string holder_of(const std::string& lock_path) {
  std::ifstream in(lock_path);
  std::string who;
  std::getline(in, who);
  return who.empty() ? std::string() : " (" + who + ")";
}

}  // namespace

OutputLock::OutputLock(const std::string& path)
    : OutputLock(path + ".lock", false, true,
                 "'" + path + "' is being written by another moesim run%s; give another --out, or wait for that run to end") {}

OutputLock OutputLock::sweep(const std::string& dir, bool whole) {
  const std::string lock = (std::filesystem::path(dir) / ".sweep.lock").string();
  return OutputLock(lock, !whole, false,
                    whole ? "sweep directory '" + dir + "' is in use by another moesim sweep%s; wait for it to end"
                          : "sweep directory '" + dir + "' is being run whole by another moesim sweep%s");
}

OutputLock::OutputLock(const std::string& lock_path, bool shared, bool remove, const std::string& busy)
    : lock_path_(lock_path), remove_(remove) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    const int fd = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) throw ConfigError("cannot create lock file '" + lock_path_ + "': " + std::strerror(errno));
    if (::flock(fd, (shared ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
      const int err = errno;
      ::close(fd);
      if (err == EWOULDBLOCK) {
        std::string msg = busy;
        const auto at = msg.find("%s");
        if (at != std::string::npos) msg.replace(at, 2, holder_of(lock_path_));
        throw ConfigError(msg);
      }
      throw ConfigError("cannot lock '" + lock_path_ + "': " + std::strerror(err));
    }
    // A holder that removes its file may have done so between our open and our lock: then
    // we hold a lock on a name nobody else sees, so try again on the current file.
    struct stat held {}, named {};
    if (::fstat(fd, &held) == 0 && ::stat(lock_path_.c_str(), &named) == 0 && held.st_ino == named.st_ino &&
        held.st_dev == named.st_dev) {
      if (!shared) {
        char host[256] = {0};
        if (::gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
        std::ostringstream who;
        who << "pid " << ::getpid() << " on " << host << "\n";
        const std::string text = who.str();
        if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, text.data(), text.size(), 0) < 0) {
          // The holder's name is only for messages; the lock itself is held.
        }
      }
      fd_ = fd;
      return;
    }
    ::close(fd);
  }
  throw ConfigError("cannot lock '" + lock_path_ + "': it keeps being replaced");
}

bool output_locked(const std::string& path) {
  const int fd = ::open((path + ".lock").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool locked = ::flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);
  return locked;
}

OutputLock::~OutputLock() { release(); }

OutputLock::OutputLock(OutputLock&& o) noexcept : lock_path_(std::move(o.lock_path_)), remove_(o.remove_), fd_(o.fd_) {
  o.fd_ = -1;
}

OutputLock& OutputLock::operator=(OutputLock&& o) noexcept {
  if (this != &o) {
    release();
    lock_path_ = std::move(o.lock_path_);
    remove_ = o.remove_;
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

void OutputLock::release() {
  if (fd_ < 0) return;
  if (remove_) ::unlink(lock_path_.c_str());  // while still held, so no one locks the name we remove
  ::close(fd_);
  fd_ = -1;
}

}  // namespace moesim
