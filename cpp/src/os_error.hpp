// The text std::strerror gives for an errno value, without its shared buffer: std::strerror is
// not thread-safe, and bundle files and images are read on several threads at once.
#pragma once

#include <string>
#include <system_error>

namespace textcam::detail {

inline std::string errno_text(int code) { return std::generic_category().message(code); }

}  // namespace textcam::detail
