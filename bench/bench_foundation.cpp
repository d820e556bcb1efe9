// Figures for the foundation: GEMM GFLOP/s of this machine, default-model load
// time and peak RSS, perplexity-evaluation tokens/s and the fraction of the
// GEMM figure it achieves. Prints figures; never fails on time.
//
// usage: bench_foundation [--threads N] [--seq-len N] [--windows N] [MODEL]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "core/common/memory.h"
#include "core/data/default_assets.h"
#include "core/eval/perplexity.h"
#include "core/io/model_loader.h"
#include "core/model/decoder.h"

namespace {

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Best of several runs of C = A·Bᵀ with the shapes the model's linears see.
double gemmGflops(int64_t m, int64_t k, int64_t n) {
  at::Tensor a = at::randn({m, k});
  at::Tensor b = at::randn({n, k});
  at::Tensor c = at::matmul(a, b.t());
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    auto start = Clock::now();
    int iterations = 0;
    do {
      c = at::matmul(a, b.t());
      ++iterations;
    } while (secondsSince(start) < 0.3);
    double seconds = secondsSince(start);
    best = std::max(best, 2.0 * double(m) * double(k) * double(n) * iterations / seconds / 1e9);
  }
  return best;
}

} // namespace

int main(int argc, char **argv) {
  int threads = int(std::thread::hardware_concurrency());
  int64_t seqLen = 512, windows = 8;
  std::string model = "default";
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--threads" && i + 1 < argc)
      threads = std::atoi(argv[++i]);
    else if (arg == "--seq-len" && i + 1 < argc)
      seqLen = std::atoll(argv[++i]);
    else if (arg == "--windows" && i + 1 < argc)
      windows = std::atoll(argv[++i]);
    else
      model = arg;
  }
  at::set_num_threads(threads);
  c10::InferenceMode inference;
  const std::string path = model == "default" ? lrq::ensureDefaultModel() : model;

  // Load first, so the peak RSS below is the load's own.
  const double rssBefore = lrq::peakRssMiB();
  auto loadStart = Clock::now();
  lrq::LoadedModel loaded = lrq::loadModel(path);
  lrq::DecoderModel decoder(loaded.config,
                            lrq::ModelWeights::fromHfTensors(loaded.config, loaded.tensors));
  const double loadSeconds = secondsSince(loadStart);
  const double rssAfterLoad = lrq::peakRssMiB();

  const lrq::ModelConfig &c = loaded.config;
  std::printf("model            %s (%s)\n", path.c_str(),
              loaded.baselineNote.empty() ? "float weights" : loaded.baselineNote.c_str());
  std::printf("threads          %d\n", at::get_num_threads());
  std::printf("load             %.2f s (model + dequantization + tokenizer)\n", loadSeconds);
  std::printf("peak RSS         %.0f MiB after load (%.0f MiB before)\n", rssAfterLoad, rssBefore);

  // GEMM figure at the evaluation's shapes: [seqLen, hidden] x [ffn, hidden]^T.
  const double gemmSquare = gemmGflops(1024, 1024, 1024);
  const double gemmModel = gemmGflops(seqLen, c.hiddenSize, c.intermediateSize);
  std::printf("GEMM             %.1f GFLOP/s (1024^3), %.1f GFLOP/s (%lldx%lldx%lld)\n", gemmSquare,
              gemmModel, (long long)seqLen, (long long)c.hiddenSize, (long long)c.intermediateSize);

  // Perplexity on the held-out default text.
  lrq::TextSplit text = lrq::defaultText();
  std::vector<int32_t> tokens = loaded.tokenizer->encode(text.evaluation, true);
  lrq::PerplexityResult r =
      lrq::evaluatePerplexity(decoder, tokens, seqLen, nullptr, nullptr, windows);
  // FLOPs per window: linears (2 * params * tokens), attention (QK^T and AV,
  // causal: half the square), LM head.
  const double linearParams = double(c.numLayers) * (double(c.hiddenSize) * c.headDim *
                                                         (c.numHeads * 2 + c.numKvHeads * 2) +
                                                     3.0 * c.hiddenSize * c.intermediateSize);
  const double headParams = double(c.vocabSize) * c.hiddenSize;
  const double attention = double(c.numLayers) * 2.0 * 2.0 * c.numHeads * c.headDim *
                           double(seqLen) * double(seqLen) / 2.0;
  const double flopsPerWindow = 2.0 * (linearParams + headParams) * seqLen + attention;
  const double achieved = flopsPerWindow * double(r.windows) / r.seconds / 1e9;
  std::printf("perplexity       %.4f over %lld tokens (%lld windows of %lld)\n", r.perplexity,
              (long long)r.tokens, (long long)r.windows, (long long)r.seqLen);
  std::printf("eval speed       %.0f tokens/s, %.1f GFLOP/s = %.0f%% of GEMM (model shapes), "
              "%.0f%% of GEMM (1024^3)\n",
              r.tokensPerSecond, achieved, 100.0 * achieved / gemmModel,
              100.0 * achieved / gemmSquare);
  std::printf("peak RSS         %.0f MiB at the end\n", lrq::peakRssMiB());
  return 0;
}
