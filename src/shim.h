// What the C++ shims share: C++ exceptions become malloc'd messages that the Rust side frees.
#pragma once

#include <cstdlib>
#include <cstring>
#include <string>

namespace bmf {
inline char* copy_message(const std::string& message) {
  char* out = static_cast<char*>(std::malloc(message.size() + 1));
  if (out != nullptr) std::memcpy(out, message.c_str(), message.size() + 1);
  return out;
}
}  // namespace bmf
