// Paths written the way Python's pathlib writes them, so error lines match the Python runtime's
// word for word ("a/b/" -> "a/b", "./a" -> "a", "a//b" -> "a/b").
#pragma once

#include <string>

namespace textcam::detail {

std::string python_path(const std::string& path);
// python_path(dir) + "/" + name, as Path(dir) / name prints.
std::string join_path(const std::string& dir, const std::string& name);
// Python's "{:,}" for integers: 1234567 -> "1,234,567".
std::string with_commas(long long value);

}  // namespace textcam::detail
