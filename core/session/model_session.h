#pragma once
// The engine's light public face: no LibTorch types, so the desktop app and
// the command line include it without paying for ATen's headers.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/common/progress.h"

namespace lrq {

struct TensorSummary {
  std::string name;       // HF name
  std::string sourceName; // name in the file
  std::string dtype;      // storage type in the file ("Q4_1", "F32", ...)
  std::vector<int64_t> shape;
  int64_t numel = 0;
};

struct LinearSummary {
  std::string role;   // "q_proj", "k_proj", ..., "down_proj" (OPT: "fc1", "fc2")
  std::string tensor; // HF tensor name of its weight
  int64_t outFeatures = 0;
  int64_t inFeatures = 0;
  std::string dtype;
  int64_t parameters = 0;
};

struct BlockSummary {
  int index = 0;
  std::vector<LinearSummary> linears;
  int64_t parameters = 0; // all tensors of the block (norms included)
};

// What an lrq export says of itself (lrq_metadata.json of an HF export, the
// header of a packed file); empty for any other model.
struct QuantizationInfo {
  std::string kind;              // "hf-directory" or "packed"
  std::string method;            // "lrq"
  std::string scheme;            // the scheme's name ("W3A16-g128", "custom")
  std::string schemeDescription; // "W3A16-g128: W3 asym g128"
  std::string runId;             // the run that made it
  std::string source;            // the model it was quantized from
  std::string reference;         // how that model's full-precision reference was obtained
  bool present() const { return !method.empty(); }
};

struct ModelSummary {
  std::string path;
  std::string format;       // "gguf" / "safetensors"
  std::string architecture; // "LlamaForCausalLM"
  std::string baselineNote; // e.g. "dequantized from Q4_1"; "" when the file is float
  int64_t parameters = 0;   // unique parameters (tied embeddings counted once)
  int64_t numLayers = 0, hiddenSize = 0, intermediateSize = 0, numHeads = 0, numKvHeads = 0,
          headDim = 0, vocabSize = 0, maxPositions = 0;
  double ropeTheta = 0;
  bool tieEmbeddings = false;
  bool hasTokenizer = false;
  std::vector<BlockSummary> blocks;
  std::vector<TensorSummary> tensors; // every tensor, file order
  QuantizationInfo quantization;
};

struct TensorStatistics {
  int64_t numel = 0;
  double min = 0, max = 0, mean = 0, std = 0, absMax = 0;
  double kurtosis = 0; // excess kurtosis: outlier indicator
};

struct Histogram {
  double lo = 0, hi = 0;      // range of the bins
  std::vector<double> counts; // equal-width bins over [lo, hi]
};

// Which positions of each window perplexity scores.
enum class ScoredPositions {
  All,       // every prediction in the window (the project's perplexity)
  SecondHalf // llama.cpp's llama-perplexity: positions seqLen/2 on; BOS starts each window
             // when the tokenizer adds BOS. Same figures as that tool, on the same tokens.
};

struct PerplexityReport {
  double perplexity = 0;
  double meanNll = 0;
  int64_t tokens = 0;
  int64_t windows = 0;
  int64_t seqLen = 0;
  int64_t firstScored = 0;
  double seconds = 0;
  double tokensPerSecond = 0;
};

struct ComparisonReport {
  PerplexityReport model; // this model on the windows
  double referencePerplexity = 0;
  double meanKl = 0; // KL(P_reference || P_model) per predicted token, nats
  double maxKl = 0;
  double top1Agreement = 0; // fraction of positions whose argmax agree
};

struct GenerationOptions {
  int64_t maxNewTokens = 64;
  double temperature = 0.0;
  int64_t topK = 0;
  double topP = 1.0;
  uint64_t seed = 0;
};

struct RuntimeOptions {
  int threads = 0;            // 0: all hardware threads
  std::string device = "cpu"; // "cpu" or "cuda"
};

// Applies threads and device choice; throws lrq::Error for an unavailable
// device ("cuda requested but this LibTorch build has no CUDA" etc.).
void applyRuntimeOptions(const RuntimeOptions &options);
// Threads LibTorch uses for intra-op parallelism now.
int runtimeThreads();
// Lowers the scheduling priority (nice +5) of the calling thread and of every
// intra-op worker thread, so that an interactive front end's own thread wins
// the CPU over long computations started from it. Call it from a background
// thread, never from the UI thread. Linux only; elsewhere (or when refused)
// it does nothing. A priority once lowered stays lowered.
void lowerComputePriority();

class ModelSession {
public:
  // pathOrDefault: a .gguf/.safetensors file, an HF directory, or "default"
  // (the bundled SmolLM2-135M-Instruct, fetched into the cache on first use).
  static std::unique_ptr<ModelSession> open(const std::string &pathOrDefault,
                                            ProgressObserver *observer = nullptr,
                                            const CancelToken *cancel = nullptr);
  // Like open(), but every block linear goes to an unlinked file in dir as it
  // loads, so that the model is never whole in memory: each is read back for
  // one pass over a group of windows (block by block) when perplexity() or
  // compare() runs, with the same figures to the bit. Every other use throws
  // lrq::Error, as after setBlocksAside. On a GPU device the session loads
  // whole; where dir refuses the file or the bytes, what is not yet on disk
  // stays in memory (a warning in the log says so). A session set aside reads
  // its blocks into buffers of its own during a pass: one pass at a time (no
  // concurrent perplexity() / compare() calls on it).
  static std::unique_ptr<ModelSession> openBlocksAside(const std::string &pathOrDefault,
                                                       const std::string &dir,
                                                       ProgressObserver *observer = nullptr,
                                                       const CancelToken *cancel = nullptr);
  ~ModelSession();
  ModelSession(const ModelSession &) = delete;
  ModelSession &operator=(const ModelSession &) = delete;

  const ModelSummary &summary() const;

  // Full-precision tensor analysis (weights as used by the model, float32).
  TensorStatistics statistics(const std::string &tensor) const;
  Histogram histogram(const std::string &tensor, int bins) const;
  // Singular values, descending. 1-D tensors: throws lrq::Error.
  std::vector<double> singularValues(const std::string &tensor) const;

  std::vector<int32_t> tokenize(const std::string &text, bool addBos = true) const;
  std::string detokenize(const std::vector<int32_t> &ids) const;

  // Perplexity over non-overlapping windows of seqLen tokens of text
  // (shared/ALGORITHMS.md). maxWindows 0: all.
  PerplexityReport perplexity(const std::string &text, int64_t seqLen,
                              ProgressObserver *observer = nullptr,
                              const CancelToken *cancel = nullptr, int64_t maxWindows = 0,
                              ScoredPositions scored = ScoredPositions::All) const;

  // Perplexity of this model plus KL divergence and top-1 agreement against a
  // reference model (same tokenizer and vocabulary) on the same windows.
  ComparisonReport compare(const ModelSession &reference, const std::string &text, int64_t seqLen,
                           ProgressObserver *observer = nullptr,
                           const CancelToken *cancel = nullptr, int64_t maxWindows = 0) const;

  // Moves every block linear's weights to an unlinked file in dir (read back
  // bit for bit, one block at a time, for a pass of perplexity() or compare(),
  // on either side), so that a comparison holds one model and the reference's
  // embeddings, norms and head. After it the session serves only for those
  // two: every other use throws lrq::Error. On a session already set aside
  // (by this or openBlocksAside, which a full disk may have cut short) it sets
  // nothing more aside and returns what is on disk. Returns the bytes set aside
  // (0, the session left whole, when no block weight is on the CPU).
  // Throws lrq::FileError when dir refuses the file or the bytes (the weights
  // not yet written stay in memory, and the session stays usable as before).
  int64_t setBlocksAside(const std::string &dir);

  // Continues prompt; onText receives decoded text pieces as they are produced.
  std::string generate(const std::string &prompt, const GenerationOptions &options,
                       const std::function<void(const std::string &)> &onText = {},
                       const CancelToken *cancel = nullptr) const;

private:
  friend struct ModelSessionAccess; // core's own jobs (model_session_access.h)
  struct Impl;
  // asideDir empty: whole.
  static std::unique_ptr<ModelSession> openWith(const std::string &pathOrDefault,
                                                const std::string &asideDir,
                                                ProgressObserver *observer,
                                                const CancelToken *cancel);
  explicit ModelSession(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

} // namespace lrq
