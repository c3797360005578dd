// manifest.json, read and validated as textcam.runtime.manifest (Manifest.from_dict) and
// textcam.runtime.bundle_files.read_manifest_text do, with the same one-line messages.
//
// JSON is parsed by a port of CPython's json scanner (Modules/_json.c) so that what Python
// accepts, refuses, and says about it carries over: integers vs floats, 1e400 -> inf, lone
// surrogates, the decoder's error texts with their line/column/char positions, "nested too
// deeply" instead of a stack overflow.
#include "manifest.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <set>
#include <utility>

#include "os_error.hpp"
#include "python_text.hpp"
#include "textcam/textcam.hpp"

namespace textcam::detail {

using OJson = nlohmann::ordered_json;

int64_t file_cap(FileKind kind) {
  switch (kind) {
    case FileKind::kModel:
    case FileKind::kFusedGraph:
    case FileKind::kEngine:
    case FileKind::kEngineOnnx:
      return int64_t{1} << 36;
    case FileKind::kSemantics:
      return int64_t{1} << 30;
    case FileKind::kSelftest:
      return int64_t{1} << 28;
  }
  return 0;
}

// ============================================================================================
// UTF-8 as CPython decodes it (errors worded as UnicodeDecodeError words them)
// ============================================================================================

namespace {

std::string hex_byte(unsigned value) {
  char buffer[8];
  std::snprintf(buffer, sizeof buffer, "0x%02x", value & 0xFFU);
  return buffer;
}

std::string decode_error(const std::string& bytes, size_t start, size_t end, const char* reason) {
  std::string where = end == start + 1 ? "byte " + hex_byte(static_cast<unsigned char>(bytes[start])) +
                                             " in position " + std::to_string(start)
                                       : "bytes in position " + std::to_string(start) + "-" + std::to_string(end - 1);
  return "'utf-8' codec can't decode " + where + ": " + reason;
}

bool is_cont(unsigned char c) { return c >= 0x80 && c < 0xC0; }

// Strict UTF-8 (no surrogates, no overlongs) to code points; throws JsonError with Python's text.
std::u32string decode_utf8_strict(const std::string& bytes) {
  std::u32string out;
  out.reserve(bytes.size());
  const size_t n = bytes.size();
  size_t i = 0;
  auto at = [&](size_t k) { return static_cast<unsigned char>(bytes[k]); };
  while (i < n) {
    const unsigned char c = at(i);
    if (c < 0x80) {
      out.push_back(c);
      ++i;
      continue;
    }
    if (c < 0xC2) throw JsonError(decode_error(bytes, i, i + 1, "invalid start byte"));
    if (c < 0xE0) {
      if (n - i < 2) throw JsonError(decode_error(bytes, i, n, "unexpected end of data"));
      if (!is_cont(at(i + 1))) throw JsonError(decode_error(bytes, i, i + 1, "invalid continuation byte"));
      out.push_back((char32_t{c} & 0x1FU) << 6 | (at(i + 1) & 0x3FU));
      i += 2;
      continue;
    }
    if (c < 0xF0) {
      auto bad2 = [&](unsigned char c2) { return !is_cont(c2) || (c2 < 0xA0 ? c == 0xE0 : c == 0xED); };
      if (n - i < 3) {
        if (n - i >= 2 && bad2(at(i + 1))) {
          throw JsonError(decode_error(bytes, i, i + 1, "invalid continuation byte"));
        }
        throw JsonError(decode_error(bytes, i, n, "unexpected end of data"));
      }
      if (bad2(at(i + 1))) throw JsonError(decode_error(bytes, i, i + 1, "invalid continuation byte"));
      if (!is_cont(at(i + 2))) throw JsonError(decode_error(bytes, i, i + 2, "invalid continuation byte"));
      out.push_back((char32_t{c} & 0x0FU) << 12 | char32_t{at(i + 1) & 0x3FU} << 6 | (at(i + 2) & 0x3FU));
      i += 3;
      continue;
    }
    if (c < 0xF5) {
      auto bad2 = [&](unsigned char c2) { return !is_cont(c2) || (c2 < 0x90 ? c == 0xF0 : c == 0xF4); };
      if (n - i < 4) {
        if (n - i >= 2 && bad2(at(i + 1))) {
          throw JsonError(decode_error(bytes, i, i + 1, "invalid continuation byte"));
        }
        if (n - i >= 3 && !is_cont(at(i + 2))) {
          throw JsonError(decode_error(bytes, i, i + 2, "invalid continuation byte"));
        }
        throw JsonError(decode_error(bytes, i, n, "unexpected end of data"));
      }
      if (bad2(at(i + 1))) throw JsonError(decode_error(bytes, i, i + 1, "invalid continuation byte"));
      if (!is_cont(at(i + 2))) throw JsonError(decode_error(bytes, i, i + 2, "invalid continuation byte"));
      if (!is_cont(at(i + 3))) throw JsonError(decode_error(bytes, i, i + 3, "invalid continuation byte"));
      out.push_back((char32_t{c} & 0x07U) << 18 | char32_t{at(i + 1) & 0x3FU} << 12 | char32_t{at(i + 2) & 0x3FU} << 6 |
                    (at(i + 3) & 0x3FU));
      i += 4;
      continue;
    }
    throw JsonError(decode_error(bytes, i, i + 1, "invalid start byte"));
  }
  return out;
}

// Lenient decoding of text this module produced (WTF-8: surrogates allowed).
// ============================================================================================
// CPython's json scanner
// ============================================================================================

class PyJsonParser {
 public:
  PyJsonParser(const std::u32string& text, bool allow_constants, int max_depth)
      : s_(text), allow_constants_(allow_constants), max_depth_(max_depth) {}

  OJson parse() {
    if (!s_.empty() && s_[0] == 0xFEFF) fail("Unexpected UTF-8 BOM (decode using utf-8-sig)", 0);
    size_t idx = skip_ws(0);
    OJson value = scan_once(idx, idx, 0);
    idx = skip_ws(idx);
    if (idx != s_.size()) fail("Extra data", idx);
    return value;
  }

 private:
  const std::u32string& s_;
  bool allow_constants_;
  int max_depth_;

  [[noreturn]] void fail(const std::string& message, size_t pos) const {
    size_t line = 1;
    size_t last_newline = std::string::npos;
    for (size_t i = 0; i < pos && i < s_.size(); ++i) {
      if (s_[i] == U'\n') {
        ++line;
        last_newline = i;
      }
    }
    const size_t column = last_newline == std::string::npos ? pos + 1 : pos - last_newline;
    throw JsonError(message + ": line " + std::to_string(line) + " column " + std::to_string(column) + " (char " +
                    std::to_string(pos) + ")");
  }

  size_t skip_ws(size_t idx) const {
    while (idx < s_.size() && (s_[idx] == U' ' || s_[idx] == U'\t' || s_[idx] == U'\n' || s_[idx] == U'\r')) {
      ++idx;
    }
    return idx;
  }

  bool matches(size_t idx, const char* word) const {
    for (size_t k = 0; word[k] != '\0'; ++k) {
      if (idx + k >= s_.size() || s_[idx + k] != static_cast<char32_t>(word[k])) return false;
    }
    return true;
  }

  OJson constant(const char* name, double value) const {
    if (!allow_constants_) throw JsonError(std::string(name) + " is not valid JSON");
    return OJson(value);
  }

  // A value starting at idx; next is set past it. "Expecting value" (StopIteration) at idx.
  OJson scan_once(size_t idx, size_t& next, int depth) {
    if (idx >= s_.size()) fail("Expecting value", idx);
    const char32_t c = s_[idx];
    switch (c) {
      case U'"':
        return OJson(scan_string(idx + 1, next));
      case U'{':
        return parse_object(idx + 1, next, depth + 1);
      case U'[':
        return parse_array(idx + 1, next, depth + 1);
      case U'n':
        if (matches(idx, "null")) {
          next = idx + 4;
          return OJson(nullptr);
        }
        break;
      case U't':
        if (matches(idx, "true")) {
          next = idx + 4;
          return OJson(true);
        }
        break;
      case U'f':
        if (matches(idx, "false")) {
          next = idx + 5;
          return OJson(false);
        }
        break;
      case U'N':
        if (matches(idx, "NaN")) {
          next = idx + 3;
          return constant("NaN", std::numeric_limits<double>::quiet_NaN());
        }
        break;
      case U'I':
        if (matches(idx, "Infinity")) {
          next = idx + 8;
          return constant("Infinity", std::numeric_limits<double>::infinity());
        }
        break;
      case U'-':
        if (matches(idx, "-Infinity")) {
          next = idx + 9;
          return constant("-Infinity", -std::numeric_limits<double>::infinity());
        }
        break;
      default:
        break;
    }
    return match_number(idx, next);
  }

  static bool digit(char32_t c) { return c >= U'0' && c <= U'9'; }

  OJson match_number(size_t start, size_t& next) {
    const size_t n = s_.size();
    size_t idx = start;
    if (s_[idx] == U'-') {
      ++idx;
      if (idx >= n) fail("Expecting value", start);
    }
    if (s_[idx] >= U'1' && s_[idx] <= U'9') {
      ++idx;
      while (idx < n && digit(s_[idx])) ++idx;
    } else if (s_[idx] == U'0') {
      ++idx;
    } else {
      fail("Expecting value", start);
    }
    bool is_float = false;
    if (idx + 1 < n && s_[idx] == U'.' && digit(s_[idx + 1])) {
      is_float = true;
      idx += 2;
      while (idx < n && digit(s_[idx])) ++idx;
    }
    if (idx + 1 < n && (s_[idx] == U'e' || s_[idx] == U'E')) {
      const size_t e_start = idx;
      ++idx;
      if (idx + 1 < n && (s_[idx] == U'-' || s_[idx] == U'+')) ++idx;
      while (idx < n && digit(s_[idx])) ++idx;
      if (digit(s_[idx - 1])) {
        is_float = true;
      } else {
        idx = e_start;
      }
    }
    std::string text;
    for (size_t k = start; k < idx; ++k) text += static_cast<char>(s_[k]);
    next = idx;
    if (!is_float) {
      errno = 0;
      char* end = nullptr;
      const long long value = std::strtoll(text.c_str(), &end, 10);
      if (errno == 0) return OJson(static_cast<int64_t>(value));
      if (text[0] != '-') {
        errno = 0;
        const unsigned long long big = std::strtoull(text.c_str(), &end, 10);
        if (errno == 0) return OJson(static_cast<uint64_t>(big));
      }
      // Python keeps any integer exactly; larger ones become doubles here (a documented deviation).
    }
    return OJson(std::strtod(text.c_str(), nullptr));
  }

  int hex_value(char32_t c) const {
    if (c >= U'0' && c <= U'9') return static_cast<int>(c - U'0');
    if (c >= U'a' && c <= U'f') return static_cast<int>(c - U'a' + 10);
    if (c >= U'A' && c <= U'F') return static_cast<int>(c - U'A' + 10);
    return -1;
  }

  // The string whose opening quote is at end - 1; next is set past its closing quote.
  std::string scan_string(size_t end, size_t& next_out) {
    const size_t len = s_.size();
    const size_t begin = end - 1;
    std::string out;
    size_t next = end;
    while (true) {
      char32_t c = 0;
      for (next = end; next < len; ++next) {
        c = s_[next];
        if (c == U'"' || c == U'\\') break;
        if (c <= 0x1F) fail("Invalid control character at", next);
      }
      if (next >= len) fail("Unterminated string starting at", begin);
      for (size_t k = end; k < next; ++k) append_utf8(out, s_[k]);
      if (c == U'"') {
        end = next + 1;
        break;
      }
      ++next;  // past the backslash
      if (next == len) fail("Unterminated string starting at", begin);
      c = s_[next];
      if (c != U'u') {
        end = next + 1;
        switch (c) {
          case U'"':
          case U'\\':
          case U'/':
            break;
          case U'b':
            c = U'\b';
            break;
          case U'f':
            c = U'\f';
            break;
          case U'n':
            c = U'\n';
            break;
          case U'r':
            c = U'\r';
            break;
          case U't':
            c = U'\t';
            break;
          default:
            c = 0;
        }
        if (c == 0) fail("Invalid \\escape", end - 2);
      } else {
        c = 0;
        ++next;
        end = next + 4;
        if (end >= len) fail("Invalid \\uXXXX escape", next - 1);
        for (; next < end; ++next) {
          const int h = hex_value(s_[next]);
          if (h < 0) fail("Invalid \\uXXXX escape", end - 5);
          c = c << 4 | static_cast<char32_t>(h);
        }
        if (c >= 0xD800 && c <= 0xDBFF && end + 6 < len && s_[next] == U'\\' && s_[next + 1] == U'u') {
          next += 2;
          char32_t c2 = 0;
          end += 6;
          for (; next < end; ++next) {
            const int h = hex_value(s_[next]);
            if (h < 0) fail("Invalid \\uXXXX escape", end - 5);
            c2 = c2 << 4 | static_cast<char32_t>(h);
          }
          if (c2 >= 0xDC00 && c2 <= 0xDFFF) {
            c = 0x10000 + ((c - 0xD800) << 10 | (c2 - 0xDC00));
          } else {
            end -= 6;
          }
        }
      }
      append_utf8(out, c);
    }
    next_out = end;
    return out;
  }

  OJson parse_object(size_t idx, size_t& next, int depth) {
    if (depth > max_depth_) throw JsonError("nested too deeply");
    OJson object = OJson::object();
    const size_t len = s_.size();
    idx = skip_ws(idx);
    if (idx >= len || s_[idx] != U'}') {
      while (true) {
        if (idx >= len || s_[idx] != U'"') fail("Expecting property name enclosed in double quotes", idx);
        size_t after = 0;
        std::string key = scan_string(idx + 1, after);
        idx = skip_ws(after);
        if (idx >= len || s_[idx] != U':') fail("Expecting ':' delimiter", idx);
        idx = skip_ws(idx + 1);
        size_t value_end = 0;
        OJson value = scan_once(idx, value_end, depth);
        object[key] = std::move(value);
        idx = skip_ws(value_end);
        if (idx < len && s_[idx] == U'}') break;
        if (idx >= len || s_[idx] != U',') fail("Expecting ',' delimiter", idx);
        idx = skip_ws(idx + 1);
      }
    }
    next = idx + 1;
    return object;
  }

  OJson parse_array(size_t idx, size_t& next, int depth) {
    if (depth > max_depth_) throw JsonError("nested too deeply");
    OJson array = OJson::array();
    const size_t len = s_.size();
    idx = skip_ws(idx);
    if (idx >= len || s_[idx] != U']') {
      while (true) {
        size_t value_end = 0;
        array.push_back(scan_once(idx, value_end, depth));
        idx = skip_ws(value_end);
        if (idx < len && s_[idx] == U']') break;
        if (idx >= len || s_[idx] != U',') fail("Expecting ',' delimiter", idx);
        idx = skip_ws(idx + 1);
      }
    }
    next = idx + 1;
    return array;
  }
};

}  // namespace

OJson python_json_loads(const std::string& text, bool allow_constants, int max_depth) {
  const std::u32string cps = decode_utf8_strict(text);
  PyJsonParser parser(cps, allow_constants, max_depth);
  return parser.parse();
}

// ============================================================================================
// The manifest's checks (runtime/manifest.py)
// ============================================================================================

namespace {

constexpr int64_t kMaxSide = 16384;
constexpr int64_t kMaxClasses = 1000000;
constexpr int64_t kMaxChannels = int64_t{1} << 20;
constexpr size_t kMaxNameChars = 1000;
constexpr int kMaxDepth = 16;
const char* const kFormatName = "textcam-bundle";

using ErrorFn = std::function<Error(const std::string&)>;

std::string join_list(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

std::string repr_list(const std::vector<std::string>& items) {
  std::vector<std::string> quoted;
  quoted.reserve(items.size());
  for (const auto& item : items) quoted.push_back(python_str_repr(item));
  return "[" + join_list(quoted, ", ") + "]";
}

bool is_int(const OJson& value) { return value.is_number_integer(); }  // never bool in nlohmann

std::string int_text(const OJson& value) {
  return value.is_number_unsigned() ? std::to_string(value.get<uint64_t>()) : std::to_string(value.get<int64_t>());
}

int64_t check_integer(const OJson& value, int64_t low, int64_t high, const ErrorFn& error) {
  const std::string range = "an integer between " + std::to_string(low) + " and " + std::to_string(high);
  if (!is_int(value)) throw error("must be " + range);
  const bool in_range = value.is_number_unsigned() ? value.get<uint64_t>() <= static_cast<uint64_t>(high) &&
                                                         static_cast<int64_t>(value.get<uint64_t>()) >= low
                                                   : value.get<int64_t>() >= low && value.get<int64_t>() <= high;
  if (!in_range) throw error("is " + int_text(value) + "; expected " + range);
  return value.get<int64_t>();
}

double check_number(const OJson& value, bool positive, const ErrorFn& error) {
  if (!value.is_number() || (value.is_number_float() && !std::isfinite(value.get<double>()))) {
    throw error("must be a finite number");
  }
  const double number = value.get<double>();
  if (positive && number <= 0) throw error("is " + python_repr(value) + "; expected a positive number");
  return number;
}

void check_plain_json(const OJson& value, const ErrorFn& error, int depth = 0) {
  if (depth > kMaxDepth) throw error("is nested deeper than " + std::to_string(kMaxDepth) + " levels");
  if (value.is_number_float() && !std::isfinite(value.get<double>())) throw error("holds a non-finite number");
  if (value.is_object() || value.is_array()) {
    for (const auto& item : value) check_plain_json(item, error, depth + 1);
  } else if (value.is_binary() || value.is_discarded()) {
    throw error("holds a value that is not JSON");
  }
}

bool plain_name_part(const std::string& part) {
  if (part.empty()) return false;
  for (char c : part) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '+' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string check_relative_name(const OJson& value, const ErrorFn& error) {
  if (!value.is_string() || value.get_ref<const std::string&>().empty() ||
      python_len(value.get_ref<const std::string&>()) > 255) {
    throw error("must be a file name inside the bundle");
  }
  const std::string& name = value.get_ref<const std::string&>();
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t slash = name.find('/', start);
    parts.push_back(name.substr(start, slash == std::string::npos ? std::string::npos : slash - start));
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  bool bad = name[0] == '/' || name.find('\\') != std::string::npos || parts.size() > 2 || name == "manifest.json";
  for (const auto& part : parts) bad = bad || part.empty() || part == "." || part == ".." || !plain_name_part(part);
  if (bad) {
    throw error("is " + python_str_repr(name) +
                "; expected a plain relative file name inside the bundle (no '..', no absolute path)");
  }
  return name;
}

bool sha256_text(const std::string& text) {
  // re.match(r"^[0-9a-f]{64}$"): '$' also matches before one trailing newline.
  if (text.size() != 64 && !(text.size() == 65 && text[64] == '\n')) return false;
  for (size_t i = 0; i < 64; ++i) {
    const char c = text[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

class Checker {
 public:
  Checker(const OJson& data, std::string where, std::string section)
      : where_(std::move(where)), section_(std::move(section)), data_(&data) {
    if (!data.is_object()) throw error((section_.empty() ? "manifest" : section_) + " must be an object", "");
  }

  const std::string& where() const { return where_; }
  const std::string& section() const { return section_; }
  const OJson& data() const { return *data_; }

  Error error(const std::string& problem, const std::string& key) const {
    std::string name = section_;
    if (!key.empty()) name = name.empty() ? key : name + "." + key;
    const std::string prefix = name.empty() ? "" : "'" + name + "' ";
    return Error(where_ + ": " + prefix + problem + "; re-run the textcam stage that wrote it");
  }
  ErrorFn error_for(const std::string& key) const {
    return [this, key](const std::string& problem) { return error(problem, key); };
  }

  const OJson* find(const std::string& key) const {
    auto it = data_->find(key);
    if (it == data_->end() || it->is_null()) return nullptr;
    return &*it;
  }
  bool has(const std::string& key) const { return find(key) != nullptr; }
  const OJson& get(const std::string& key) const {
    const OJson* value = find(key);
    if (value == nullptr) throw error("is missing", key);
    return *value;
  }

  std::string text(const std::string& key, size_t limit = 4096, const std::vector<std::string>& choices = {},
                   const std::optional<std::string>& fallback = std::nullopt) const {
    const OJson* value = find(key);
    if (value == nullptr) {
      if (fallback) return *fallback;
      throw error("is missing", key);
    }
    // `value is default`: only the empty string is one object in CPython (a default of "").
    if (fallback && fallback->empty() && value->is_string() && value->get_ref<const std::string&>().empty()) {
      return "";
    }
    if (!value->is_string() || value->get_ref<const std::string&>().empty() ||
        python_len(value->get_ref<const std::string&>()) > limit) {
      throw error("must be a non-empty string of at most " + std::to_string(limit) + " characters", key);
    }
    const std::string& text = value->get_ref<const std::string&>();
    if (!choices.empty() && std::find(choices.begin(), choices.end(), text) == choices.end()) {
      throw error("is " + python_str_repr(text) + "; expected one of " + join_list(choices, ", "), key);
    }
    return text;
  }

  int64_t integer(const std::string& key, int64_t low, int64_t high,
                  std::optional<int64_t> fallback = std::nullopt) const {
    const OJson* value = find(key);
    if (value == nullptr) {
      if (!fallback) throw error("is missing", key);
      return check_integer(OJson(*fallback), low, high, error_for(key));
    }
    return check_integer(*value, low, high, error_for(key));
  }

  double number(const std::string& key, std::optional<double> fallback = std::nullopt, bool positive = false) const {
    const OJson* value = find(key);
    if (value == nullptr) {
      if (!fallback) throw error("is missing", key);
      return check_number(OJson(*fallback), positive, error_for(key));
    }
    return check_number(*value, positive, error_for(key));
  }

  bool flag(const std::string& key, std::optional<bool> fallback = std::nullopt) const {
    const OJson* value = find(key);
    if (value == nullptr) {
      if (!fallback) throw error("is missing", key);
      return *fallback;
    }
    if (!value->is_boolean()) throw error("must be true or false", key);
    return value->get<bool>();
  }

  std::array<double, 3> triple(const std::string& key, bool positive = false) const {
    const OJson& value = get(key);
    if (!value.is_array() || value.size() != 3) throw error("must be a list of three numbers (R, G, B)", key);
    std::array<double, 3> out{};
    for (size_t i = 0; i < 3; ++i) out[i] = check_number(value[i], positive, error_for(key));
    return out;
  }

  std::string sha256(const std::string& key = "sha256") const {
    const OJson& value = get(key);
    if (!value.is_string() || !sha256_text(value.get_ref<const std::string&>())) {
      throw error("must be 64 lowercase hexadecimal digits", key);
    }
    return value.get<std::string>();
  }

  Checker child(const std::string& key) const {
    const OJson& value = get(key);
    return Checker(value, where_, section_.empty() ? key : section_ + "." + key);
  }

  void extras(const std::set<std::string>& known) const {
    for (const auto& item : data_->items()) {
      if (known.count(item.key()) != 0) continue;
      check_plain_json(item.value(), error_for(item.key()));
    }
  }

 private:
  std::string where_;
  std::string section_;
  const OJson* data_;
};

FileRef read_file_ref(const Checker& check, FileKind kind, bool legacy = false) {
  FileRef ref;
  ref.file = check_relative_name(check.get("file"), check.error_for("file"));
  if (!(legacy && !check.has("size_bytes"))) ref.size_bytes = check.integer("size_bytes", 0, file_cap(kind));
  ref.sha256 = check.sha256("sha256");
  return ref;
}

std::string python_type_name(const OJson& value) {
  switch (value.type()) {
    case OJson::value_t::null:
      return "NoneType";
    case OJson::value_t::boolean:
      return "bool";
    case OJson::value_t::number_float:
      return "float";
    case OJson::value_t::number_integer:
    case OJson::value_t::number_unsigned:
      return "int";
    case OJson::value_t::string:
      return "str";
    case OJson::value_t::array:
      return "list";
    case OJson::value_t::object:
      return "dict";
    default:
      return "object";
  }
}

// Python's int(value) on a JSON value; throws the text of the exception Python raises.
struct PyException {
  std::string text;
};

int64_t python_int(const OJson& value) {
  if (value.is_boolean()) return value.get<bool>() ? 1 : 0;
  if (value.is_number_unsigned()) {
    const uint64_t big = value.get<uint64_t>();
    return big > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ? std::numeric_limits<int64_t>::max()
                                                                            : static_cast<int64_t>(big);
  }
  if (value.is_number_integer()) return value.get<int64_t>();
  if (value.is_number_float()) {
    const double number = value.get<double>();
    if (std::isnan(number)) throw PyException{"cannot convert float NaN to integer"};
    if (std::isinf(number)) throw PyException{"cannot convert float infinity to integer"};
    const double truncated = std::trunc(number);
    if (truncated >= 9.2e18) return std::numeric_limits<int64_t>::max();
    if (truncated <= -9.2e18) return std::numeric_limits<int64_t>::min();
    return static_cast<int64_t>(truncated);
  }
  if (value.is_string()) {
    const std::string& text = value.get_ref<const std::string&>();
    auto invalid = [&]() { return PyException{"invalid literal for int() with base 10: " + python_str_repr(text)}; };
    size_t begin = 0;
    size_t end = text.size();
    auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
    while (begin < end && space(text[begin])) ++begin;
    while (end > begin && space(text[end - 1])) --end;
    bool negative = false;
    if (begin < end && (text[begin] == '+' || text[begin] == '-')) negative = text[begin++] == '-';
    if (begin == end) throw invalid();
    int64_t result = 0;
    bool previous_digit = false;
    for (size_t i = begin; i < end; ++i) {
      const char c = text[i];
      if (c == '_') {
        if (!previous_digit || i + 1 == end) throw invalid();
        previous_digit = false;
        continue;
      }
      if (c < '0' || c > '9') throw invalid();
      previous_digit = true;
      if (result < std::numeric_limits<int64_t>::max() / 10) result = result * 10 + (c - '0');
    }
    return negative ? -result : result;
  }
  throw PyException{"int() argument must be a string, a bytes-like object or a real number, not '" +
                    python_type_name(value) + "'"};
}

EngineEntry read_engine(const OJson& item, const std::string& where) {
  // textcam.engines.entries.EngineEntry.from_dict (after _engines' FileRef checks).
  std::vector<std::string> missing;
  for (const char* key : {"file", "precision", "tensorrt", "compute_capability", "profile"}) {
    if (!item.contains(key)) missing.emplace_back(key);
  }
  if (!missing.empty()) {
    throw Error(where + ": engine entry lacks " + join_list(missing, ", ") + "; rebuild the engine");
  }
  EngineEntry entry;
  const OJson& profile = item.at("profile");
  int64_t sizes[3] = {0, 0, 0};
  try {
    const char* keys[3] = {"min", "opt", "max"};
    for (size_t i = 0; i < 3; ++i) {
      if (!profile.is_object()) {
        if (profile.is_array()) throw PyException{"list indices must be integers or slices, not str"};
        if (profile.is_string()) throw PyException{"string indices must be integers, not 'str'"};
        throw PyException{"'" + python_type_name(profile) + "' object is not subscriptable"};
      }
      auto it = profile.find(keys[i]);
      if (it == profile.end()) throw PyException{"'" + std::string(keys[i]) + "'"};
      sizes[i] = python_int(*it);
    }
  } catch (const PyException& exc) {
    throw Error("batch profile " + python_repr(profile) + ": expected {min, opt, max} (" + exc.text + ")");
  }
  const int64_t low = sizes[0], opt = sizes[1], high = sizes[2];
  if (low < 1 || opt < 1 || high < 1) {
    throw Error("batch profile " + std::to_string(low) + "-" + std::to_string(opt) + "-" + std::to_string(high) +
                ": batch sizes must be positive integers");
  }
  if (high > 4096) throw Error("--max-batch " + std::to_string(high) + ": at most 4096 images per engine call");
  if (!(low <= opt && opt <= high)) {
    throw Error("--min-batch " + std::to_string(low) + " --opt-batch " + std::to_string(opt) + " --max-batch " +
                std::to_string(high) + ": expected min <= opt <= max");
  }
  int64_t concurrency = 1;
  auto found = item.find("concurrency");
  if (found != item.end()) {
    try {
      concurrency = python_int(*found);
    } catch (const PyException& exc) {
      // Python lets this ValueError/TypeError escape (not a TextcamError); same text here.
      throw Error(exc.text);
    }
  }
  entry.plan.file = item.at("file").get<std::string>();
  entry.plan.sha256 = item.at("sha256").get<std::string>();
  entry.plan.size_bytes = item.at("size_bytes").get<int64_t>();
  entry.precision = python_str(item.at("precision"));
  entry.tensorrt = python_str(item.at("tensorrt"));
  entry.compute_capability = python_str(item.at("compute_capability"));
  auto clamp_int = [](int64_t v) {
    return static_cast<int>(
        std::max<int64_t>(std::numeric_limits<int>::min(), std::min<int64_t>(std::numeric_limits<int>::max(), v)));
  };
  entry.min_batch = clamp_int(low);
  entry.opt_batch = clamp_int(opt);
  entry.max_batch = clamp_int(high);
  entry.concurrency = clamp_int(concurrency);
  if (item.contains("model_sha256") && item.at("model_sha256").is_string()) {
    entry.model_sha256 = item.at("model_sha256").get<std::string>();
  }
  return entry;
}

void plain_section(const Checker& top, const std::string& key) {
  const OJson* value = top.find(key);
  if (value == nullptr) return;
  if (!value->is_object()) throw top.error("must be an object", key);
  check_plain_json(*value, top.error_for(key));
}

std::vector<std::string> tensor_specs(const Checker& graph, const std::string& key) {
  const OJson& items = graph.get(key);
  if (!items.is_array() || items.size() > 64) throw graph.error("must be a list of tensors", key);
  std::vector<std::string> names;
  for (const auto& item : items) {
    Checker spec(item, graph.where(), graph.section() + "." + key);
    const OJson& shape = spec.get("shape");
    if (!shape.is_array() || shape.size() > 8) throw spec.error("must be a list of at most 8 dimensions", "shape");
    for (const auto& dim : shape) {
      const bool named = dim.is_string() && !dim.get_ref<const std::string&>().empty() &&
                         python_len(dim.get_ref<const std::string&>()) <= 64;
      bool sized = false;
      if (dim.is_number_unsigned()) {
        sized = dim.get<uint64_t>() <= (uint64_t{1} << 31);
      } else if (dim.is_number_integer()) {
        sized = dim.get<int64_t>() >= 0 && dim.get<int64_t>() <= (int64_t{1} << 31);
      }
      if (!named && !sized) throw spec.error("dimensions must be sizes or names", "shape");
    }
    names.push_back(spec.text("name", 256));
    spec.text("dtype", 32);
  }
  return names;
}

}  // namespace

Manifest parse_manifest(const OJson& data, const std::string& where) {
  Checker top(data, where, "");
  auto format = data.find("format");
  if (format == data.end() || !format->is_string() || format->get_ref<const std::string&>() != kFormatName) {
    throw Error(where + ": not a textcam manifest (format is not 'textcam-bundle')");
  }
  auto version_it = data.find("format_version");
  if (version_it == data.end() || !is_int(*version_it) ||
      (version_it->is_number_integer() && !version_it->is_number_unsigned() && version_it->get<int64_t>() < 1)) {
    throw top.error("must be a positive integer", "format_version");
  }
  const std::string version_text = int_text(*version_it);
  if (version_text != "1" && version_text != "2") {
    throw Error(where + ": bundle format version " + version_text + " is newer than this textcam supports (" +
                std::to_string(kFormatVersion) + "); upgrade textcam");
  }
  const bool legacy = version_text == "1";
  Manifest manifest;
  manifest.format_version = legacy ? 1 : 2;

  {  // model
    Checker model = top.child("model");
    model.text("source", kMaxNameChars);
    manifest.model = read_file_ref(model, FileKind::kModel);
    if (model.has("external_data")) {
      manifest.model_external_data = read_file_ref(model.child("external_data"), FileKind::kModel);
    }
    manifest.num_classes = static_cast<int>(model.integer("num_classes", 1, kMaxClasses));
    model.extras({"source", "file", "sha256", "size_bytes", "num_classes", "external_data"});
  }
  {  // classes
    const OJson& classes = top.get("classes");
    if (!classes.is_array() || classes.size() != static_cast<size_t>(manifest.num_classes)) {
      throw top.error("must be a list of " + std::to_string(manifest.num_classes) + " names (model.num_classes)",
                      "classes");
    }
    for (const auto& name : classes) {
      if (!name.is_string() || name.get_ref<const std::string&>().empty() ||
          python_len(name.get_ref<const std::string&>()) > kMaxNameChars) {
        throw top.error("must be non-empty strings of at most " + std::to_string(kMaxNameChars) + " characters",
                        "classes");
      }
      manifest.classes.push_back(name.get<std::string>());
    }
    std::set<std::string> seen;
    for (const auto& name : manifest.classes) {
      if (!seen.insert(name).second) {
        throw top.error("name " + python_str_repr(name) + " more than once; class names must be unique", "classes");
      }
    }
  }
  {  // target_layer
    Checker target = top.child("target_layer");
    const OJson& grid = target.get("grid");
    if (!grid.is_array() || grid.size() != 2) throw target.error("must be [height, width]", "grid");
    manifest.target_layer.name = target.text("name", kMaxNameChars);
    manifest.target_layer.kind = target.text("kind", 4096, {"nchw", "nhwc", "tokens"});
    manifest.target_layer.channels = static_cast<int>(target.integer("channels", 1, kMaxChannels));
    for (size_t i = 0; i < 2; ++i) {
      manifest.target_layer.grid[i] = static_cast<int>(check_integer(grid[i], 1, kMaxSide, target.error_for("grid")));
    }
    target.integer("prefix_tokens", 0, kMaxSide, 0);
  }
  {  // graph
    Checker graph = top.child("graph");
    manifest.graph.inputs = tensor_specs(graph, "inputs");
    manifest.graph.outputs = tensor_specs(graph, "outputs");
    const std::vector<std::string> required_inputs = {"image", "target_class"};
    if (manifest.graph.inputs != required_inputs) {
      throw graph.error("are " + repr_list(manifest.graph.inputs) + "; expected " + repr_list(required_inputs),
                        "inputs");
    }
    const auto& outputs = manifest.graph.outputs;
    std::vector<std::string> missing;
    for (const char* name : {"logits", "class_index", "cam", "channel_weights", "channel_activation"}) {
      if (std::find(outputs.begin(), outputs.end(), name) == outputs.end()) missing.emplace_back(name);
    }
    const bool unique = std::set<std::string>(outputs.begin(), outputs.end()).size() == outputs.size();
    if (!missing.empty() || !unique) {
      throw graph.error("lack " + (missing.empty() ? std::string("unique names") : join_list(missing, ", ")),
                        "outputs");
    }
    manifest.graph.has_activations = graph.flag("has_activations", false);
    const bool listed = std::find(outputs.begin(), outputs.end(), "activations") != outputs.end();
    if (manifest.graph.has_activations != listed) {
      throw graph.error("disagrees with the outputs listed", "has_activations");
    }
  }
  {  // semantics and fused_graph
    const OJson* semantics_data = top.find("semantics");
    const OJson* fused_data = top.find("fused_graph");
    OJson legacy_semantics;
    if (legacy && semantics_data != nullptr && semantics_data->is_object()) {
      auto nested = semantics_data->find("fused_graph");
      fused_data = nested != semantics_data->end() && !nested->is_null() ? &*nested : nullptr;
      legacy_semantics = OJson::object();
      for (const auto& item : semantics_data->items()) {
        if (item.key() != "fused_graph") legacy_semantics[item.key()] = item.value();
      }
      semantics_data = &legacy_semantics;
    }
    if (semantics_data != nullptr) {
      Checker check(*semantics_data, where, "semantics");
      const OJson* defaults = check.find("defaults");
      if (defaults != nullptr && !defaults->is_object()) throw check.error("must be an object", "defaults");
      if (defaults != nullptr) check_plain_json(*defaults, check.error_for("defaults"));
      SemanticsSection section;
      section.store = read_file_ref(check, FileKind::kSemantics, legacy);
      section.channels = static_cast<int>(check.integer("channels", 1, kMaxChannels));
      section.dim = static_cast<int>(check.integer("dim", 1, int64_t{1} << 16));
      section.vocabulary_size = static_cast<int>(check.integer("vocabulary_size", 1, int64_t{1} << 24));
      check.text("clip_model", kMaxNameChars);
      check.text("lda", 64);
      check.integer("m", 1, int64_t{1} << 24);
      section.defaults = defaults != nullptr ? nlohmann::json(*defaults) : nlohmann::json::object();
      if (section.channels != manifest.target_layer.channels) {
        throw top.error("has " + std::to_string(section.channels) + " channels, the layer " +
                            std::to_string(manifest.target_layer.channels),
                        "semantics.channels");
      }
      manifest.semantics = std::move(section);
    }
    if (fused_data != nullptr) {
      Checker check(*fused_data, where, "fused_graph");
      FusedGraphSection section;
      section.graph = read_file_ref(check, FileKind::kFusedGraph, legacy);
      section.candidates = static_cast<int>(check.integer("candidates", 1, int64_t{1} << 24));
      section.beta = check.text("beta", 4096, {"contribution", "weights"});
      if (!manifest.semantics) throw top.error("is present without semantics", "fused_graph");
      manifest.fused_graph = std::move(section);
    }
  }
  {  // input
    Checker input = top.child("input");
    const OJson* preprocessing = input.find("preprocessing");
    if (preprocessing != nullptr) {
      if (!preprocessing->is_object()) throw input.error("must be an object", "preprocessing");
      check_plain_json(*preprocessing, input.error_for("preprocessing"));
    }
    manifest.input.height = static_cast<int>(input.integer("height", 1, kMaxSide));
    manifest.input.width = static_cast<int>(input.integer("width", 1, kMaxSide));
    manifest.input.mean = input.triple("mean");
    manifest.input.std = input.triple("std", true);
    manifest.input.resize = input.text("resize", 4096, {"stretch", "center_crop"}, std::string("stretch"));
    manifest.input.scale = input.number("scale", 1.0 / 255.0, true);
    input.text("layout", 4096, {"NCHW"}, std::string("NCHW"));
    input.text("dtype", 4096, {"float32"}, std::string("float32"));
    input.text("color", 4096, {"RGB"}, std::string("RGB"));
  }
  manifest.method = top.text("method", 4096, {"gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "cam"});
  if (top.has("verification")) {
    Checker verification = top.child("verification");
    const OJson* sizes = verification.find("batch_sizes");
    if (sizes != nullptr && !sizes->is_array()) throw verification.error("must be a list", "batch_sizes");
    verification.flag("passed");
    if (sizes != nullptr) {
      for (const auto& size : *sizes) check_integer(size, 1, int64_t{1} << 20, verification.error_for("batch_sizes"));
    }
    verification.extras({"passed", "batch_sizes"});
  }
  {  // engines
    const OJson* raw = top.find("engines");
    if (raw != nullptr) {
      if (!raw->is_array() || raw->size() > 256) throw top.error("must be a list of at most 256 engines", "engines");
      for (const auto& item : *raw) {
        Checker check(item, where, "engines[]");
        read_file_ref(check, FileKind::kEngine);
        if (check.has("onnx")) check_relative_name(check.get("onnx"), check.error_for("onnx"));
        manifest.engines.push_back(read_engine(item, where));
      }
    }
  }
  if (top.has("selftest")) {
    Checker check = top.child("selftest");
    Checker tolerances = check.child("tolerances");
    SelftestSection section;
    section.data = read_file_ref(check, FileKind::kSelftest);
    section.images = static_cast<int>(check.integer("images", 1, 256));
    for (const auto& item : tolerances.data().items()) section.tolerances[item.key()] = tolerances.number(item.key());
    section.concepts = check.flag("concepts", false);
    manifest.selftest = std::move(section);
  }
  top.text("created", 64, {}, std::string());
  plain_section(top, "producer");
  plain_section(top, "tensorrt");
  plain_section(top, "timings");
  return manifest;
}

Manifest parse_manifest(const nlohmann::json& data, const std::string& where) {
  return parse_manifest(OJson(data), where);
}

nlohmann::ordered_json read_manifest_ordered(const std::string& bundle_dir) {
  const std::string bundle = python_path(bundle_dir);
  const std::string path = join_path(bundle_dir, "manifest.json");
  struct stat info {};
  if (::stat(bundle.c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) {
    throw Error(bundle + ": not a directory; a bundle is a directory made by `textcam export`");
  }
  auto os_error = [&](int code) {
    if (code == ENOENT) return Error(path + ": missing; is " + bundle + " a bundle made by `textcam export`?");
    return Error(path + ": cannot read it (" + errno_text(code) + ")");
  };
  if (::stat(path.c_str(), &info) != 0) throw os_error(errno);
  if (!S_ISREG(info.st_mode)) throw Error(path + ": not a regular file; a bundle's manifest is a JSON file");
  if (info.st_size > kMaxManifestBytes) {
    throw Error(path + ": " + with_commas(static_cast<long long>(info.st_size)) + " bytes, over the " +
                with_commas(kMaxManifestBytes) + "-byte limit for a manifest; re-export the bundle");
  }
  std::string raw;
  {
    std::FILE* file = std::fopen(path.c_str(), "rb");
    if (file == nullptr) throw os_error(errno);
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> guard(file, &std::fclose);
    raw.resize(static_cast<size_t>(kMaxManifestBytes) + 1);
    const size_t got = std::fread(raw.data(), 1, raw.size(), file);
    if (std::ferror(file)) throw os_error(errno);
    raw.resize(got);
  }
  try {
    return python_json_loads(raw, false, kPythonJsonMaxDepth);
  } catch (const JsonError& exc) {
    std::string detail = exc.what();
    const std::u32string cps = decode_wtf8(detail.substr(0, detail.find('\n')));
    if (cps.size() > 200) {
      detail.clear();
      for (size_t i = 0; i < 200; ++i) append_utf8(detail, cps[i]);
    }
    throw Error(path + ": unreadable or not JSON (" + detail + "); re-export the bundle");
  }
}

nlohmann::json read_manifest_text(const std::string& bundle_dir) {
  return nlohmann::json(read_manifest_ordered(bundle_dir));
}

}  // namespace textcam::detail
