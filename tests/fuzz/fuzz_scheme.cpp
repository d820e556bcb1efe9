// Scheme JSON (core/quant/scheme.cpp): what is accepted is valid, and it
// survives being written and read again unchanged.
#include <cstdint>
#include <string>

#include "core/common/error.h"
#include "core/quant/scheme.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  lrq_fuzz::quietLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const std::string text(reinterpret_cast<const char *>(data), size);
  lrq::quant::QuantScheme scheme;
  try {
    scheme = lrq::quant::QuantScheme::fromJson(text);
  } catch (const lrq::Error &e) {
    lrq_fuzz::refused(e);
    return 0;
  }
  scheme.validate(); // fromJson only returns valid schemes: must not throw
  (void)scheme.describe();
  const std::string written = scheme.toJson();
  const lrq::quant::QuantScheme again = lrq::quant::QuantScheme::fromJson(written);
  FUZZ_CHECK(again.toJson() == written);
  (void)scheme.toJson(2);
  return 0;
}
