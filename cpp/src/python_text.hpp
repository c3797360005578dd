// Text written the way Python writes it, so error lines match the Python runtime's word for word:
// paths as pathlib prints them ("a/b/" -> "a/b", "./a" -> "a", "a//b" -> "a/b"), integers with
// thousands separators ("{:,}"), and repr() of strings, floats and JSON values.
#pragma once

#include <cstddef>
#include <string>

#include <nlohmann/json.hpp>

namespace textcam::detail {

std::string python_path(const std::string& path);
// python_path(dir) + "/" + name, as Path(dir) / name prints.
std::string join_path(const std::string& dir, const std::string& name);
// Python's "{:,}" for integers: 1234567 -> "1,234,567".
std::string with_commas(long long value);

// repr() of a str: 'text', "it's", '\n' escaped, non-printable code points as \x.., \u...
std::string python_str_repr(const std::string& text);
// repr() of a Python float: 0.1, 1e-05, 1e+16, inf.
std::string python_float_repr(double value);
// repr() of the value Python's json would have built: 'text', ['a', 'b'], {'k': 1.0}, None, True.
std::string python_repr(const nlohmann::ordered_json& value);
std::string python_repr(const nlohmann::json& value);
// str() of it (strings unquoted, the rest as repr).
std::string python_str(const nlohmann::ordered_json& value);
// Number of Unicode code points in UTF-8 (or WTF-8) text, as Python's len() counts them.
size_t python_len(const std::string& text);

// UTF-8 (or WTF-8: lone surrogates kept) text to code points and back.
std::u32string decode_wtf8(const std::string& bytes);
void append_utf8(std::string& out, char32_t cp);

}  // namespace textcam::detail
