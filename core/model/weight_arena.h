#pragma once
// One block of memory, reserved before a method starts, that holds the
// quantized weights the method keeps. glibc serves tensors of up to 32 MiB
// from its heap once blocks that large have been freed, so a weight allocated
// between a layer's temporaries keeps their freed pages resident for the rest
// of the run: on the default model RTN's 405 MiB of weights took 655 MiB.
// Copied side by side into this block instead, the weights pin nothing, and
// the temporaries' pages are reused by the next layer or handed back by a trim.
// Internal to core/ (includes ATen).
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

namespace lrq {

class WeightArena {
public:
  // Each slot starts on a 64-byte boundary, as LibTorch's own allocations do,
  // so that kernels whose summation order follows the alignment compute with a
  // placed weight exactly as with the tensor it copies.
  static constexpr int64_t kAlignBytes = 64;

  // Elements a slot for t takes: its own, rounded up to the alignment.
  static int64_t slotElements(const at::Tensor &t) {
    const int64_t unit = std::max<int64_t>(1, kAlignBytes / int64_t(t.element_size()));
    return (t.numel() + unit - 1) / unit * unit;
  }

  WeightArena() = default;
  // Room for `elements` values of options' dtype on options' device (the sum
  // of slotElements over the weights planned for). Pages the weights never
  // reach are never touched, so an oversized block costs address space, not
  // memory.
  WeightArena(int64_t elements, const at::TensorOptions &options)
      : block_(at::empty({elements}, options)) {}

  // A contiguous copy of w inside the block, of w's shape, when w has the
  // block's dtype and device and room is left; w itself otherwise (a weight of
  // another dtype, or more weights than were planned for).
  at::Tensor place(const at::Tensor &w) {
    if (!block_.defined() || w.scalar_type() != block_.scalar_type() ||
        w.device() != block_.device() || slotElements(w) > block_.numel() - offset_)
      return w;
    at::Tensor slot = block_.narrow(0, offset_, w.numel()).view(w.sizes());
    offset_ += slotElements(w);
    slot.copy_(w.detach());
    return slot;
  }

  // Whether t's memory lies in this block.
  bool holds(const at::Tensor &t) const {
    return block_.defined() && t.defined() && t.storage().is_alias_of(block_.storage());
  }

  // Elements handed out so far, alignment padding included.
  int64_t placedElements() const { return offset_; }

private:
  at::Tensor block_;
  int64_t offset_ = 0;
};

// arena->place(w), or w where there is no arena.
inline at::Tensor placeWeight(WeightArena *arena, const at::Tensor &w) {
  return arena ? arena->place(w) : w;
}

} // namespace lrq
