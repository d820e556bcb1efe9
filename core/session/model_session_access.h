#pragma once
// Core-internal access to an open session's loaded files and decoder, so that
// jobs (quantization) run on the model the user already has open instead of
// loading a second copy. Not for front ends: it brings in LibTorch.
#include "core/io/model_loader.h"
#include "core/model/decoder.h"
#include "core/session/model_session.h"

namespace lrq {

struct ModelSessionAccess {
  static const LoadedModel &loaded(const ModelSession &session);
  // The session's full-precision decoder; callers must not modify it.
  static DecoderModel &decoder(const ModelSession &session);
};

} // namespace lrq
