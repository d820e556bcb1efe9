#pragma once
// A whole-model forward for training that keeps, per block, only the block's
// input: each block runs without recording its activations, and its backward
// runs the block again, recording, and back-propagates through that copy.
// Memory for activations falls from every block's to one block's, for about one
// more forward per step. The gradients are the ones the recording forward
// gives: the same operations run on the same bits in the same order.
#include <ATen/ATen.h>

#include "core/model/decoder.h"

namespace lrq::quant {

// tokens [B, T] -> logits [B, T, vocab], differentiable. `anchor` is a tensor
// that requires grad (e.g. a trained parameter): it makes each block's node be
// recorded when the block's input itself needs no gradient (the first block
// recomputed); it receives no gradient through this path. Blocks before
// firstTrained hold nothing that is trained: they run once, recording nothing,
// and are not run again. Blocks must compute the same bits when run twice (no
// state changed by a forward).
at::Tensor forwardRecomputingBlocks(const DecoderModel &model, const at::Tensor &tokens,
                                    const at::Tensor &anchor, int64_t firstTrained = 0);

// True on this thread while a block runs again inside its backward: its
// layers' backwards follow at once, block by block, so a layer may keep what
// it would otherwise derive twice (LR-QAT keeps Ŵ and its codes).
bool recomputingForBackward();

} // namespace lrq::quant
