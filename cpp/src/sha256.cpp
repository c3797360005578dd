#include "sha256.hpp"

#include <cerrno>
#include <cstdio>
#include <memory>
#include <vector>

#include <openssl/evp.h>

#include "os_error.hpp"
#include "textcam/textcam.hpp"

namespace textcam::detail {

namespace {

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};
struct DigestFree {
  void operator()(EVP_MD_CTX* context) const { EVP_MD_CTX_free(context); }
};

}  // namespace

std::string sha256_file(const std::string& path, int64_t limit) {
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) throw Error(path + ": cannot read it (" + errno_text(errno) + ")");
  std::unique_ptr<EVP_MD_CTX, DigestFree> context(EVP_MD_CTX_new());
  if (!context || EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr) != 1) {
    throw Error(path + ": cannot compute its sha256 (OpenSSL failed)");
  }
  constexpr int64_t kBlock = int64_t{1} << 20;
  std::vector<unsigned char> block(static_cast<size_t>(kBlock));
  int64_t left = limit < 0 ? 0 : limit;
  while (left > 0) {
    const size_t want = static_cast<size_t>(left < kBlock ? left : kBlock);
    const size_t got = std::fread(block.data(), 1, want, file.get());
    if (got == 0) {
      if (std::ferror(file.get())) throw Error(path + ": cannot read it (" + errno_text(errno) + ")");
      break;
    }
    if (EVP_DigestUpdate(context.get(), block.data(), got) != 1) {
      throw Error(path + ": cannot compute its sha256 (OpenSSL failed)");
    }
    left -= static_cast<int64_t>(got);
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(context.get(), digest, &length) != 1) {
    throw Error(path + ": cannot compute its sha256 (OpenSSL failed)");
  }
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(static_cast<size_t>(length) * 2U);
  for (unsigned int i = 0; i < length; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 15];
  }
  return out;
}

}  // namespace textcam::detail
