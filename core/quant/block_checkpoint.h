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

// tokens [B, T] -> the last block's output [B, T, hidden] (what
// DecoderModel::head takes), differentiable. `anchor` is a tensor that
// requires grad (e.g. a trained parameter): it makes each block's node be
// recorded when the block's input itself needs no gradient (the first block
// recomputed); it receives no gradient through this path. Blocks before
// firstTrained hold nothing that is trained: they run once, recording nothing,
// and are not run again. Blocks must compute the same bits when run twice (no
// state changed by a forward).
at::Tensor hiddenRecomputingBlocks(const DecoderModel &model, const at::Tensor &tokens,
                                   const at::Tensor &anchor, int64_t firstTrained = 0);

// The mean next-token loss (nats per predicted position) of tokens [B, T]
// given the last block's output hidden [B, T, hidden], and its gradient sent
// back through hidden's graph (unless the loss is not finite: then nothing is
// sent). The head and the loss run on at most rowsPerChunk positions at a
// time, each chunk's logits, log-probabilities and their gradients freed
// before the next: a [B x T, vocab] block of each is never held (at 512
// tokens and a 49k vocabulary, 100 MB apiece).
double nextTokenLossBackward(const DecoderModel &model, const at::Tensor &hidden,
                             const at::Tensor &tokens, int64_t rowsPerChunk = 128);

// True on this thread while a block runs again inside its backward: its
// layers' backwards follow at once, block by block, so a layer may keep what
// it would otherwise derive twice (LR-QAT keeps Ŵ and its codes).
bool recomputingForBackward();

} // namespace lrq::quant
