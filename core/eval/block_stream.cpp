#include "core/eval/block_stream.h"

#include <algorithm>

namespace lrq {

int64_t windowsPerGroup(const BlockLoader &loader, int64_t seqLen, int64_t hiddenSize,
                        int64_t streams) {
  const int64_t perWindow = std::max<int64_t>(1, seqLen * hiddenSize * int64_t(sizeof(float)) *
                                                     std::max<int64_t>(1, streams));
  return std::max<int64_t>(1, loader.hiddenBudgetBytes() / perWindow);
}

void SpilledBlockLinears::add(int64_t block, const std::string &role, Linear *linear,
                              size_t handle) {
  entries_[{block, role}] = Entry{linear, handle};
}

std::optional<size_t> SpilledBlockLinears::handleOf(int64_t block, const std::string &role) const {
  const auto it = entries_.find({block, role});
  if (it == entries_.end())
    return std::nullopt;
  return it->second.handle;
}

void SpilledBlockLinears::restoreAll(const std::function<void(Linear &)> &onEach) {
  for (auto &[key, e] : entries_) {
    e.linear->weight = spill_.get(e.handle);
    if (onEach)
      onEach(*e.linear);
  }
  entries_.clear();
}

void SpilledBlockLinears::load(int64_t block) {
  for (auto it = entries_.lower_bound({block, std::string()});
       it != entries_.end() && it->first.first == block; ++it) {
    at::Tensor &buffer = buffers_[it->first.second];
    if (buffer.defined() && buffer.use_count() > 1) // another block still holds it
      buffer = at::Tensor();
    it->second.linear->weight = buffer = spill_.getInto(it->second.handle, buffer);
  }
}

void SpilledBlockLinears::unload(int64_t block) {
  for (auto it = entries_.lower_bound({block, std::string()});
       it != entries_.end() && it->first.first == block; ++it)
    it->second.linear->weight = at::Tensor(); // its values are still in the spill
}

int64_t SpilledBlockLinears::bytesAside() const {
  int64_t bytes = 0;
  for (const auto &[key, e] : entries_)
    bytes += spill_.bytesOf(e.handle);
  return bytes;
}

at::Tensor finalHidden(const DecoderModel &model, const at::Tensor &ids) {
  return model.lastHidden(ids.unsqueeze(0));
}

std::vector<at::Tensor> finalHiddenBlockByBlock(const DecoderModel &model,
                                                const std::vector<at::Tensor> &windowIds,
                                                BlockLoader &loader, const CancelToken *cancel,
                                                const std::function<void(int64_t)> &onBlock) {
  std::vector<at::Tensor> h;
  h.reserve(windowIds.size());
  for (const at::Tensor &ids : windowIds)
    h.push_back(model.embed(ids.unsqueeze(0), 0));
  for (int64_t b = 0; b < model.numBlocks(); ++b) {
    struct Loaded {
      BlockLoader &loader;
      int64_t block;
      ~Loaded() { loader.unload(block); }
    };
    {
      const Loaded loaded{loader, b}; // set before load: a load that fails midway is undone too
      loader.load(b);
      for (at::Tensor &hidden : h) {
        if (cancel)
          cancel->throwIfCancelled();
        hidden = model.runBlock(b, hidden, 0);
      }
    }
    if (onBlock)
      onBlock(b);
  }
  return h;
}

} // namespace lrq
