#pragma once
// Internal to lrq_runs: the byte layout of the BLOB columns (see run_store.h).
// Little-endian whatever the host, so a store can move between machines.
#include <vector>

#include "core/runs/run_record.h"

namespace lrq::runs_detail {

std::vector<unsigned char> encodeCurve(const std::vector<LossPoint> &curve);
// Throws lrq::Error when the size is not a multiple of 8.
std::vector<LossPoint> decodeCurve(const std::vector<unsigned char> &bytes);

std::vector<unsigned char> encodeDoubles(const std::vector<double> &values);
std::vector<double> decodeDoubles(const std::vector<unsigned char> &bytes);

} // namespace lrq::runs_detail
