#pragma once
// Whether a run's result can be written as a GGUF file (core/io/gguf_export.h),
// known before any work: its weight grid (and fallback grid, if any) must be
// one of llama.cpp's block types (Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, Q6_K) and its
// method must not add low-rank factors. Light header.
#include <string>

namespace lrq::quant {

// "" when the scheme (JSON, as QuantScheme::toJson) run by `method` exports to
// GGUF; else the reason, naming the scheme to use ("W3 asym per-channel weights
// cannot be stored as GGUF Q4_1; quantize with --scheme gguf-q4_1").
std::string ggufExportProblem(const std::string &schemeJson, const std::string &method);

} // namespace lrq::quant
