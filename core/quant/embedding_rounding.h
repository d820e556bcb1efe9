#pragma once
// The token embedding and LM head of methods that quantize only block linears
// their own way (GPTQ, LQER / L²QER, the block-wise reconstructions): they have
// no inputs to compensate an embedding against (it is a lookup), so they round
// it to nearest, as RTN does. Internal to core/ (includes ATen).
#include "core/quant/method.h"

namespace lrq::quant {

// When ctx.scheme selects them, rounds the token embedding ("embeddings") and
// the LM head ("lm_head") to nearest on the scheme's grid, places each in
// ctx.arena, and adds its grid and error to report (and tells the observer).
// A tied head selected with the embeddings stays tied to the rounded
// embeddings. Throws lrq::Error naming the tensor when the grid does not fit.
void roundEmbeddingsAndHead(MethodContext &ctx, MethodReport &report);

} // namespace lrq::quant
