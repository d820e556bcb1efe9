#include "core/recon/hidden_state_store.h"

#include <filesystem>
#include <fstream>
#include <system_error>

#include "core/common/error.h"
#include "core/common/file_write.h"

namespace lrq::recon {

namespace fs = std::filesystem;

HiddenStateStore::HiddenStateStore(std::string name, int64_t samples,
                                   std::vector<int64_t> sampleShape, at::ScalarType dtype,
                                   int64_t memoryBudgetBytes, std::string spillDir)
    : name_(std::move(name)), samples_(samples), shape_(std::move(sampleShape)), dtype_(dtype),
      spillDir_(std::move(spillDir)) {
  int64_t elements = 1;
  for (int64_t d : shape_)
    elements *= d;
  sampleBytes_ = elements * int64_t(c10::elementSize(dtype_));
  memorySlots_ = sampleBytes_ > 0
                     ? std::min(samples_, std::max<int64_t>(0, memoryBudgetBytes) / sampleBytes_)
                     : samples_;
  if (memorySlots_ < samples_) {
    if (spillDir_.empty())
      throw Error("hidden-state cache: " + std::to_string(samples_ - memorySlots_) +
                  " samples exceed the memory budget and there is no work directory to spill to");
    std::error_code ec;
    fs::create_directories(spillDir_, ec);
    if (ec)
      throw FileError(spillDir_, "cannot create the spill directory: " + ec.message());
  }
  memory_.resize(size_t(memorySlots_));
  written_.assign(size_t(samples_), false);
}

HiddenStateStore::~HiddenStateStore() {
  for (int64_t i = memorySlots_; i < samples_; ++i) {
    std::error_code ec;
    if (written_[size_t(i)])
      fs::remove(slotPath(i), ec);
  }
}

std::string HiddenStateStore::slotPath(int64_t i) const {
  return (fs::path(spillDir_) / (name_ + "_" + std::to_string(i) + ".bin")).string();
}

at::Tensor HiddenStateStore::get(int64_t i) const {
  if (i < 0 || i >= samples_ || !written_[size_t(i)])
    throw Error("hidden-state cache " + name_ + ": slot " + std::to_string(i) + " is empty");
  if (i < memorySlots_)
    return memory_[size_t(i)];
  const std::string path = slotPath(i);
  std::ifstream in(path, std::ios::binary);
  at::Tensor t = at::empty(shape_, at::TensorOptions().dtype(dtype_));
  if (!in.read(static_cast<char *>(t.data_ptr()), std::streamsize(sampleBytes_)))
    throw FileError(path, "cannot read the spilled hidden states");
  return t;
}

void HiddenStateStore::set(int64_t i, const at::Tensor &t) {
  if (i < 0 || i >= samples_)
    throw Error("hidden-state cache " + name_ + ": slot " + std::to_string(i) + " out of range");
  at::Tensor c = t.detach().to(at::kCPU, dtype_).contiguous().reshape(shape_);
  if (c.numel() * int64_t(c10::elementSize(dtype_)) != sampleBytes_)
    throw Error("hidden-state cache " + name_ + ": sample of the wrong size");
  if (i < memorySlots_) {
    // A private copy: callers may reuse or modify their tensor.
    memory_[size_t(i)] = c.data_ptr() == t.data_ptr() ? c.clone() : c;
  } else {
    // A failed write (a full disk) removes the slot's file: the slot is empty
    // again, never half written.
    written_[size_t(i)] = false;
    try {
      writeFileOrRemove(slotPath(i), c.data_ptr(), size_t(sampleBytes_));
    } catch (const FileError &e) {
      throw FileError(e.path(), "cannot spill hidden states: " + e.problem());
    }
  }
  written_[size_t(i)] = true;
}

} // namespace lrq::recon
