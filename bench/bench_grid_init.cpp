// Weight step initialisation on the default model's linears (ALGORITHMS.md,
// "Uniform grid"): for each init (min/max, the 1-D clipping search, the 2-D
// search of the LRQ / FlexRound reference) the summed error
// sum |W - Q(W)|^2.4 over the chosen layers and the seconds it took (one run
// each). Prints figures; never fails on time.
//
// usage: bench_grid_init [--bits 3] [--blocks N] [--threads T] [--norm P] [--symmetric 1]
// (--symmetric: LR-QAT's grid; min/max and the 1-D search only)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/data/default_assets.h"
#include "core/io/model_loader.h"
#include "core/model/decoder.h"
#include "core/quant/grid.h"

int main(int argc, char **argv) {
  int bits = 3;
  int64_t blocks = 1;
  int threads = 0;
  double norm = 2.4;
  bool symmetric = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--bits")
      bits = std::atoi(argv[i + 1]);
    else if (flag == "--blocks")
      blocks = std::atoll(argv[i + 1]);
    else if (flag == "--threads")
      threads = std::atoi(argv[i + 1]);
    else if (flag == "--norm")
      norm = std::atof(argv[i + 1]);
    else if (flag == "--symmetric")
      symmetric = std::atoi(argv[i + 1]) != 0;
  }
  if (threads > 0)
    at::set_num_threads(threads);
  lrq::LoadedModel loaded = lrq::loadModel(lrq::ensureDefaultModel());
  const lrq::ModelConfig &c = loaded.config;
  lrq::DecoderModel model(c, lrq::ModelWeights::fromHfTensors(c, loaded.tensors));
  std::printf("W%d %s per-channel, %lld block(s), %d threads; error = sum |W - Q(W)|^%g\n", bits,
              symmetric ? "sym" : "asym", (long long)blocks, at::get_num_threads(), norm);
  using lrq::quant::StepInit;
  std::vector<std::pair<const char *, StepInit>> inits = {
      {"minmax", StepInit::MinMax}, {"clip-search", StepInit::ClippingSearch}};
  if (!symmetric)
    inits.push_back({"clip-search-2d", StepInit::ClippingSearch2D});
  std::vector<double> totals(inits.size(), 0.0), seconds(inits.size(), 0.0);
  for (int64_t b = 0; b < std::min<int64_t>(blocks, model.numBlocks()); ++b)
    for (auto &[role, linear] : lrq::blockLinears(c, model.weights().blocks[size_t(b)])) {
      const at::Tensor w = linear->weight.to(at::kFloat).contiguous();
      std::printf("block %lld %-9s [%lld x %lld]", (long long)b, role.c_str(), (long long)w.size(0),
                  (long long)w.size(1));
      for (size_t i = 0; i < inits.size(); ++i) {
        lrq::quant::GridSpec spec;
        spec.bits = bits;
        spec.symmetric = symmetric;
        spec.clipNorm = norm;
        spec.granularity = lrq::quant::Granularity::PerChannel;
        spec.init = inits[i].second;
        const auto start = std::chrono::steady_clock::now();
        const lrq::quant::GridParams p = lrq::quant::computeGridParams(w, spec);
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const double e =
            lrq::quant::unitLpError(w, lrq::quant::fakeQuantizeWeight(w, p, spec), spec, norm)
                .sum()
                .item<double>();
        totals[i] += e;
        seconds[i] += s;
        std::printf("  %s %.4g (%.3f s)", inits[i].first, e, s);
      }
      std::printf("\n");
    }
  for (size_t i = 0; i < inits.size(); ++i)
    std::printf("%-15s total error %.5g (%.1f%% of minmax), %.2f s\n", inits[i].first, totals[i],
                100.0 * totals[i] / totals[0], seconds[i]);
  return 0;
}
