#include "data/text_corpus.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.hpp"

namespace moesim {

namespace {

namespace fs = std::filesystem;

bool looks_binary(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  char buf[4096];
  in.read(buf, sizeof buf);
  return std::find(buf, buf + in.gcount(), '\0') != buf + in.gcount();
}

// Rank 0's view of the corpus: "size path" lines, or an error message.
std::string manifest(const std::string& path, std::string& error) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) {
    error = "--data '" + path + "' does not exist";
    return {};
  }
  std::vector<fs::path> files;
  if (fs::is_directory(st)) {
    for (const auto& entry : fs::directory_iterator(path, ec)) {
      const fs::file_status ls = fs::symlink_status(entry.path());
      if (fs::is_regular_file(ls) && !looks_binary(entry.path())) files.push_back(entry.path());
    }
    if (ec) {
      error = "--data '" + path + "': cannot list the directory: " + ec.message();
      return {};
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) {
      error = "--data '" + path + "' is a directory without text files";
      return {};
    }
  } else {
    // A directory's binary files are skipped; one given by name would be trained on
    // silently (an executable or an HDF5 file passed by mistake), so it is refused.
    if (looks_binary(path)) {
      error = "--data '" + path + "' is not a text file (a NUL byte in its first 4096 bytes)";
      return {};
    }
    files.push_back(path);
  }
  std::ostringstream os;
  for (const fs::path& f : files) {
    const auto n = fs::file_size(f, ec);
    if (ec) {
      error = "--data '" + f.string() + "': " + ec.message();
      return {};
    }
    os << n << ' ' << f.string() << '\n';
  }
  return os.str();
}

}  // namespace

TextCorpus::TextCorpus(const Communicator& comm, const std::string& path) {
  std::string error, list;
  if (comm.rank() == 0) list = manifest(path, error);
  comm.agree_or_throw(error.empty(), error);
  comm.broadcast(list, 0);
  std::istringstream in(list);
  std::int64_t n = 0;
  std::string file;
  while (in >> n && in.get() == ' ' && std::getline(in, file)) {
    starts_.push_back(total_);
    paths_.push_back(file);
    total_ += n;
  }
  starts_.push_back(total_);
  // Every rank opens every file itself: a file one rank cannot read fails everywhere.
  for (std::size_t i = 0; i < paths_.size(); ++i) {
    const std::string& f = paths_[i];
    const int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
    struct stat st {};
    if (fd < 0 && error.empty()) error = "--data '" + f + "': cannot open: " + std::strerror(errno);
    else if (fd >= 0 && ::fstat(fd, &st) == 0 && st.st_size != starts_[i + 1] - starts_[i] && error.empty())
      error = "--data '" + f + "' has " + std::to_string(st.st_size) + " bytes on rank " +
              std::to_string(comm.rank()) + " but " + std::to_string(starts_[i + 1] - starts_[i]) +
              " on rank 0";
    fds_.push_back(fd);
  }
  comm.agree_or_throw(error.empty(), error);
  comm.agree_or_throw(total_ > 0, "--data '" + path + "' is empty");
}

TextCorpus::~TextCorpus() {
  for (int fd : fds_)
    if (fd >= 0) ::close(fd);
}

void TextCorpus::read(std::int64_t offset, std::int64_t n, unsigned char* out) const {
  MOESIM_REQUIRE(offset >= 0 && n >= 0 && offset + n <= total_,
                 "corpus read [" << offset << ", " << offset + n << ") outside [0, " << total_ << ")");
  // The file holding `offset`, then on across file boundaries.
  std::size_t f = static_cast<std::size_t>(
      std::upper_bound(starts_.begin(), starts_.end(), offset) - starts_.begin() - 1);
  while (n > 0) {
    const std::int64_t local = offset - starts_[f];
    const std::int64_t take = std::min(n, starts_[f + 1] - offset);
    std::int64_t done = 0;
    while (done < take) {
      const ssize_t got = ::pread(fds_[f], out + done, static_cast<std::size_t>(take - done),
                                  static_cast<off_t>(local + done));
      if (got < 0 && errno == EINTR) continue;
      MOESIM_REQUIRE(got > 0, "pread of " << paths_[f] << " at byte " << local + done
                                          << (got == 0 ? ": file shrank since the start of the run"
                                                       : std::string(": ") + std::strerror(errno)));
      done += got;
    }
    out += take;
    offset += take;
    n -= take;
    ++f;
  }
}

}  // namespace moesim
