#pragma once
// Tensors set aside on disk while a run has no use for them, and read back
// bit for bit when it does. The file is unlinked as soon as it is made, so
// nothing is left behind however the process ends; the data stays in the
// page cache as long as the kernel likes, never in the process's own memory.
// Internal to core/ (includes ATen).
#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace lrq {

class TensorSpill {
public:
  // An anonymous file in dir. Throws lrq::FileError when none can be made.
  explicit TensorSpill(const std::string &dir);
  ~TensorSpill();
  TensorSpill(const TensorSpill &) = delete;
  TensorSpill &operator=(const TensorSpill &) = delete;

  // Writes a CPU tensor's values (any dtype, any layout) and returns the
  // handle get() takes. Throws lrq::FileError (a full disk names the folder and
  // the bytes), leaving the spill as it was.
  size_t put(const at::Tensor &t);
  // A new contiguous CPU tensor with the values, shape and dtype put.
  at::Tensor get(size_t handle) const;
  // The same values read into buffer when it is a contiguous CPU tensor of
  // that shape and dtype (no allocation, no fresh pages), else into a new one;
  // returns the tensor read into.
  at::Tensor getInto(size_t handle, at::Tensor buffer) const;
  // Bytes written so far.
  int64_t bytes() const { return end_; }
  // Bytes of one tensor put (0 for a handle never returned).
  int64_t bytesOf(size_t handle) const {
    return handle < entries_.size() ? entries_[handle].nbytes : 0;
  }
  const std::string &directory() const { return dir_; }

private:
  struct Entry {
    int64_t offset = 0, nbytes = 0;
    std::vector<int64_t> sizes;
    at::ScalarType dtype = at::kFloat;
  };
  int fd_ = -1;
  std::string dir_;
  std::vector<Entry> entries_;
  int64_t end_ = 0;
};

} // namespace lrq
