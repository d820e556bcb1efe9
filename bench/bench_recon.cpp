// Where a reconstruction iteration stands against this machine's GEMM speed:
// for 1 and 2 threads, in one run, it prints
//   - the GEMM GFLOP/s of one block's seven linears at the iteration's token
//     count (the model's own shapes),
//   - the seconds of one LRQ (or FlexRound) iteration at batch 2 x 512 on block
//     0 of the default model, its FLOP count (counted below) and GFLOP/s,
//   - the ratio of the two (the goal: >= 85 %),
//   - the same iteration with the learned-rounding quantizer and Adam as plain
//     tensor ops under autograd ("tensor ops"), and how much faster the fused
//     path is; the two alternate, best of --rounds runs each. --paths fused or
//     tensor-ops times one of them alone (peak RSS then belongs to that path).
// Prints figures; never fails on time.
//
// usage: bench_recon [--method lrq|flexround] [--iters N] [--seq-len N] [--batch N]
//                    [--threads 1,2] [--rounds 2] [--paths both|fused|tensor-ops]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "core/common/memory.h"
#include "core/data/default_assets.h"
#include "core/io/model_loader.h"
#include "core/model/decoder.h"
#include "core/quant/learned_rounding.h"
#include "core/quant/method.h"
#include "core/recon/adam.h"

namespace {

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Shape {
  int64_t out, in;
};

// GFLOP/s of y = x·Wᵀ over the block's linears, x [tokens, in]: best of five
// rounds of at least 0.3 s each.
double blockGemmGflops(const std::vector<Shape> &shapes, int64_t tokens) {
  std::vector<at::Tensor> x, w;
  double flop = 0;
  for (const Shape &s : shapes) {
    x.push_back(at::randn({tokens, s.in}));
    w.push_back(at::randn({s.out, s.in}));
    flop += 2.0 * double(tokens) * double(s.in) * double(s.out);
  }
  double best = 0;
  for (int round = 0; round < 5; ++round) {
    const auto start = Clock::now();
    int passes = 0;
    do {
      for (size_t i = 0; i < shapes.size(); ++i)
        at::matmul(x[i], w[i].t());
      ++passes;
    } while (secondsSince(start) < 0.3);
    best = std::max(best, flop * passes / secondsSince(start) / 1e9);
  }
  return best;
}

// Times every iteration callback of the method.
class IterationClock : public lrq::ProgressObserver {
public:
  std::vector<Clock::time_point> stamps;
  void iterationLoss(int, int, double) override { stamps.push_back(Clock::now()); }
};

} // namespace

int main(int argc, char **argv) {
  std::string method = "lrq", threadList = "1,2";
  int64_t iters = 12, seqLen = 512, batch = 2;
  int rounds = 2;
  std::string paths = "both";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i];
    if (arg == "--method")
      method = argv[i + 1];
    else if (arg == "--iters")
      iters = std::atoll(argv[i + 1]);
    else if (arg == "--seq-len")
      seqLen = std::atoll(argv[i + 1]);
    else if (arg == "--batch")
      batch = std::atoll(argv[i + 1]);
    else if (arg == "--threads")
      threadList = argv[i + 1];
    else if (arg == "--paths")
      paths = argv[i + 1];
    else if (arg == "--rounds")
      rounds = std::max(1, std::atoi(argv[i + 1]));
  }
  if (paths != "both" && paths != "fused" && paths != "tensor-ops") {
    std::fprintf(stderr, "bench_recon: --paths must be both, fused or tensor-ops\n");
    return 2;
  }
  if (method != "lrq" && method != "flexround") {
    std::fprintf(stderr, "bench_recon: --method must be lrq or flexround\n");
    return 2;
  }
  iters = std::max<int64_t>(iters, 3);

  const std::string path = lrq::ensureDefaultModel();
  lrq::LoadedModel loaded = lrq::loadModel(path);
  const lrq::ModelConfig &c = loaded.config;
  const lrq::TextSplit text = lrq::defaultText();
  const std::vector<int32_t> tokens = loaded.tokenizer->encode(text.calibration, true);
  const lrq::quant::CalibrationSet calib =
      lrq::quant::makeCalibrationSet(tokens, batch * 2, seqLen, 0, "bench");

  // One block's linears (LLaMA: q, k, v, o, gate, up, down).
  const int64_t h = c.hiddenSize, kv = c.numKvHeads * c.headDim;
  const std::vector<Shape> shapes = {{c.numHeads * c.headDim, h},
                                     {kv, h},
                                     {kv, h},
                                     {h, c.numHeads * c.headDim},
                                     {c.intermediateSize, h},
                                     {c.intermediateSize, h},
                                     {h, c.intermediateSize}};
  const int64_t T = batch * seqLen; // tokens per iteration
  // FLOP of one iteration: the linears' forward 2·T·in·out, and backward twice
  // that (input and weight gradients); attention scores and weighted values,
  // 4·L²·hidden per sequence forward, three times with backward; LRQ's scale
  // product L2·U2 (r = min(out, in) / 4) 2·out·r·in forward, three times with
  // backward. Elementwise work (the quantizer, norms, softmax) is not counted:
  // the ratio below therefore understates the share that is not GEMM.
  double linear = 0, scaleProduct = 0;
  for (const Shape &s : shapes) {
    linear += 3 * 2.0 * double(T) * double(s.in) * double(s.out);
    if (method == "lrq")
      scaleProduct += 3 * 2.0 * double(s.out) * double(std::min(s.out, s.in) / 4) * double(s.in);
  }
  const double attention = 3 * 4.0 * double(seqLen) * double(seqLen) * double(h) * double(batch);
  const double flop = linear + attention + scaleProduct;

  std::printf("model      %s, block 0, %s, %lld iterations of batch %lld x %lld tokens\n",
              path.c_str(), method.c_str(), (long long)iters, (long long)batch, (long long)seqLen);
  std::printf("FLOP       %.2f G per iteration (linears %.2f, attention %.2f, scale product "
              "%.2f)\n",
              flop / 1e9, linear / 1e9, attention / 1e9, scaleProduct / 1e9);
  std::printf("%-8s %14s %14s %14s %8s %12s %9s\n", "threads", "GEMM GFLOP/s", "s/iteration",
              "iter GFLOP/s", "ratio", "tensor ops", "speedup");

  std::stringstream list(threadList);
  std::string item;
  while (std::getline(list, item, ',')) {
    const int threads = std::atoi(item.c_str());
    if (threads < 1)
      continue;
    at::set_num_threads(threads);
    double gemm = 0;
    {
      c10::InferenceMode inference;
      gemm = blockGemmGflops(shapes, T);
    }
    // One timed run of the method on block 0: seconds per iteration.
    auto timeIteration = [&]() -> double {
      lrq::DecoderModel model(c, lrq::ModelWeights::fromHfTensors(c, loaded.tensors));
      lrq::quant::QuantScheme scheme = lrq::quant::presetScheme("W3A16-g128");
      scheme.layers.blocks = {0};
      std::unique_ptr<lrq::quant::QuantMethod> m = lrq::quant::createMethod(method);
      nlohmann::json hyper = m->defaults();
      hyper["iters"] = iters;
      hyper["batch_size"] = batch;
      IterationClock clock;
      lrq::quant::MethodContext ctx{model, scheme, calib, hyper, 0, &clock, nullptr, ""};
      ctx.spectra = false;
      m->run(ctx);
      if (clock.stamps.size() < 3)
        return -1.0;
      // From the second iteration on: the first one also warms up the allocator.
      return std::chrono::duration<double>(clock.stamps.back() - clock.stamps[1]).count() /
             double(clock.stamps.size() - 2);
    };
    // The fused path (one-pass quantizer, fused Adam) against tensor ops under
    // autograd, alternating, best of `rounds` each.
    double fused = 1e30, tensorOps = 1e30;
    std::vector<bool> modes;
    if (paths != "fused")
      modes.push_back(false);
    if (paths != "tensor-ops")
      modes.push_back(true);
    for (int round = 0; round < rounds; ++round)
      for (const bool onePass : modes) {
        lrq::quant::setLearnedRoundingOnePass(onePass);
        lrq::recon::setAdamFused(onePass);
        const double seconds = timeIteration();
        if (seconds < 0) {
          std::fprintf(stderr, "bench_recon: the method reported too few iterations\n");
          return 1;
        }
        (onePass ? fused : tensorOps) = std::min(onePass ? fused : tensorOps, seconds);
      }
    lrq::quant::setLearnedRoundingOnePass(true);
    lrq::recon::setAdamFused(true);
    if (paths == "tensor-ops") // the tensor path in the main columns, nothing to compare
      fused = tensorOps;
    const double achieved = flop / fused / 1e9;
    if (paths == "both")
      std::printf("%-8d %14.1f %14.3f %14.1f %7.0f%% %12.3f %8.2fx\n", threads, gemm, fused,
                  achieved, 100.0 * achieved / gemm, tensorOps, tensorOps / fused);
    else
      std::printf("%-8d %14.1f %14.3f %14.1f %7.0f%%\n", threads, gemm, fused, achieved,
                  100.0 * achieved / gemm);
  }
  std::printf("peak RSS   %.0f MiB\n", lrq::peakRssMiB());
  return 0;
}
