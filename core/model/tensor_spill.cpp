#include "core/model/tensor_spill.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "core/common/error.h"

namespace lrq {
namespace {

std::string errnoText() {
  return std::strerror(errno);
}

int anonymousFile(const std::string &dir) {
#ifdef O_TMPFILE
  const int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd >= 0)
    return fd;
#endif
  // File systems without O_TMPFILE: a named file, unlinked at once.
  std::string name = dir + "/.lrq-spill-XXXXXX";
  const int named = ::mkostemp(name.data(), O_CLOEXEC);
  if (named < 0)
    throw FileError(dir, "cannot make a spill file: " + errnoText());
  ::unlink(name.c_str());
  return named;
}

} // namespace

TensorSpill::TensorSpill(const std::string &dir) : fd_(anonymousFile(dir)), dir_(dir) {}

TensorSpill::~TensorSpill() {
  if (fd_ >= 0)
    ::close(fd_);
}

size_t TensorSpill::put(const at::Tensor &t) {
  if (!t.defined() || !t.device().is_cpu())
    throw Error("internal error: only defined CPU tensors can be spilled");
  const at::Tensor c = t.contiguous();
  Entry e;
  e.offset = end_;
  e.nbytes = int64_t(c.numel()) * int64_t(c.element_size());
  e.sizes = c.sizes().vec();
  e.dtype = c.scalar_type();
  const char *p = static_cast<const char *>(c.data_ptr());
  int64_t done = 0;
  while (done < e.nbytes) {
    const ssize_t n = ::pwrite(fd_, p + done, size_t(e.nbytes - done), off_t(e.offset + done));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      const std::string why = n < 0 ? errnoText() : std::string("nothing written");
      // end_ stays put: the next put writes over what this one left.
      throw FileError(dir_, "cannot set " + std::to_string(e.nbytes) +
                                " bytes aside in a spill file here: " + why);
    }
    done += n;
  }
  end_ += e.nbytes;
  entries_.push_back(std::move(e));
  return entries_.size() - 1;
}

at::Tensor TensorSpill::get(size_t handle) const {
  return getInto(handle, at::Tensor());
}

at::Tensor TensorSpill::getInto(size_t handle, at::Tensor buffer) const {
  if (handle >= entries_.size())
    throw Error("internal error: no spilled tensor " + std::to_string(handle));
  const Entry &e = entries_[handle];
  if (!buffer.defined() || !buffer.device().is_cpu() || !buffer.is_contiguous() ||
      buffer.scalar_type() != e.dtype || buffer.sizes() != at::IntArrayRef(e.sizes))
    buffer = at::empty(e.sizes, at::TensorOptions().dtype(e.dtype));
  char *p = static_cast<char *>(buffer.data_ptr());
  int64_t done = 0;
  while (done < e.nbytes) {
    const ssize_t n = ::pread(fd_, p + done, size_t(e.nbytes - done), off_t(e.offset + done));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      throw FileError(dir_, "cannot read back a spilled tensor: " +
                                (n < 0 ? errnoText() : std::string("the spill file is short")));
    done += n;
  }
  return buffer;
}

} // namespace lrq
