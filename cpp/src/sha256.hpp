#pragma once

#include <cstdint>
#include <string>

namespace textcam::detail {

// Lowercase hex sha256 of at most the first `limit` bytes of `path` (OpenSSL EVP).
std::string sha256_file(const std::string& path, int64_t limit);

}  // namespace textcam::detail
