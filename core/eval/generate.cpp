#include "core/eval/generate.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <limits>
#include <string>

#include "core/common/error.h"

namespace lrq {
namespace {

// Picks the next token from one row of logits [vocab] (float32, CPU).
int64_t pickToken(const at::Tensor &logits, const SamplingOptions &o, at::Generator &gen) {
  if (o.temperature <= 0.0)
    return logits.argmax().item<int64_t>();
  at::Tensor l = logits / o.temperature;
  const double negInf = -std::numeric_limits<double>::infinity();
  if (o.topK > 0 && o.topK < l.size(0)) {
    const at::Tensor kth = std::get<0>(at::topk(l, o.topK)).min();
    l.masked_fill_(l < kth, negInf);
  }
  at::Tensor probs = at::softmax(l, -1);
  if (o.topP < 1.0) {
    // Keep the most probable tokens until their mass reaches topP (the token
    // that crosses it stays, so at least one is always kept).
    auto sorted = at::sort(probs, -1, /*descending=*/true);
    const at::Tensor &sortedProbs = std::get<0>(sorted);
    const at::Tensor &order = std::get<1>(sorted);
    at::Tensor massBefore = sortedProbs.cumsum(-1) - sortedProbs;
    at::Tensor drop = at::zeros_like(probs, at::kBool).scatter_(0, order, massBefore >= o.topP);
    probs.masked_fill_(drop, 0.0);
  }
  return at::multinomial(probs, 1, false, gen).item<int64_t>();
}

} // namespace

std::vector<int32_t> generateTokens(const DecoderModel &model, const std::vector<int32_t> &prompt,
                                    const SamplingOptions &options,
                                    const std::function<void(int32_t)> &onToken,
                                    const CancelToken *cancel) {
  if (prompt.empty())
    throw Error("generation: the prompt has no tokens");
  c10::InferenceMode guard;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);

  int64_t limit = options.maxNewTokens;
  const int64_t promptLen = int64_t(prompt.size());
  if (model.config().arch == Architecture::Opt) {
    // Learned positions end; generation stops there instead of failing.
    const int64_t room = model.weights().positionEmbedding.size(0) - 2 - promptLen;
    if (room < 0)
      throw Error("generation: the prompt of " + std::to_string(promptLen) +
                  " tokens is longer than the model's " +
                  std::to_string(model.weights().positionEmbedding.size(0) - 2) + " positions");
    limit = std::min(limit, room);
  } else if (model.config().maxPositions > 0) {
    // Past the context length the rotary positions are ones the model never
    // saw: stop there, as for OPT (evaluation refuses longer windows).
    const int64_t context = model.config().maxPositions;
    if (promptLen > context)
      throw Error("generation: the prompt of " + std::to_string(promptLen) +
                  " tokens is longer than the model's context of " + std::to_string(context) +
                  " tokens");
    limit = std::min(limit, context - promptLen);
  }

  KvCache cache(model.numBlocks());
  auto runStep = [&](const at::Tensor &ids) {
    const int64_t start = cache.length();
    at::Tensor h = model.embed(ids, start);
    for (int64_t b = 0; b < model.numBlocks(); ++b)
      h = model.runBlock(b, h, start, &cache);
    // Only the last position's distribution is needed.
    return model.head(h.narrow(1, h.size(1) - 1, 1)).reshape({-1}).to(at::kCPU, at::kFloat);
  };

  std::vector<int64_t> promptIds(prompt.begin(), prompt.end());
  at::Tensor logits = runStep(at::tensor(promptIds, at::kLong).view({1, promptLen}));
  std::vector<int32_t> out;
  for (int64_t i = 0; i < limit; ++i) {
    if (cancel)
      cancel->throwIfCancelled();
    const int64_t next = pickToken(logits, options, gen);
    if (options.eosId >= 0 && next == options.eosId)
      break;
    out.push_back(int32_t(next));
    if (onToken)
      onToken(int32_t(next));
    if (i + 1 < limit)
      logits = runStep(at::full({1, 1}, next, at::kLong));
  }
  return out;
}

} // namespace lrq
