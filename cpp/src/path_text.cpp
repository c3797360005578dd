#include "path_text.hpp"

#include <vector>

namespace textcam::detail {

std::string python_path(const std::string& path) {
  if (path.empty()) return ".";
  // pathlib on POSIX keeps exactly two leading slashes; one, or three and more, become one.
  std::string root;
  if (path[0] == '/') {
    root = (path.size() >= 2 && path[1] == '/' && (path.size() == 2 || path[2] != '/')) ? "//" : "/";
  }
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    std::string part = path.substr(start, end - start);
    if (!part.empty() && part != ".") parts.push_back(part);
    start = end + 1;
  }
  std::string out = root;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i != 0) out += '/';
    out += parts[i];
  }
  return out.empty() ? "." : out;
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (!name.empty() && name[0] == '/') return python_path(name);
  const std::string base = python_path(dir);
  if (base == ".") return python_path(name);
  if (base.back() == '/') return python_path(base + name);
  return python_path(base + "/" + name);
}

std::string with_commas(long long value) {
  const bool negative = value < 0;
  // Work on the unsigned magnitude so that LLONG_MIN does not overflow.
  unsigned long long magnitude =
      negative ? 0ULL - static_cast<unsigned long long>(value) : static_cast<unsigned long long>(value);
  std::string digits = std::to_string(magnitude);
  std::string out;
  const size_t n = digits.size();
  for (size_t i = 0; i < n; ++i) {
    if (i != 0 && (n - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return negative ? "-" + out : out;
}

}  // namespace textcam::detail
