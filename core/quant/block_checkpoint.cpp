// Block-wise recomputation for training; see block_checkpoint.h.
#include "core/quant/block_checkpoint.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>

namespace lrq::quant {

namespace {

thread_local bool recomputing = false;

class RecomputedBlock : public torch::autograd::Function<RecomputedBlock> {
public:
  // Only the input is kept. The block runs as in a recording forward (the
  // decoder's no-graph path computes in place, which rounds differently in a
  // few kernels), on a detached input, and whatever graph its trained layers
  // record is dropped with the detached output.
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &hidden,
                            const at::Tensor &anchor, int64_t modelPointer, int64_t block) {
    (void)anchor;
    const auto &model = *reinterpret_cast<const DecoderModel *>(modelPointer);
    ctx->save_for_backward({hidden});
    ctx->saved_data["model"] = modelPointer;
    ctx->saved_data["block"] = block;
    at::AutoGradMode recording(true);
    return model.runBlock(block, hidden.detach()).detach();
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list gradOutputs) {
    const auto &model = *reinterpret_cast<const DecoderModel *>(ctx->saved_data["model"].toInt());
    const int64_t block = ctx->saved_data["block"].toInt();
    at::Tensor x = ctx->get_saved_variables()[0].detach();
    const bool inputGrad = ctx->needs_input_grad(0);
    if (inputGrad)
      x.requires_grad_(true);
    at::Tensor y;
    {
      at::AutoGradMode recording(true);
      struct Recomputing { // the flag is down again however the block ends
        Recomputing() { recomputing = true; }
        ~Recomputing() { recomputing = false; }
      } flag;
      y = model.runBlock(block, x);
    }
    // The block's trained layers take their gradients in their own backwards
    // (or as leaves' .grad); the input's comes back to the outer graph.
    if (y.requires_grad())
      torch::autograd::backward({y}, {gradOutputs[0]});
    return {inputGrad ? x.grad() : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

} // namespace

bool recomputingForBackward() {
  return recomputing;
}

at::Tensor hiddenRecomputingBlocks(const DecoderModel &model, const at::Tensor &tokens,
                                   const at::Tensor &anchor, int64_t firstTrained) {
  at::Tensor h = model.embed(tokens);
  int64_t b = 0;
  {
    // The recording path, as a recomputed block's forward runs it (same bits);
    // nothing here needs a gradient, so nothing is recorded.
    at::AutoGradMode recording(true);
    for (; b < std::min(firstTrained, model.numBlocks()); ++b)
      h = model.runBlock(b, h);
  }
  const auto modelPointer = reinterpret_cast<int64_t>(&model);
  for (; b < model.numBlocks(); ++b)
    h = RecomputedBlock::apply(h, anchor, modelPointer, b);
  return h;
}

double nextTokenLossBackward(const DecoderModel &model, const at::Tensor &hidden,
                             const at::Tensor &tokens, int64_t rowsPerChunk) {
  const int64_t T = tokens.size(1);
  if (T < 2)
    return 0.0;
  // Each chunk runs on rows cut from the graph; the gradients of all of them
  // then go back through the blocks at once.
  const at::Tensor rows = hidden.narrow(1, 0, T - 1).reshape({-1, hidden.size(-1)});
  const at::Tensor targets = tokens.narrow(1, 1, T - 1).reshape({-1});
  const int64_t n = rows.size(0);
  const int64_t chunk = std::max<int64_t>(1, rowsPerChunk);
  double loss = 0.0;
  at::Tensor rowsGrad = at::zeros_like(rows);
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t len = std::min(chunk, n - start);
    const at::Tensor part = rows.narrow(0, start, len).detach().requires_grad_(true);
    const at::Tensor logits = model.head(part).to(at::kFloat);
    const at::Tensor sum = at::nll_loss(at::log_softmax(logits, -1), targets.narrow(0, start, len),
                                        {}, at::Reduction::Sum);
    const at::Tensor mean = sum / double(n);
    loss += mean.item<double>();
    if (!std::isfinite(loss))
      return loss; // nothing goes back: the caller stops the step
    mean.backward();
    rowsGrad.narrow(0, start, len).copy_(part.grad());
  }
  rows.backward(rowsGrad);
  return loss;
}

} // namespace lrq::quant
