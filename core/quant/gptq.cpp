// GPTQ (Frantar, Ashkboos, Hoefler, Alistarh: "GPTQ: Accurate Post-Training
// Quantization for Generative Pre-trained Transformers", ICLR 2023), written
// from the paper and ALGORITHMS.md: the layer routine (gptq.h) and the method
// "gptq", sequential over the blocks of the model.
#include "core/quant/gptq.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/common/error.h"
#include "core/quant/calibration_runner.h"
#include "core/quant/embedding_rounding.h"
#include "core/quant/method.h"
#include "core/quant/transform_capture.h"

namespace lrq::quant {

at::Tensor gptqHessian(const at::Tensor &x) {
  at::NoGradGuard noGrad;
  const at::Tensor x2 = x.detach().reshape({-1, x.size(-1)}).to(at::kDouble);
  if (x2.size(0) == 0)
    throw Error("GPTQ: no calibration inputs");
  return at::mm(x2.t(), x2).mul_(2.0 / double(x2.size(0)));
}

double gptqOutputError(const at::Tensor &weight, const at::Tensor &approx, const at::Tensor &h) {
  at::NoGradGuard noGrad;
  const at::Tensor hd = h.to(at::kDouble);
  const at::Tensor e =
      (weight.detach().to(hd.device(), at::kDouble) - approx.detach().to(hd.device(), at::kDouble));
  return (at::mm(e, hd) * e).sum().item<double>() / 2.0;
}

GptqLayerResult gptqQuantizeLayer(const at::Tensor &weight, const at::Tensor &h,
                                  const GridSpec &spec, const GptqOptions &options) {
  checkWeightForGrid(weight, spec);
  const int64_t rows = weight.size(0), cols = weight.size(1);
  if (!h.defined() || h.dim() != 2 || h.size(0) != cols || h.size(1) != cols)
    throw Error("GPTQ: Hessian must be [" + std::to_string(cols) + ", " + std::to_string(cols) +
                "]");
  if (!(options.damp >= 0.0))
    throw Error("GPTQ: damp must be >= 0");
  if (options.blockSize < 1)
    throw Error("GPTQ: block_size must be >= 1");
  at::NoGradGuard noGrad;
  const auto dd = weight.options().dtype(at::kDouble);
  at::Tensor W = weight.detach().to(at::kDouble).clone();
  at::Tensor H = h.detach().to(weight.device(), at::kDouble).clone();
  const bool perGroup = spec.granularity == Granularity::PerGroup;
  // k-superblock (GGUF Q6_K, Q4_K): checkWeightForGrid made cols a multiple of 256.
  const bool superBlocks = isSuperBlockFormat(spec.stepFormat);
  // Offset form (Q4_K): zero points are offsets M, x^ = fl32(s q - M).
  const bool offsets = spec.offsetForm();
  at::Tensor superScale, superZero; // [rows, groups] double: the current super-block's grid
  GridSpec columnSpec = spec;       // a group's slice [rows, <= g] as one unit per row
  columnSpec.granularity = Granularity::PerChannel;
  columnSpec.groupSize = 0;

  // Per-tensor / per-channel steps from the whole original weight.
  GridParams fixed;
  at::Tensor fixedScale, fixedZero; // [rows, 1] double
  if (!perGroup) {
    fixed = computeGridParams(weight.detach(), spec);
    fixedScale = fixed.scale.to(at::kDouble).expand({rows, 1}).contiguous();
    fixedZero = fixed.zeroPoint.to(at::kDouble).expand({rows, 1}).contiguous();
  }

  // Dead inputs: no information, quantize zeros.
  const at::Tensor dead = H.diagonal() == 0;
  if (dead.any().item<bool>()) {
    H.diagonal().masked_fill_(dead, 1.0);
    W.index_put_({at::indexing::Slice(), dead}, 0.0);
  }
  at::Tensor perm;
  if (options.actOrder) {
    perm = std::get<1>(at::sort(H.diagonal(), /*stable=*/true, /*dim=*/0, /*descending=*/true));
    W = W.index_select(1, perm);
    H = H.index_select(0, perm).index_select(1, perm);
  } else {
    perm = at::arange(cols, weight.options().dtype(at::kLong));
  }
  H.diagonal().add_(options.damp * H.diagonal().mean().item<double>());
  at::Tensor L, info;
  std::tie(L, info) = at::linalg_cholesky_ex(H);
  if (info.item<int64_t>() != 0)
    throw Error("GPTQ: the Hessian is not positive definite (increase damp)");
  const at::Tensor Hinv = at::cholesky_inverse(L);
  at::Tensor U;
  std::tie(U, info) = at::linalg_cholesky_ex(Hinv, /*upper=*/true);
  if (info.item<int64_t>() != 0)
    throw Error("GPTQ: the inverse Hessian is not positive definite (increase damp)");

  const double qmin = double(spec.qmin()), qmax = double(spec.qmax());
  at::Tensor Q = at::zeros({rows, cols}, dd);
  at::Tensor codes = at::zeros({rows, cols}, dd);
  at::Tensor colScale = at::zeros({rows, cols}, dd), colZero = at::zeros({rows, cols}, dd);
  at::Tensor loss = at::zeros({}, dd);
  at::Tensor scale = fixedScale, zero = fixedZero; // current unit's [rows, 1]
  const bool cpu = W.device().is_cpu() && !options.tensorOps;
  for (int64_t i1 = 0; i1 < cols; i1 += options.blockSize) {
    const int64_t count = std::min(options.blockSize, cols - i1);
    // Steps of the groups starting in this block, from W as it stands now
    // (earlier blocks' updates only; see gptq.h). unitOf[i]: the step in force
    // at column i1 + i (index into units; units[0] is the one carried over).
    std::vector<std::pair<at::Tensor, at::Tensor>> units{{scale, zero}};
    std::vector<int64_t> unitOf(size_t(count), 0);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t c = i1 + i;
      if (superBlocks && c % kSuperBlockColumns == 0) {
        // The groups of a k-superblock share d (and dmin): their steps are
        // made together, from W as it stands at the super-block's first column.
        const at::Tensor slice = W.narrow(1, c, kSuperBlockColumns);
        const GridParams p = computeGridParams(slice.to(at::kFloat), spec);
        superScale = p.scale.to(at::kDouble);
        superZero = p.zeroPoint.to(at::kDouble);
      }
      if (superBlocks && c % spec.groupSize == 0) {
        const int64_t group = (c % kSuperBlockColumns) / spec.groupSize;
        units.emplace_back(superScale.narrow(1, group, 1).contiguous(),
                           superZero.narrow(1, group, 1).contiguous());
      } else if (perGroup && c % spec.groupSize == 0) {
        const at::Tensor slice = W.narrow(1, c, std::min(spec.groupSize, cols - c));
        const GridParams p = computeGridParams(slice.to(at::kFloat), columnSpec);
        units.emplace_back(p.scale.to(at::kDouble).contiguous(),
                           p.zeroPoint.to(at::kDouble).contiguous());
      }
      unitOf[size_t(i)] = int64_t(units.size()) - 1;
    }
    std::tie(scale, zero) = units.back();
    at::Tensor W1 = W.narrow(1, i1, count).contiguous().clone();
    at::Tensor Err1 = at::zeros({rows, count}, dd);
    const at::Tensor U1 = U.narrow(0, i1, count).narrow(1, i1, count).contiguous();
    at::Tensor Q1 = at::empty({rows, count}, dd), C1 = at::empty({rows, count}, dd);
    at::Tensor S1 = at::empty({rows, count}, dd), Z1 = at::empty({rows, count}, dd);
    if (cpu) {
      // Within a block every row is independent: rows in parallel, plain loops.
      std::vector<const double *> sp, zp;
      for (const auto &u : units) { // units[0] is undefined before the first group
        sp.push_back(u.first.defined() ? u.first.data_ptr<double>() : nullptr);
        zp.push_back(u.second.defined() ? u.second.data_ptr<double>() : nullptr);
      }
      double *w1 = W1.data_ptr<double>(), *e1 = Err1.data_ptr<double>();
      double *q1 = Q1.data_ptr<double>(), *c1 = C1.data_ptr<double>();
      double *s1 = S1.data_ptr<double>(), *z1 = Z1.data_ptr<double>();
      const double *u1 = U1.data_ptr<double>();
      std::vector<double> rowLoss(size_t(rows), 0.0);
      at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          double *wr = w1 + r * count;
          for (int64_t i = 0; i < count; ++i) {
            const int64_t u = unitOf[size_t(i)];
            const double s = sp[size_t(u)][r], z = zp[size_t(u)][r];
            const double w = wr[i];
            // std::nearbyint rounds halves to even, like at::round.
            double q, qv;
            if (offsets) {
              q = std::min(std::max(std::nearbyint((w + z) / s), qmin), qmax);
              // s q is exact in float32; the subtraction rounds once, as the
              // grid (and llama.cpp) computes it.
              qv = double(float(q) * float(s) - float(z));
            } else {
              q = std::min(std::max(std::nearbyint(w / s) + z, qmin), qmax);
              qv = (q - z) * s;
            }
            const double d = u1[i * count + i];
            const double err = (w - qv) / d;
            c1[r * count + i] = q;
            q1[r * count + i] = qv;
            s1[r * count + i] = s;
            z1[r * count + i] = z;
            e1[r * count + i] = err;
            rowLoss[size_t(r)] += 0.5 * err * err;
            const double *ui = u1 + i * count;
            for (int64_t j = i; j < count; ++j)
              wr[j] -= err * ui[j];
          }
        }
      });
      double total = 0;
      for (double v : rowLoss)
        total += v;
      loss.add_(total);
    } else {
      for (int64_t i = 0; i < count; ++i) {
        const auto &[us, uz] = units[size_t(unitOf[size_t(i)])];
        const at::Tensor w = W1.narrow(1, i, 1); // [rows, 1]
        const at::Tensor q = offsets ? at::round((w + uz) / us).clamp_(qmin, qmax)
                                     : at::round(w / us).add_(uz).clamp_(qmin, qmax);
        // Offset form: s q - M is exact in double (both are float32 values),
        // so one rounding to float32 gives the grid's fl32(s q - M).
        const at::Tensor qv =
            offsets ? (q * us).sub_(uz).to(at::kFloat).to(at::kDouble) : (q - uz).mul_(us);
        C1.narrow(1, i, 1).copy_(q);
        Q1.narrow(1, i, 1).copy_(qv);
        S1.narrow(1, i, 1).copy_(us.expand({rows, 1}));
        Z1.narrow(1, i, 1).copy_(uz.expand({rows, 1}));
        const at::Tensor d = U1.narrow(0, i, 1).narrow(1, i, 1); // [1, 1]
        const at::Tensor err = (w - qv).div_(d);                 // [rows, 1]
        loss.add_(err.square().sum(), 0.5);
        W1.narrow(1, i, count - i).sub_(at::mm(err, U1.narrow(0, i, 1).narrow(1, i, count - i)));
        Err1.narrow(1, i, 1).copy_(err);
      }
    }
    codes.narrow(1, i1, count).copy_(C1);
    Q.narrow(1, i1, count).copy_(Q1);
    colScale.narrow(1, i1, count).copy_(S1);
    colZero.narrow(1, i1, count).copy_(Z1);
    if (i1 + count < cols)
      W.narrow(1, i1 + count, cols - i1 - count)
          .sub_(at::mm(Err1, U.narrow(0, i1, count).narrow(1, i1 + count, cols - i1 - count)));
  }

  GptqLayerResult r;
  r.permutation = perm;
  at::Tensor inverse = perm;
  if (options.actOrder) {
    inverse = at::empty_like(perm);
    inverse.index_put_({perm}, at::arange(cols, perm.options()));
    Q = Q.index_select(1, inverse);
    codes = codes.index_select(1, inverse);
    colScale = colScale.index_select(1, inverse);
    colZero = colZero.index_select(1, inverse);
  }
  r.weight = Q.to(weight.scalar_type()).contiguous();
  r.codes = codes.to(at::kInt).contiguous();
  r.columnScale = colScale.to(at::kFloat).contiguous();
  r.columnZero = colZero.to(at::kFloat).contiguous();
  if (!perGroup) {
    r.params.scale = fixed.scale;
    r.params.zeroPoint = fixed.zeroPoint;
    r.params.clipFraction = fixed.clipFraction;
  } else if (!options.actOrder) {
    // The first column of every group holds its step.
    const at::Tensor firsts =
        at::arange(0, cols, spec.groupSize, weight.options().dtype(at::kLong));
    r.params.scale = r.columnScale.index_select(1, firsts).contiguous();
    r.params.zeroPoint = r.columnZero.index_select(1, firsts).contiguous();
  }
  r.loss = loss.item<double>();
  return r;
}

namespace {

// The linears of a block that read the same input, in the order GPTQ visits
// them: attention inputs, attention output, MLP inputs, MLP product.
int inputGroup(const std::string &role) {
  static const std::map<std::string, int> groups = {
      {"q_proj", 0},    {"k_proj", 0},  {"v_proj", 0}, {"o_proj", 1},    {"out_proj", 1},
      {"gate_proj", 2}, {"up_proj", 2}, {"fc1", 2},    {"down_proj", 3}, {"fc2", 3}};
  const auto it = groups.find(role);
  return it == groups.end() ? 4 : it->second;
}

std::string fmt(const char *format, double a, double b = 0, double c = 0) {
  char buf[160];
  std::snprintf(buf, sizeof buf, format, a, b, c);
  return buf;
}

class GptqMethod : public QuantMethod {
public:
  std::string name() const override { return "gptq"; }
  std::string help() const override {
    return "GPTQ (Frantar et al., ICLR 2023): quantizes each linear column by column, "
           "compensating every column's rounding error in the columns not yet quantized with "
           "the inverse of the layer's input Hessian H = 2XᵀX from the calibration set "
           "(dampened by damp x mean diag, lazy batches of block_size columns, optional "
           "act-order). Blocks are processed in order on the inputs produced by the "
           "already-quantized blocks. Learns nothing beyond the rounding decisions.";
  }
  std::string title() const override { return "GPTQ: error-compensating rounding (baseline)"; }
  std::vector<HyperparameterSpec> hyperparameters() const override {
    return {{"damp", ValueType::Number, 0.01, 0.0, 10.0,
             "dampening added to the Hessian's diagonal, times its mean"},
            {"block_size", ValueType::Integer, int64_t(128), 1, 1 << 20, "columns per lazy batch"},
            {"act_order", ValueType::Flag, false, 0, 0,
             "quantize columns in order of decreasing Hessian diagonal"}};
  }

  MethodReport run(MethodContext &ctx) override {
    const QuantScheme &scheme = ctx.scheme;
    scheme.validate();
    GptqOptions options;
    options.damp = ctx.hyper.value("damp", 0.01);
    options.blockSize = ctx.hyper.value("block_size", int64_t(128));
    options.actOrder = ctx.hyper.value("act_order", false);
    if (!(options.damp >= 0.0) || options.blockSize < 1)
      throw Error("gptq: damp must be >= 0 and block_size >= 1");
    DecoderModel &model = ctx.model;
    const LayerSelection &sel = scheme.layers;
    const int64_t blockCount = model.numBlocks();
    for (int64_t b : sel.blocks)
      if (b < 0 || b >= blockCount)
        throw Error("scheme selects block " + std::to_string(b) + " but the model has " +
                    std::to_string(blockCount) + " blocks");
    for (const std::string &name : sel.linears)
      if (inputGroup(name) == 4)
        throw Error("gptq: unknown linear " + name);
    checkCalibration(ctx.calibration, "gptq");
    int64_t lastSelected = -1;
    for (int64_t b = 0; b < blockCount; ++b)
      if (sel.selectsBlock(b))
        lastSelected = b;

    at::NoGradGuard noGrad;
    MethodReport report;
    ProgressObserver *obs = ctx.observer;
    if (obs)
      obs->started("gptq", lastSelected + 1);
    roundEmbeddingsAndHead(ctx, report);
    CalibrationStates states(model, ctx.calibration, 4);
    nlohmann::json blockTimes = nlohmann::json::array();
    nlohmann::json layerErrors = nlohmann::json::array();
    for (int64_t b = 0; b <= lastSelected; ++b) {
      if (ctx.cancel)
        ctx.cancel->throwIfCancelled();
      if (!sel.selectsBlock(b)) {
        states.runBlock(b, true, ctx.cancel);
        continue;
      }
      const auto start = std::chrono::steady_clock::now();
      if (obs)
        obs->blockStarted(int(b), int(lastSelected + 1));
      std::vector<std::vector<std::pair<std::string, Linear *>>> groups(4);
      for (auto &entry : blockLinears(model.config(), model.weights().blocks[size_t(b)]))
        if (sel.selectsLinear(entry.first) && entry.second->weight.defined())
          groups[size_t(inputGroup(entry.first))].push_back(entry);
      double rtnError = 0, gptqError = 0;
      for (auto &group : groups) {
        if (group.empty())
          continue;
        // The group's shared input, as its first linear sees it, in the block
        // whose earlier groups are quantized already.
        at::Tensor sum;
        int64_t tokens = 0;
        {
          ScopedCapture capture(*group.front().second, [&](const at::Tensor &x) {
            const at::Tensor x2 = x.detach().reshape({-1, x.size(-1)}).to(at::kFloat);
            if (!sum.defined())
              sum = at::zeros({x2.size(1), x2.size(1)}, x2.options());
            sum.addmm_(x2.t(), x2);
            tokens += x2.size(0);
          });
          states.runBlock(b, false, ctx.cancel);
        }
        const at::Tensor h = sum.to(at::kDouble).mul_(2.0 / double(tokens));
        for (auto &[role, linear] : group) {
          const at::Tensor original = linear->weight.detach();
          const GridSpec &grid = scheme.weightFor(original.size(1));
          GptqLayerResult r;
          try {
            r = gptqQuantizeLayer(original, h, grid, options);
          } catch (const Error &e) {
            throw Error("block " + std::to_string(b) + " " + role + ": " + e.what());
          }
          const double eRtn = gptqOutputError(original, roundToNearest(original, grid), h);
          const double eGptq = gptqOutputError(original, r.weight, h);
          rtnError += eRtn;
          gptqError += eGptq;
          LayerErrorStats s = weightErrorStats(original, r.weight);
          s.block = b;
          s.layer = role;
          report.layers.push_back({s, 0});
          reportLayer(ctx.observer, s);
          layerErrors.push_back({{"block", b},
                                 {"layer", role},
                                 {"output_error_rtn", eRtn},
                                 {"output_error_gptq", eGptq},
                                 {"gptq_loss", r.loss}});
          linear->weight = placeWeight(ctx.arena, r.weight.to(original.scalar_type()));
          // Undefined only for per-group steps with act-order (groups over
          // permuted columns), which [rows, groups] cannot express.
          if (r.params.scale.defined())
            report.grids[gridKey(model.config(), b, role)] = r.params;
        }
      }
      if (b < lastSelected)
        states.runBlock(b, true, ctx.cancel);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      blockTimes.push_back(seconds);
      if (obs) {
        obs->blockFinished(int(b), rtnError, gptqError, seconds);
        obs->log(LogLevel::Info,
                 "gptq block " + std::to_string(b) +
                     fmt(": output error %.4g (RTN %.4g), %.2f s", gptqError, rtnError, seconds));
      }
    }
    report.extra["block_seconds"] = blockTimes;
    report.extra["layer_output_error"] = layerErrors;
    report.extra["calibration_samples"] = states.samples();
    if (obs)
      obs->finished();
    return report;
  }
};

} // namespace

std::unique_ptr<QuantMethod> makeGptqMethod() {
  return std::make_unique<GptqMethod>();
}

} // namespace lrq::quant
