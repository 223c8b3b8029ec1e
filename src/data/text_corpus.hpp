#pragma once
// A text corpus read by byte ranges: one file, or every text file of a directory
// in name order, seen as one concatenated byte string. Ranks read only the ranges
// they need (pread at global offsets); nobody loads the whole corpus.
#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.hpp"

namespace moesim {

class TextCorpus {
 public:
  // COLLECTIVE. Rank 0 resolves `path` (a directory contributes its regular files,
  // symbolic links and binary files, those with a NUL byte in their first 4 KiB,
  // left out) and broadcasts the list and sizes; every rank opens every file.
  // A missing, unreadable or empty corpus is a ConfigError on every rank.
  TextCorpus(const Communicator& comm, const std::string& path);
  ~TextCorpus();
  TextCorpus(const TextCorpus&) = delete;
  TextCorpus& operator=(const TextCorpus&) = delete;

  std::int64_t size() const { return total_; }
  const std::vector<std::string>& files() const { return paths_; }
  // Bytes [offset, offset + n) of the concatenation; throws on a short or failed read.
  void read(std::int64_t offset, std::int64_t n, unsigned char* out) const;

 private:
  std::vector<std::string> paths_;
  std::vector<std::int64_t> starts_;  // global offset of each file; starts_.back() = total
  std::vector<int> fds_;
  std::int64_t total_ = 0;
};

}  // namespace moesim
