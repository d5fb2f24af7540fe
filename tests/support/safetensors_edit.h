// Rewriting a safetensors file tensor by tensor, for tests that corrupt or convert one (an adapter with a tensor
// dropped, renamed, misshapen or stored in another dtype; a model with one tensor changed).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/files.h"
#include "core/safetensors.h"

namespace qwenq::test {

// Rewrites the safetensors file `path` through `edit(name, view, bytes, writer)`, called once per tensor with a copy
// of its bytes; the edit adds to `writer` what the new file holds (nothing, to drop the tensor).
template <typename Edit>
void rewrite_safetensors(const std::string& path, Edit&& edit) {
  SafetensorsWriter w;
  {
    SafetensorsFile f(path);
    for (const std::string& name : f.names()) {
      const TensorView& v = f.get(name);
      const uint8_t* p = static_cast<const uint8_t*>(v.data);
      edit(name, v, std::vector<uint8_t>(p, p + v.nbytes()), w);
    }
  }
  w.write(path);
}

// The same for `dir`'s adapter_model.safetensors.
template <typename Edit>
void rewrite_adapter_weights(const std::string& dir, Edit&& edit) {
  rewrite_safetensors(path_join(dir, "adapter_model.safetensors"), std::forward<Edit>(edit));
}

}  // namespace qwenq::test
