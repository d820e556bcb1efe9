#pragma once
// Little-endian fields appended to a byte string: tests build GGUF and other
// binary files field by field, so that they can get any field wrong.
#include <cstdint>
#include <cstring>
#include <string>

namespace lrq::test {

template <typename T> void put(std::string &out, T v) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof v);
  out.append(bytes, sizeof v);
}

// A GGUF string: uint64 length, then the bytes.
inline void putString(std::string &out, const std::string &s) {
  put<uint64_t>(out, s.size());
  out += s;
}

} // namespace lrq::test
