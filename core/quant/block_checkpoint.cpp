// Block-wise recomputation for training; see block_checkpoint.h.
#include "core/quant/block_checkpoint.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

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

at::Tensor forwardRecomputingBlocks(const DecoderModel &model, const at::Tensor &tokens,
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
  return model.head(h);
}

} // namespace lrq::quant
