#pragma once
// Evaluation of a model whose block weights are not all in memory: every
// window of a group goes through block 0, then block 1, ..., each block's
// weights brought in once for the group and let go after it. Each window sees
// the same operations on the same shapes as in a window-by-window pass, so the
// figures are the same to the bit.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/common/progress.h"
#include "core/model/decoder.h"
#include "core/model/tensor_spill.h"

namespace lrq {

// Brings a model's block weights in and out (a quantize run's reference with
// the weights its method replaced on disk; a session whose blocks were set
// aside while loading).
class BlockLoader {
public:
  virtual ~BlockLoader() = default;
  virtual void load(int64_t block) = 0;   // before block runs
  virtual void unload(int64_t block) = 0; // after it has run on every window of a group
  // (The passes here load one block at a time.)
  // Bytes of block weights this loader keeps out of memory (0: unknown).
  virtual int64_t bytesAside() const { return 0; }
  // Hidden states a pass may hold at once (windows x seqLen x hidden float32
  // for each model streamed): more windows than fit are taken in groups, each
  // group loading every block again. A quarter of what is aside, at least
  // 64 MiB: groups grow with the model.
  virtual int64_t hiddenBudgetBytes() const {
    return std::max(int64_t(64) << 20, bytesAside() / 4);
  }
};

// Block linears whose weights live in a TensorSpill, their Linear::weight left
// undefined between passes, brought back one block at a time. Each role's
// weight is read into the buffer that role's last load used (the block before
// is done with it by then): a pass allocates nothing and touches no fresh pages.
// Serves one pass at a time.
class SpilledBlockLinears : public BlockLoader {
public:
  explicit SpilledBlockLinears(const TensorSpill &spill) : spill_(spill) {}
  // Block b's linear `role` is now kept in the spill under handle (the caller
  // drops linear->weight).
  void add(int64_t block, const std::string &role, Linear *linear, size_t handle);
  // Its handle, or none where it was not added.
  std::optional<size_t> handleOf(int64_t block, const std::string &role) const;
  void forget(int64_t block, const std::string &role) { entries_.erase({block, role}); }
  // Every linear's weight back for good, each a tensor of its own; onEach(linear)
  // after each; then none is kept.
  void restoreAll(const std::function<void(Linear &)> &onEach = {});
  size_t size() const { return entries_.size(); }

  void load(int64_t block) override;
  void unload(int64_t block) override;
  int64_t bytesAside() const override; // of the linears added

private:
  struct Entry {
    Linear *linear;
    size_t handle;
  };
  const TensorSpill &spill_;
  std::map<std::pair<int64_t, std::string>, Entry> entries_; // by (block, role)
  std::map<std::string, at::Tensor> buffers_;                // by role
};

// Windows of seqLen tokens a group holds within loader's budget for `streams`
// models streamed at once; at least 1.
int64_t windowsPerGroup(const BlockLoader &loader, int64_t seqLen, int64_t hiddenSize,
                        int64_t streams = 1);

// One window ([seqLen] token ids) through every block, all weights in memory:
// the hidden states DecoderModel::head takes.
at::Tensor finalHidden(const DecoderModel &model, const at::Tensor &ids);

// The hidden states after the last block (what DecoderModel::head takes) of
// each window ([seqLen] token ids each), block by block. Cancel is checked
// before every window; onBlock(b) is called once block b has run on every
// window. A block loaded is unloaded again whatever happens.
std::vector<at::Tensor> finalHiddenBlockByBlock(const DecoderModel &model,
                                                const std::vector<at::Tensor> &windowIds,
                                                BlockLoader &loader, const CancelToken *cancel,
                                                const std::function<void(int64_t)> &onBlock = {});

} // namespace lrq
