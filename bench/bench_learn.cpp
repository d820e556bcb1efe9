// Latency of the Learn playground: one slider update (gridLesson) on a
// 1536×576 layer of the default model (block 0's up_proj, with its inputs on
// the calibration text) over a sweep of settings, and the one-layer FlexRound
// vs LRQ fit. Prints figures; never fails on time.
//
// usage: bench_learn [--threads N] [--updates N] [--steps N] [--bits B] [--rank R]
//                    [--tokens T] [--lr-flex LR] [--lr-lrq LR] [--fit-only] [--synthetic]
//                    [--x-gain G] [--w-gain G] [MODEL]
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/lesson/lesson.h"

namespace {

using Clock = std::chrono::steady_clock;

double msSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

void report(const char *what, std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  std::printf("%-34s median %7.1f ms  max %7.1f ms  (%zu runs)\n", what, ms[ms.size() / 2],
              ms.back(), ms.size());
}

} // namespace

int run(int argc, char **argv) {
  int threads = 0, updates = 20, steps = lrq::lesson::FitOptions().steps, bits = 3;
  int64_t rank = 16, tokens = 0;
  double lrFlex = -1, lrLrq = -1;
  bool fitOnly = false, synthetic = false;
  lrq::lesson::SyntheticOptions so;
  std::string model = "default";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--threads" && i + 1 < argc)
      threads = std::atoi(argv[++i]);
    else if (arg == "--updates" && i + 1 < argc)
      updates = std::atoi(argv[++i]);
    else if (arg == "--steps" && i + 1 < argc)
      steps = std::atoi(argv[++i]);
    else if (arg == "--bits" && i + 1 < argc)
      bits = std::atoi(argv[++i]);
    else if (arg == "--rank" && i + 1 < argc)
      rank = std::atoll(argv[++i]);
    else if (arg == "--lr-flex" && i + 1 < argc)
      lrFlex = std::atof(argv[++i]);
    else if (arg == "--lr-lrq" && i + 1 < argc)
      lrLrq = std::atof(argv[++i]);
    else if (arg == "--tokens" && i + 1 < argc)
      tokens = std::atoll(argv[++i]);
    else if (arg == "--fit-only")
      fitOnly = true;
    else if (arg == "--synthetic")
      synthetic = true;
    else if (arg == "--x-gain" && i + 1 < argc)
      so.activationOutlierGain = std::atof(argv[++i]);
    else if (arg == "--w-gain" && i + 1 < argc)
      so.weightOutlierGain = std::atof(argv[++i]);
    else
      model = arg;
  }
  if (threads > 0)
    at::set_num_threads(threads);
  std::printf("threads: %d\n", at::get_num_threads());

  auto start = Clock::now();
  lrq::lesson::LessonLayer layer;
  if (synthetic) {
    layer = lrq::lesson::syntheticLayer(so);
  } else {
    auto lessonModel = lrq::lesson::LessonModel::open(model);
    std::printf("open model: %.0f ms\n", msSince(start));
    start = Clock::now();
    layer = lessonModel->layer(0, "up_proj", 512);
  }
  std::printf("layer %s [%lld x %lld], X [%lld x %lld]: %.0f ms\n", layer.name.c_str(),
              (long long)layer.weight.rows, (long long)layer.weight.cols,
              (long long)layer.activations.rows, (long long)layer.activations.cols, msSince(start));

  // Slider updates: bits, groups, symmetric and clipping change in turn.
  const int bitsChoices[] = {2, 3, 4, 5, 6, 8};
  const int64_t groups[] = {0, 128, 64, 32};
  std::vector<double> ms;
  for (int u = 0; u < (fitOnly ? 0 : updates); ++u) {
    lrq::lesson::GridOptions o;
    o.bits = bitsChoices[u % 6];
    o.groupSize = groups[(u / 2) % 4];
    o.symmetric = (u % 3) == 0;
    o.clipRatio = 1.0 - 0.025 * double(u % 8);
    start = Clock::now();
    const auto r = lrq::lesson::gridLesson(layer, o);
    ms.push_back(msSince(start));
    if (u == 0)
      std::printf("first update: %s, rel err %.4f, SQNR %.1f dB\n", r.grid.c_str(), r.relativeError,
                  r.sqnrDb);
  }
  if (!fitOnly) {
    report("gridLesson (1536x576)", ms);
    std::vector<double> sweep;
    for (int u = 0; u < 3; ++u) {
      start = Clock::now();
      lrq::lesson::errorSweep(layer, false, 1.0);
      sweep.push_back(msSince(start));
    }
    report("errorSweep (28 grids)", sweep);
  }

  if (!fitOnly && !layer.activations.empty()) {
    std::vector<double> act;
    for (int u = 0; u < 3; ++u) {
      start = Clock::now();
      lrq::lesson::ActivationOptions ao;
      ao.alpha = 0.3 + 0.2 * u;
      lrq::lesson::activationLesson(layer, ao);
      act.push_back(msSince(start));
    }
    report("activationLesson (alpha change)", act);
  }

  lrq::lesson::FitOptions fit;
  fit.steps = steps;
  fit.bits = bits;
  fit.lrqRank = rank;
  if (tokens > 0)
    fit.maxTokens = tokens;
  if (lrFlex > 0)
    fit.lrFlexRound = lrFlex;
  if (lrLrq > 0)
    fit.lrLrq = lrLrq;
  start = Clock::now();
  const auto f = lrq::lesson::fitLesson(layer, fit);
  std::printf("fitLesson %s, %d steps x 2 methods, %lld tokens: %.0f ms (%.1f ms/step)\n",
              f.grid.c_str(), f.stepsDone, (long long)f.tokens, msSince(start),
              msSince(start) / std::max(1, f.stepsDone));
  std::printf("  loss: RTN %.4g, FlexRound %.4g (%lld params, %.2f%% flipped), LRQ r%lld %.4g "
              "(%lld params, %.2f%% flipped)\n",
              f.rtnLoss, f.lossFlexRound.back(), (long long)f.paramsFlexRound,
              100 * f.flippedFlexRound, (long long)f.lrqRank, f.lossLrq.back(),
              (long long)f.paramsLrq, 100 * f.flippedLrq);
  if (f.heldOutTokens > 0)
    std::printf("  held-out loss (%lld tokens): RTN %.4g, FlexRound %.4g, LRQ %.4g\n",
                (long long)f.heldOutTokens, f.rtnHeldOutLoss, f.heldOutFlexRound.back(),
                f.heldOutLrq.back());
  return 0;
}

int main(int argc, char **argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception &e) {
    std::fprintf(stderr, "bench_learn: %s\n", e.what());
    return 1;
  }
}
