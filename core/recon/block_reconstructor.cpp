// Conventions: see block_reconstructor.h.
#include "core/recon/block_reconstructor.h"

#include "core/recon/adam.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <system_error>

#include "core/common/error.h"
#include "core/common/file_write.h"
#include "core/common/memory.h"
#include "core/recon/hidden_state_store.h"

namespace lrq::recon {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

constexpr int kCheckpointFormat = 1;

uint64_t fnv1a(const void *data, size_t bytes, uint64_t h = 1469598103934665603ull) {
  const auto *p = static_cast<const unsigned char *>(data);
  for (size_t i = 0; i < bytes; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

uint64_t hashTensor(const at::Tensor &t, uint64_t h) {
  const at::Tensor c = t.detach().to(at::kCPU).contiguous();
  return fnv1a(c.data_ptr(), size_t(c.numel()) * c.element_size(), h);
}

std::string hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// One linear of the block being reconstructed.
struct ActiveLayer {
  std::string role;
  Linear *linear = nullptr;
  at::Tensor fpWeight;
  std::unique_ptr<LearnableLayer> learn;
};

// Puts the full-precision weights back unless the block finished.
struct RestoreOnFailure {
  std::vector<ActiveLayer> &layers;
  bool armed = true;
  ~RestoreOnFailure() {
    if (armed)
      for (ActiveLayer &l : layers)
        l.linear->weight = l.fpWeight;
  }
};

bool allFinite(const at::Tensor &t) {
  return at::isfinite(t.detach()).all().item<bool>();
}

// (pred - target)^2 summed over the hidden dimension, mean over the rest.
at::Tensor reconstructionLoss(const at::Tensor &pred, const at::Tensor &target) {
  return (pred - target).pow(2).sum(-1).mean();
}

nlohmann::json optionalNumber(const std::optional<double> &v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

std::optional<double> optionalNumber(const nlohmann::json &record, const char *key) {
  const auto it = record.find(key);
  if (it == record.end() || !it->is_number())
    return std::nullopt;
  return it->get<double>();
}

std::string blockName(int64_t block) {
  return "reconstruction of block " + std::to_string(block);
}

// Names the first layer holding non-finite parameters or weights.
[[noreturn]] void throwNonFinite(int64_t block, int64_t iteration,
                                 const std::vector<ActiveLayer> &layers, const std::string &what) {
  const std::string at = " at iteration " + std::to_string(iteration);
  for (const ActiveLayer &l : layers)
    for (const auto &[name, p] : l.learn->parameters())
      if (!allFinite(p))
        throw Error(blockName(block) + ", layer " + l.role + ": parameter " + name +
                    " is not finite" + at + " (" + what + "; try a lower learning rate)");
  for (const ActiveLayer &l : layers) {
    at::NoGradGuard noGrad;
    if (!allFinite(l.learn->weight()))
      throw Error(blockName(block) + ", layer " + l.role + ": quantized weight is not finite" + at +
                  " (" + what + ")");
  }
  throw Error(blockName(block) + ": " + what + at +
              " although every layer's weights are finite (non-finite inputs or norm weights)");
}

nlohmann::json readJsonFile(const std::string &path) {
  std::ifstream in(path);
  if (!in)
    throw FileError(path, "cannot open the checkpoint");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception &e) {
    throw FileError(path, std::string("damaged checkpoint: ") + e.what());
  }
}

// Writes through a temporary file and a rename, so a crash never leaves half a
// file and a full disk leaves the previous checkpoint as it was (and no
// temporary file behind).
void writeFileAtomically(const std::string &path, const std::string &bytes) {
  const std::string tmp = path + ".tmp";
  try {
    writeFileOrRemove(tmp, bytes.data(), bytes.size(), /*sync=*/true, path);
  } catch (const FileError &e) {
    throw FileError(path, "cannot write the checkpoint: " + e.problem());
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw FileError(path, "cannot write the checkpoint: " + ec.message());
  }
}

nlohmann::json blockRecord(const BlockOutcome &o) {
  nlohmann::json layers = nlohmann::json::array();
  int64_t offset = 0;
  for (const LayerOutcome &l : o.layers) {
    layers.push_back({{"role", l.role},
                      {"params", l.learnableParams},
                      {"rows", l.weight.size(0)},
                      {"cols", l.weight.size(1)},
                      {"offset", offset}});
    offset += l.weight.numel();
    // The extras follow the layer's Ŵ in the block file, in this order.
    nlohmann::json extras = nlohmann::json::array();
    for (const auto &[name, t] : l.extras) {
      extras.push_back({{"name", name}, {"shape", t.sizes().vec()}, {"offset", offset}});
      offset += t.numel();
    }
    if (!extras.empty())
      layers.back()["extras"] = std::move(extras);
  }
  return {{"block", o.block},
          {"initial_loss", o.initialLoss},
          {"final_loss", o.finalLoss},
          {"heldout_initial_loss", optionalNumber(o.heldoutInitialLoss)},
          {"heldout_final_loss", optionalNumber(o.heldoutFinalLoss)},
          {"seconds", o.seconds},
          {"train_seconds", o.trainSeconds},
          {"iterations", o.iterations},
          {"curve", o.curve},
          {"layers", layers}};
}

std::string blockFile(const std::string &dir, int64_t block) {
  return (fs::path(dir) / ("block_" + std::to_string(block) + ".bin")).string();
}

} // namespace

int64_t LearnableLayer::parameterCount() const {
  int64_t n = 0;
  for (const auto &entry : parameters())
    n += entry.second.numel();
  return n;
}

BlockReconstructor::BlockReconstructor(DecoderModel &model, at::Tensor calibrationTokens,
                                       ReconOptions options, at::Tensor heldoutTokens)
    : model_(model), tokens_(std::move(calibrationTokens)), options_(std::move(options)),
      heldoutTokens_(std::move(heldoutTokens)) {
  if (!tokens_.defined() || tokens_.dim() != 2 || tokens_.size(0) < 1 || tokens_.size(1) < 1)
    throw Error("reconstruction: calibration tokens must be [samples, seqLen]");
  if (heldoutTokens_.defined() &&
      (heldoutTokens_.dim() != 2 || heldoutTokens_.size(0) < 1 || heldoutTokens_.size(1) < 1))
    throw Error("reconstruction: held-out tokens must be [samples, seqLen]");
  if (options_.iters < 0)
    throw Error("reconstruction: iters must be >= 0");
  if (!(options_.lr > 0.0) || !std::isfinite(options_.lr))
    throw Error("reconstruction: lr must be a positive number");
  if (options_.batchSize < 1)
    throw Error("reconstruction: batch_size must be >= 1");
  if (options_.cacheMb < -1)
    throw Error("reconstruction: cache_mb must be >= 0, or -1 (spill all where there is a work "
                "folder)");
}

std::string BlockReconstructor::checkpointDir(const std::string &workDir) {
  return (fs::path(workDir) / "recon").string();
}

ReconSummary BlockReconstructor::run(const LayerFactory &factory,
                                     const std::function<void(const BlockOutcome &)> &onBlock) {
  if (c10::InferenceMode::is_enabled())
    throw Error("reconstruction needs autograd: it cannot run under inference mode");
  const ModelConfig &config = model_.config();
  const int64_t blocks = model_.numBlocks();
  const int64_t samples = tokens_.size(0), seqLen = tokens_.size(1);
  const int64_t hidden = config.hiddenSize;
  ProgressObserver *observer = options_.observer;
  auto checkCancel = [&] {
    if (options_.cancel)
      options_.cancel->throwIfCancelled();
  };
  const at::Device device = model_.device();
  const at::ScalarType dtype = model_.weights().tokenEmbedding.scalar_type();

  // The run's identity: settings, calibration tokens and model.
  const at::Tensor tokens = tokens_.to(at::kCPU, at::kLong).contiguous();
  uint64_t h = fnv1a(options_.fingerprint.data(), options_.fingerprint.size());
  h = hashTensor(tokens, h);
  const int64_t dims[] = {blocks, hidden, samples, seqLen, options_.iters, options_.batchSize};
  h = fnv1a(dims, sizeof dims, h);
  if (!options_.blocks.empty())
    h = fnv1a(options_.blocks.data(), options_.blocks.size() * sizeof(int64_t), h);
  h = fnv1a(&options_.seed, sizeof options_.seed, h);
  h = fnv1a(&options_.lr, sizeof options_.lr, h);
  if (blocks > 0)
    h = hashTensor(model_.weights().blocks[0].q.weight, h);
  const std::string fingerprint = hex(h);
  // The held-out windows change no training result, so they are not part of
  // the run's identity; their own hash says whether checkpointed held-out
  // figures belong to these windows.
  const at::Tensor heldoutTokens =
      heldoutTokens_.defined() ? heldoutTokens_.to(at::kCPU, at::kLong).contiguous() : at::Tensor();
  const int64_t heldoutSamples = heldoutTokens.defined() ? heldoutTokens.size(0) : 0;
  const std::string heldoutFingerprint =
      heldoutSamples > 0 ? hex(hashTensor(heldoutTokens, fnv1a(dims, sizeof dims))) : "";

  // Checkpoint: restore or start afresh.
  const std::string ckDir = options_.workDir.empty() ? "" : checkpointDir(options_.workDir);
  const std::string statePath = ckDir.empty() ? "" : (fs::path(ckDir) / "state.json").string();
  nlohmann::json state = {{"format", kCheckpointFormat},
                          {"fingerprint", fingerprint},
                          {"heldout", heldoutFingerprint},
                          {"blocks", nlohmann::json::array()}};
  int64_t restoredBlocks = 0;
  if (!ckDir.empty()) {
    std::error_code ec;
    if (options_.resume && fs::exists(statePath)) {
      nlohmann::json saved = readJsonFile(statePath);
      if (saved.value("format", 0) != kCheckpointFormat ||
          saved.value("fingerprint", std::string()) != fingerprint)
        throw FileError(statePath, "checkpoint of a different run (other settings, calibration or "
                                   "model); use another work directory or resume=false");
      state = std::move(saved);
      restoredBlocks = std::min<int64_t>(int64_t(state["blocks"].size()), blocks);
      if (state.value("heldout", std::string()) != heldoutFingerprint) {
        // Figures of other held-out windows (or none): the restored blocks report none.
        for (nlohmann::json &rec : state["blocks"]) {
          rec["heldout_initial_loss"] = nullptr;
          rec["heldout_final_loss"] = nullptr;
        }
        state["heldout"] = heldoutFingerprint;
        if (observer && restoredBlocks > 0 && heldoutSamples > 0)
          observer->log(LogLevel::Warning,
                        "the checkpoint holds no held-out loss for these held-out samples: "
                        "restored blocks report none");
      }
    } else {
      fs::remove_all(ckDir, ec);
      if (observer && options_.resume)
        observer->log(LogLevel::Info, "no checkpoint in " + ckDir + ": starting from block 0");
    }
    fs::create_directories(ckDir, ec);
    if (ec)
      throw FileError(ckDir, "cannot create the checkpoint directory: " + ec.message());
  }

  // Both streams start at the embeddings.
  const int64_t budget = options_.cacheMb >= 0      ? options_.cacheMb * 1024 * 1024
                         : options_.workDir.empty() ? std::numeric_limits<int64_t>::max()
                                                    : 0;
  const std::string spillDir = options_.workDir.empty() ? "" : (fs::path(ckDir) / "cache").string();
  HiddenStateStore fpStream("fp", samples, {seqLen, hidden}, dtype, budget / 2, spillDir);
  HiddenStateStore qStream("q", samples, {seqLen, hidden}, dtype, budget - budget / 2, spillDir);
  {
    at::NoGradGuard noGrad;
    for (int64_t s = 0; s < samples; ++s) {
      const at::Tensor x = model_.embed(tokens.narrow(0, s, 1));
      fpStream.set(s, x[0]);
      qStream.set(s, x[0]);
    }
  }
  // Held-out samples: few, always in memory (no spill files).
  std::unique_ptr<HiddenStateStore> heldFp, heldQ;
  if (heldoutSamples > 0) {
    const int64_t len = heldoutTokens.size(1);
    const int64_t unlimited = std::numeric_limits<int64_t>::max();
    heldFp = std::make_unique<HiddenStateStore>(
        "heldout_fp", heldoutSamples, std::vector<int64_t>{len, hidden}, dtype, unlimited, "");
    heldQ = std::make_unique<HiddenStateStore>(
        "heldout_q", heldoutSamples, std::vector<int64_t>{len, hidden}, dtype, unlimited, "");
    at::NoGradGuard noGrad;
    for (int64_t s = 0; s < heldoutSamples; ++s) {
      const at::Tensor x = model_.embed(heldoutTokens.narrow(0, s, 1));
      heldFp->set(s, x[0]);
      heldQ->set(s, x[0]);
    }
  }
  if (observer && fpStream.spilled() > 0)
    observer->log(LogLevel::Info, std::to_string(fpStream.spilled()) + " of " +
                                      std::to_string(samples) +
                                      " calibration samples per stream spilled to " + spillDir);

  // Block j on every sample of a stream, in place; with a target, returns the
  // mean loss against it. The same code serves the first run and a resume, so
  // both produce the same bits.
  auto propagate = [&](HiddenStateStore &stream, int64_t block, const HiddenStateStore *target,
                       bool update) {
    at::NoGradGuard noGrad;
    double total = 0.0;
    const int64_t count = stream.size();
    for (int64_t s = 0; s < count; ++s) {
      checkCancel();
      const at::Tensor y = model_.runBlock(block, stream.get(s).to(device).unsqueeze(0));
      if (target)
        total += reconstructionLoss(y, target->get(s).to(device).unsqueeze(0)).item<double>();
      if (update)
        stream.set(s, y[0]);
    }
    return total / double(count);
  };

  int64_t lastBlock = blocks - 1;
  std::vector<bool> trains(size_t(blocks), options_.blocks.empty());
  if (!options_.blocks.empty()) {
    lastBlock = -1;
    for (int64_t b : options_.blocks) {
      if (b < 0 || b >= blocks)
        throw Error("reconstruction: block " + std::to_string(b) + " out of range (the model has " +
                    std::to_string(blocks) + " blocks)");
      trains[size_t(b)] = true;
      lastBlock = std::max(lastBlock, b);
    }
  }

  ReconSummary summary;
  summary.samples = samples;
  summary.seqLen = seqLen;
  summary.heldoutSamples = heldoutSamples;
  summary.spilledSamples = fpStream.spilled();
  summary.resumedBlocks = restoredBlocks;

  for (int64_t j = 0; j <= lastBlock; ++j) {
    checkCancel();
    const auto blockStart = Clock::now();
    if (observer)
      observer->blockStarted(int(j), int(lastBlock + 1)); // blocks this run goes through
    BlockWeights &bw = model_.weights().blocks[size_t(j)];
    const auto linears = blockLinears(config, bw);

    if (j < restoredBlocks) {
      const nlohmann::json &rec = state["blocks"][size_t(j)];
      BlockOutcome out;
      out.block = j;
      out.initialLoss = rec.at("initial_loss").get<double>();
      out.finalLoss = rec.at("final_loss").get<double>();
      out.seconds = rec.at("seconds").get<double>();
      out.trainSeconds = rec.at("train_seconds").get<double>();
      out.iterations = rec.at("iterations").get<int64_t>();
      out.curve = rec.at("curve").get<std::vector<double>>();
      out.heldoutInitialLoss = optionalNumber(rec, "heldout_initial_loss");
      out.heldoutFinalLoss = optionalNumber(rec, "heldout_final_loss");
      out.restored = true;
      propagate(fpStream, j, nullptr, true);
      if (heldFp)
        propagate(*heldFp, j, nullptr, true);
      const std::string path = blockFile(ckDir, j);
      std::ifstream in(path, std::ios::binary);
      if (!in)
        throw FileError(path, "cannot open the checkpointed weights");
      for (const nlohmann::json &lr : rec.at("layers")) {
        const std::string role = lr.at("role").get<std::string>();
        Linear *linear = nullptr;
        for (const auto &entry : linears)
          if (entry.first == role)
            linear = entry.second;
        if (!linear)
          throw FileError(statePath, "checkpoint names an unknown layer " + role);
        at::Tensor w =
            at::empty({lr.at("rows").get<int64_t>(), lr.at("cols").get<int64_t>()}, at::kFloat);
        in.seekg(std::streamoff(lr.at("offset").get<int64_t>() * 4));
        if (!in.read(static_cast<char *>(w.data_ptr()), std::streamsize(w.numel() * 4)))
          throw FileError(path, "truncated checkpointed weights");
        if (!linear->weight.defined() || linear->weight.sizes() != w.sizes())
          throw FileError(path, "checkpointed " + role + " does not fit the model");
        LayerOutcome lo;
        lo.role = role;
        lo.learnableParams = lr.at("params").get<int64_t>();
        if (const auto extras = lr.find("extras"); extras != lr.end())
          for (const nlohmann::json &e : *extras) {
            // At most the layer's own size: [rows, groups] grids are smaller.
            const std::vector<int64_t> shape = e.at("shape").get<std::vector<int64_t>>();
            int64_t count = 1;
            for (int64_t d : shape) {
              if (d < 0 || d > linear->weight.numel() || count * d > linear->weight.numel())
                throw FileError(statePath, "checkpointed " + role + " has a misshapen extra");
              count *= d;
            }
            at::Tensor t = at::empty(shape, at::kFloat);
            in.seekg(std::streamoff(e.at("offset").get<int64_t>() * 4));
            if (!in.read(static_cast<char *>(t.data_ptr()), std::streamsize(t.numel() * 4)))
              throw FileError(path, "truncated checkpointed weights");
            lo.extras.emplace_back(e.at("name").get<std::string>(), std::move(t));
          }
        lo.fpWeight = linear->weight;
        lo.weight =
            placeWeight(options_.arena, w.to(device, linear->weight.scalar_type()).contiguous());
        linear->weight = lo.weight;
        out.layers.push_back(std::move(lo));
      }
      propagate(qStream, j, nullptr, true);
      if (heldQ)
        propagate(*heldQ, j, nullptr, true);
      if (observer) {
        for (size_t i = 0; i < out.curve.size(); ++i)
          observer->iterationLoss(int(j), int(i), out.curve[i]);
        observer->log(LogLevel::Info,
                      "block " + std::to_string(j) + " restored from the checkpoint");
        if (out.heldoutInitialLoss && out.heldoutFinalLoss)
          observer->blockHeldOut(int(j), *out.heldoutInitialLoss, *out.heldoutFinalLoss);
        observer->blockFinished(int(j), out.initialLoss, out.finalLoss, out.seconds);
      }
      if (onBlock)
        onBlock(out);
      for (LayerOutcome &l : out.layers)
        l.fpWeight = l.weight = at::Tensor();
      summary.blocks.push_back(std::move(out));
      releaseFreeMemory();
      continue;
    }

    std::vector<ActiveLayer> active;
    for (const auto &[role, linear] : linears) {
      if (!trains[size_t(j)] || !linear->weight.defined())
        continue;
      std::unique_ptr<LearnableLayer> learn = factory(j, role, linear->weight);
      if (learn)
        active.push_back({role, linear, linear->weight, std::move(learn)});
    }
    RestoreOnFailure restore{active};

    // Targets: the full-precision block on full-precision inputs.
    const auto targetStart = Clock::now();
    propagate(fpStream, j, nullptr, true);
    if (heldFp)
      propagate(*heldFp, j, nullptr, true);
    const double targetSeconds = secondsSince(targetStart);

    BlockOutcome out;
    out.block = j;
    double initialSeconds = 0;
    if (!active.empty()) {
      std::vector<at::Tensor> params;
      for (const ActiveLayer &l : active)
        for (const auto &[name, p] : l.learn->parameters()) {
          if (!p.requires_grad() || !p.is_leaf())
            throw Error(blockName(j) + ", layer " + l.role + ": parameter " + name +
                        " is not a leaf tensor requiring grad");
          params.push_back(p);
        }
      {
        at::NoGradGuard noGrad;
        for (ActiveLayer &l : active)
          l.linear->weight = l.learn->weight().detach();
      }
      const auto initialStart = Clock::now();
      out.initialLoss = propagate(qStream, j, &fpStream, false);
      if (heldQ)
        out.heldoutInitialLoss = propagate(*heldQ, j, heldFp.get(), false);
      initialSeconds = secondsSince(initialStart);
      if (!std::isfinite(out.initialLoss))
        throwNonFinite(j, 0, active, "initial loss is not finite");

      Adam adam(params);
      std::mt19937_64 rng(options_.seed * 0x9E3779B97F4A7C15ull + uint64_t(j) + 1);
      std::vector<int64_t> order(size_t(samples), 0);
      for (int64_t s = 0; s < samples; ++s)
        order[size_t(s)] = s;
      const int64_t batch = std::min(options_.batchSize, samples);
      const auto trainStart = Clock::now();
      for (int64_t it = 0; it < options_.iters; ++it) {
        checkCancel();
        // A batch of distinct samples: the first `batch` places of a partial shuffle.
        std::vector<at::Tensor> xs, ys;
        for (int64_t k = 0; k < batch; ++k) {
          std::uniform_int_distribution<int64_t> pick(k, samples - 1);
          std::swap(order[size_t(k)], order[size_t(pick(rng))]);
          xs.push_back(qStream.get(order[size_t(k)]));
          ys.push_back(fpStream.get(order[size_t(k)]));
        }
        const at::Tensor x = at::stack(xs).to(device), y = at::stack(ys).to(device);
        double lossValue = 0.0;
        {
          at::AutoGradMode enableGrad(true);
          for (ActiveLayer &l : active)
            l.linear->weight = l.learn->weight();
          const at::Tensor loss = reconstructionLoss(model_.runBlock(j, x), y);
          lossValue = loss.item<double>();
          if (!std::isfinite(lossValue))
            throwNonFinite(j, it, active, "loss is not finite");
          adam.zeroGrad();
          loss.backward();
        }
        const double pi = 3.14159265358979323846;
        adam.step(options_.lr * 0.5 * (1.0 + std::cos(pi * double(it) / double(options_.iters))));
        for (const ActiveLayer &l : active)
          for (const auto &[name, p] : l.learn->parameters())
            if (!allFinite(p))
              throwNonFinite(j, it, active, "parameter update is not finite");
        out.curve.push_back(lossValue);
        if (observer)
          observer->iterationLoss(int(j), int(it), lossValue);
      }
      out.trainSeconds = secondsSince(trainStart);
      out.iterations = options_.iters;

      at::NoGradGuard noGrad;
      for (ActiveLayer &l : active) {
        l.linear->weight = placeWeight(options_.arena, l.learn->weight().detach().contiguous());
        if (!allFinite(l.linear->weight))
          throw Error(blockName(j) + ", layer " + l.role +
                      ": final quantized weight is not finite");
      }
    }
    // The quantized stream moves on through the finished block.
    const auto finalStart = Clock::now();
    out.finalLoss = propagate(qStream, j, &fpStream, true);
    if (heldQ)
      out.heldoutFinalLoss = propagate(*heldQ, j, heldFp.get(), true);
    const double finalSeconds = secondsSince(finalStart);
    if (active.empty()) {
      out.initialLoss = out.finalLoss;
      out.heldoutInitialLoss = out.heldoutFinalLoss;
    }
    restore.armed = false;
    out.seconds = secondsSince(blockStart);
    for (const ActiveLayer &l : active) {
      LayerOutcome lo{l.role, l.learn->parameterCount(), l.fpWeight, l.linear->weight, {}};
      for (auto &[name, t] : l.learn->checkpointExtras())
        lo.extras.emplace_back(name, t.detach().to(at::kCPU, at::kFloat).contiguous());
      out.layers.push_back(std::move(lo));
    }

    const auto checkpointStart = Clock::now();
    if (!ckDir.empty()) {
      std::string bytes;
      for (const LayerOutcome &l : out.layers) {
        const at::Tensor w = l.weight.to(at::kCPU, at::kFloat).contiguous();
        bytes.append(static_cast<const char *>(w.data_ptr()), size_t(w.numel()) * 4);
        for (const auto &extra : l.extras) // already float32, CPU, contiguous
          bytes.append(static_cast<const char *>(extra.second.data_ptr()),
                       size_t(extra.second.numel()) * 4);
      }
      writeFileAtomically(blockFile(ckDir, j), bytes);
      state["blocks"].push_back(blockRecord(out));
      writeFileAtomically(statePath, state.dump());
    }
    if (observer) {
      char timing[256];
      std::snprintf(timing, sizeof timing,
                    "block %lld: %.2f s (targets %.2f, initial loss %.2f, %lld iterations %.2f, "
                    "propagation %.2f, checkpoint %.2f)",
                    static_cast<long long>(j), secondsSince(blockStart), targetSeconds,
                    initialSeconds, static_cast<long long>(out.iterations), out.trainSeconds,
                    finalSeconds, secondsSince(checkpointStart));
      observer->log(LogLevel::Debug, timing);
      if (out.heldoutInitialLoss && out.heldoutFinalLoss)
        observer->blockHeldOut(int(j), *out.heldoutInitialLoss, *out.heldoutFinalLoss);
      observer->blockFinished(int(j), out.initialLoss, out.finalLoss, out.seconds);
    }
    if (onBlock)
      onBlock(out);
    for (LayerOutcome &l : out.layers) {
      l.fpWeight = l.weight = at::Tensor();
      l.extras.clear();
    }
    summary.blocks.push_back(std::move(out));
    releaseFreeMemory();
  }
  if (!ckDir.empty() && !options_.keepCheckpoint) {
    std::error_code ec;
    fs::remove_all(ckDir, ec);
  }
  return summary;
}

} // namespace lrq::recon
