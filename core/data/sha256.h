#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace lrq {

// Incremental SHA-256 (FIPS 180-4), used to record and check downloads.
class Sha256 {
public:
  Sha256();
  void update(const void *data, size_t size);
  std::string hexDigest(); // finishes the hash; the object is spent afterwards

private:
  void compress(const uint8_t *block);
  uint32_t state_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t totalBytes_ = 0;
};

// Hex SHA-256 of a whole file; throws lrq::FileError if unreadable.
std::string sha256File(const std::string &path);

} // namespace lrq
