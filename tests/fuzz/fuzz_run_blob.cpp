// The run store's stored data read back (core/runs): BLOB decoding of loss
// curves and spectra, and the comparison table over hyperparameter and scheme
// JSON as a store may hold them.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/runs/run_blob.h"
#include "core/runs/run_comparison.h"
#include "core/runs/run_record.h"
#include "fuzz_common.h"

namespace {

void checkBlobs(const std::vector<unsigned char> &bytes) {
  const bool whole = bytes.size() % 8 == 0;
  try {
    const std::vector<lrq::LossPoint> curve = lrq::runs_detail::decodeCurve(bytes);
    FUZZ_CHECK(whole && curve.size() == bytes.size() / 8);
    FUZZ_CHECK(lrq::runs_detail::encodeCurve(curve) == bytes); // bit for bit
  } catch (const lrq::Error &) {
    FUZZ_CHECK(!whole);
  }
  try {
    const std::vector<double> values = lrq::runs_detail::decodeDoubles(bytes);
    FUZZ_CHECK(whole && values.size() == bytes.size() / 8);
    FUZZ_CHECK(lrq::runs_detail::encodeDoubles(values) == bytes);
  } catch (const lrq::Error &) {
    FUZZ_CHECK(!whole);
  }
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  lrq_fuzz::quietLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  checkBlobs(std::vector<unsigned char>(data, data + size));

  // Text before the first NUL: hyperparameters; after it: the scheme.
  const std::string text(reinterpret_cast<const char *>(data), size);
  const size_t cut = text.find('\0');
  lrq::RunInfo fuzzed;
  fuzzed.id = "fuzzed";
  fuzzed.method = "lrq";
  fuzzed.hyperparametersJson = text.substr(0, cut);
  fuzzed.schemeJson = cut == std::string::npos ? std::string() : text.substr(cut + 1);
  fuzzed.metrics["perplexity"] = 12.5;
  lrq::RunInfo plain;
  plain.id = "plain";
  plain.method = "rtn";
  plain.hyperparametersJson = R"({"rank":4,"lr":0.001,"steps":[1,2]})";
  plain.schemeJson = R"({"name":"W4A16","weight":{"bits":4}})";
  try {
    const lrq::RunComparison table = lrq::runs_detail::buildComparison(
        {fuzzed, plain}, {lrq::runs_detail::RunTotals{}, lrq::runs_detail::RunTotals{}});
    for (const lrq::ComparisonRow &row : table.rows)
      FUZZ_CHECK(row.cells.size() == 2 && row.values.size() == 2);
    (void)lrq::formatComparison(table, false);
    (void)lrq::formatComparison(table, true);
  } catch (const lrq::Error &e) {
    lrq_fuzz::refused(e);
  }
  return 0;
}
