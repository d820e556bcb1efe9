#pragma once
// Per-sample hidden states of one calibration stream ([T, hidden] each), kept
// in memory up to a byte budget and spilled to files beyond it, so the
// calibration set is bounded by disk rather than RAM. Internal to core/recon.
#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace lrq::recon {

class HiddenStateStore {
public:
  // samples slots of `sampleShape` tensors of `dtype`. The first slots that fit
  // in memoryBudgetBytes stay in memory; the others live in files
  // <spillDir>/<name>_<slot>.bin (spillDir is created when needed; an empty
  // spillDir with slots to spill throws lrq::Error).
  HiddenStateStore(std::string name, int64_t samples, std::vector<int64_t> sampleShape,
                   at::ScalarType dtype, int64_t memoryBudgetBytes, std::string spillDir);
  ~HiddenStateStore(); // removes its spill files
  HiddenStateStore(const HiddenStateStore &) = delete;
  HiddenStateStore &operator=(const HiddenStateStore &) = delete;

  int64_t size() const { return samples_; }
  int64_t inMemory() const { return memorySlots_; }
  int64_t spilled() const { return samples_ - memorySlots_; }

  // Slot i as a CPU tensor of the sample shape. Spilled slots are read back
  // bit for bit. Throws lrq::FileError when a spill file cannot be read.
  at::Tensor get(int64_t i) const;
  // Stores a copy of t (any device; converted to the store's dtype on the CPU).
  void set(int64_t i, const at::Tensor &t);

private:
  std::string slotPath(int64_t i) const;

  std::string name_;
  int64_t samples_;
  std::vector<int64_t> shape_;
  at::ScalarType dtype_;
  int64_t sampleBytes_;
  int64_t memorySlots_;
  std::string spillDir_;
  std::vector<at::Tensor> memory_;
  std::vector<bool> written_;
};

} // namespace lrq::recon
