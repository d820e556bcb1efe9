#include "core/quant/embedding_rounding.h"

#include "core/common/error.h"

namespace lrq::quant {

void roundEmbeddingsAndHead(MethodContext &ctx, MethodReport &report) {
  ModelWeights &w = ctx.model.weights();
  const LayerSelection &sel = ctx.scheme.layers;
  const bool tied =
      w.lmHead.defined() && w.tokenEmbedding.defined() && w.lmHead.is_same(w.tokenEmbedding);
  at::NoGradGuard noGrad;
  auto round = [&](at::Tensor &t, const std::string &name) {
    const GridSpec &grid = ctx.scheme.weightFor(t.size(-1));
    try {
      checkWeightForGrid(t, grid);
    } catch (const Error &e) {
      throw Error(name + ": " + e.what());
    }
    const at::Tensor original = t.detach().to(at::kFloat);
    const GridParams params = computeGridParams(original, grid);
    const at::Tensor q = fakeQuantizeWeight(original, params, grid).contiguous();
    report.grids[gridKey(ctx.model.config(), -1, name)] = params;
    LayerErrorStats s = weightErrorStats(original, q);
    s.layer = name;
    report.layers.push_back({s, 0});
    reportLayer(ctx.observer, s);
    t = placeWeight(ctx.arena, q.to(t.scalar_type()).contiguous());
  };
  if (sel.embeddings && w.tokenEmbedding.defined()) {
    round(w.tokenEmbedding, "embeddings");
    if (tied && sel.lmHead)
      w.lmHead = w.tokenEmbedding;
  }
  if (sel.lmHead && w.lmHead.defined() && !(tied && sel.embeddings))
    round(w.lmHead, "lm_head");
}

} // namespace lrq::quant
