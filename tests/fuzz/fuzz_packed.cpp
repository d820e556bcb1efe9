// The packed export's reader (docs/EXPORT_FORMAT.md, section 2) on arbitrary
// bytes: everything loadPackedModel does below LibTorch. That is the
// safetensors header, the __metadata__ checks (format, version, config,
// layers), each layer's tensor entries (readPackedHeader), the grid checks on
// steps and zero points (packedGridProblem), code unpacking (unpackCodeRows)
// and isPackedModelFile. Not reached here: converting tensors to at::Tensor,
// the LibTorch dequantization, folding low-rank factors and the embedded
// tokenizer (fuzz_tokenizer_json covers its parser).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/common/error.h"
#include "core/io/ggml_quants.h"
#include "core/io/hf_config.h"
#include "core/io/packed_format.h"
#include "core/io/safetensors.h"
#include "fuzz_common.h"

namespace {

// A float tensor's values decoded straight from the input bytes, independently
// of the reader's own conversion.
std::vector<float> floatsOf(const uint8_t *data, uint64_t dataOffset,
                            const lrq::SafetensorsTensorInfo &t) {
  const uint8_t *p = data + dataOffset + t.begin;
  const size_t n = size_t(t.numel());
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    if (t.dtype == "F32") {
      std::memcpy(&out[i], p + 4 * i, 4);
    } else {
      const uint16_t bits = uint16_t(p[2 * i] | (p[2 * i + 1] << 8));
      out[i] = t.dtype == "F16" ? lrq::halfBitsToFloat(bits) : lrq::bf16BitsToFloat(bits);
    }
  }
  return out;
}

// Code j of a row read bit by bit from the little-endian stream: the format's
// definition, not the reader's shifts and masks.
int64_t codeByBits(const uint8_t *row, int64_t j, int bits, int64_t qmin) {
  int64_t u = 0;
  for (int b = 0; b < bits; ++b) {
    const int64_t k = j * bits + b;
    u |= int64_t((row[k / 8] >> (k % 8)) & 1) << b;
  }
  return u + qmin;
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  lrq_fuzz::quietLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static lrq_fuzz::MemoryFile file("fuzz.packed.safetensors");
  const std::string &path = file.write(data, size);
  const bool detected = lrq::isPackedModelFile(path);
  try {
    const lrq::SafetensorsReader reader(path);
    const lrq::PackedHeader header = lrq::readPackedHeader(reader);
    // loadModel picks the packed reader by isPackedModelFile: whatever the
    // packed reader accepts must be recognised as packed.
    FUZZ_CHECK(detected);
    FUZZ_CHECK(header.formatVersion == lrq::kPackedFormatVersion);
    try {
      (void)lrq::modelConfigFromHfConfigJson(header.configJson, path);
    } catch (const lrq::Error &e) {
      lrq_fuzz::refused(e);
    }
    for (const lrq::PackedLayerLayout &l : header.layers) {
      // The layout is what the header declared, within the format's ranges.
      FUZZ_CHECK(l.bits >= 1 && l.bits <= 8);
      FUZZ_CHECK(l.qmin == 0 || l.qmin == -(int64_t(1) << (l.bits - 1)));
      FUZZ_CHECK(l.qmax == l.qmin + (int64_t(1) << l.bits) - 1);
      FUZZ_CHECK(l.out > 0 && l.in > 0 && l.groupSize >= 0 && l.groupSize <= l.in);
      FUZZ_CHECK(l.rowBytes * 8 >= l.in * l.bits && (l.rowBytes - 1) * 8 < l.in * l.bits);
      FUZZ_CHECK(l.qweight && l.qweight->dtype == "U8" &&
                 l.qweight->shape == (std::vector<int64_t>{l.out, l.rowBytes}));
      FUZZ_CHECK(l.qweight->end - l.qweight->begin == uint64_t(l.out * l.rowBytes));
      if (l.groupSize == 0)
        FUZZ_CHECK(l.groups == 1);
      else
        FUZZ_CHECK((l.groups - 1) * l.groupSize < l.in && l.groups * l.groupSize >= l.in);
      FUZZ_CHECK(l.scales->shape == (std::vector<int64_t>{l.scaleRows, l.groups}));
      FUZZ_CHECK(l.scaleRows == l.out || (l.scaleRows == 1 && l.groups == 1));
      FUZZ_CHECK(l.zeroPoints->shape == l.scales->shape);
      FUZZ_CHECK((l.lowRankA == nullptr) == (l.lowRankB == nullptr));
      if (l.lowRankA)
        FUZZ_CHECK(l.lowRankA->shape.size() == 2 && l.lowRankB->shape.size() == 2 &&
                   l.lowRankA->shape[0] == l.in && l.lowRankB->shape[1] == l.out &&
                   l.lowRankA->shape[1] == l.lowRankB->shape[0]);
      for (const lrq::SafetensorsTensorInfo *t : {l.qweight, l.scales, l.zeroPoints})
        FUZZ_CHECK(reader.dataOffset() + t->end <= size);

      const std::vector<float> s = floatsOf(data, reader.dataOffset(), *l.scales);
      const std::vector<float> z = floatsOf(data, reader.dataOffset(), *l.zeroPoints);
      if (!lrq::packedGridProblem(s.data(), z.data(), s.size(), l.qmin, l.qmax, l.valueDtype)
               .empty())
        continue; // loadPackedModel refuses the file here
      // Codes: the reader's unpacking equals the format's bit stream, and
      // every code lies on the grid.
      const uint8_t *packed = data + reader.dataOffset() + l.qweight->begin;
      std::vector<int32_t> codes(size_t(l.out * l.in));
      lrq::unpackCodeRows(packed, l.rowBytes, 0, l.out, l.in, l.bits, l.qmin, codes.data());
      for (int64_t r = 0; r < l.out; ++r) {
        const uint8_t *row = packed + r * l.rowBytes;
        for (int64_t c = 0; c < l.in; ++c) {
          const int32_t q = codes[size_t(r * l.in + c)];
          FUZZ_CHECK(q == codeByBits(row, c, l.bits, l.qmin));
          FUZZ_CHECK(q >= l.qmin && q <= l.qmax);
          // Dequantized as the reader does, s (q - z): finite, and finite
          // once rounded to the layer's value type (F16 max 65504, a value
          // from 65520 on rounds to infinity; BF16's halfway point is
          // (2 - 2^-8) 2^127).
          const size_t unit = size_t((l.scaleRows == 1 ? 0 : r) * l.groups +
                                     (l.groupSize > 0 ? c / l.groupSize : 0));
          const float w = s[unit] * (float(q) - z[unit]);
          FUZZ_CHECK(std::isfinite(w));
          if (l.valueDtype == "F16")
            FUZZ_CHECK(std::fabs(w) < 65504.0f + 16.0f);
          else if (l.valueDtype == "BF16")
            FUZZ_CHECK(std::fabs(double(w)) < 0x1.ffp127);
        }
      }
    }
  } catch (const lrq::Error &e) {
    lrq_fuzz::refused(e);
  }
  return 0;
}
