// safetensors: the header checks of the Rust crate (SafeTensors::read_metadata and
// Metadata::validate) with its error texts, on a file read whole into memory.
#include "safetensors.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <tuple>
#include <utility>

#include "manifest.hpp"
#include "os_error.hpp"
#include "textcam/textcam.hpp"

namespace textcam::detail {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100000000;  // the crate's MAX_HEADER_SIZE
constexpr int kHeaderMaxDepth = 128;             // serde_json's recursion limit

// Bits per element of each dtype the crate knows; 0: unknown.
size_t dtype_bits(const std::string& dtype) {
  static const std::pair<const char*, size_t> kBits[] = {
      {"BOOL", 8},    {"F4", 4},      {"F6_E2M3", 6}, {"F6_E3M2", 6},     {"U8", 8},          {"I8", 8},
      {"F8_E5M2", 8}, {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8}, {"I16", 16},
      {"U16", 16},    {"F16", 16},    {"BF16", 16},   {"I32", 32},        {"U32", 32},        {"F32", 32},
      {"C64", 64},    {"F64", 64},    {"I64", 64},    {"U64", 64},
  };
  for (const auto& [name, bits] : kBits) {
    if (dtype == name) return bits;
  }
  return 0;
}

struct HeaderError {
  std::string text;
};

uint64_t header_uint(const nlohmann::ordered_json& value, const std::string& what) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer() && value.get<int64_t>() >= 0) return static_cast<uint64_t>(value.get<int64_t>());
  throw HeaderError{"invalid JSON in header: invalid type: " + python_repr(value) + ", expected " + what};
}

template <typename T>
T load(const uint8_t* data, size_t index) {
  T value;
  std::memcpy(&value, data + index * sizeof(T), sizeof(T));
  return value;
}

}  // namespace

float half_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000U) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1FU;
  uint32_t mantissa = bits & 0x3FFU;
  uint32_t out = 0;
  if (exponent == 0x1F) {
    out = sign | 0x7F800000U | (mantissa << 13);  // inf, NaN (payload kept)
  } else if (exponent != 0) {
    out = sign | ((exponent + 112U) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    out = sign;  // +-0
  } else {
    // Subnormal: value = mantissa * 2^-24; normalize it into a float32.
    uint32_t shift = 0;
    while ((mantissa & 0x400U) == 0) {
      mantissa <<= 1;
      ++shift;
    }
    mantissa &= 0x3FFU;
    out = sign | ((113U - shift) << 23) | (mantissa << 13);
  }
  float value = 0.0F;
  std::memcpy(&value, &out, sizeof value);
  return value;
}

int64_t TensorView::elements() const {
  int64_t count = 1;
  for (int64_t dim : shape) count *= dim;
  return count;
}

std::vector<float> TensorView::to_float() const {
  const size_t n = static_cast<size_t>(elements());
  std::vector<float> out(n);
  if (dtype == "F16") {
    for (size_t i = 0; i < n; ++i) out[i] = half_to_float(load<uint16_t>(data, i));
  } else if (dtype == "F32") {
    if (n != 0) std::memcpy(out.data(), data, n * sizeof(float));
  } else if (dtype == "F64") {
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<double>(data, i));
  } else if (dtype == "I64") {
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<int64_t>(data, i));
  } else if (dtype == "I32") {
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<int32_t>(data, i));
  } else if (dtype == "I16") {
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<int16_t>(data, i));
  } else if (dtype == "U8" || dtype == "BOOL") {
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(data[i]);
  } else if (dtype == "I8") {
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<int8_t>(data, i));
  } else {
    throw Error("tensor of dtype " + dtype + ": cannot be read as float32");
  }
  return out;
}

std::vector<int64_t> TensorView::to_int64() const {
  const size_t n = static_cast<size_t>(elements());
  std::vector<int64_t> out(n);
  if (dtype == "I64") {
    if (n != 0) std::memcpy(out.data(), data, n * sizeof(int64_t));
  } else if (dtype == "I32") {
    for (size_t i = 0; i < n; ++i) out[i] = load<int32_t>(data, i);
  } else if (dtype == "I16") {
    for (size_t i = 0; i < n; ++i) out[i] = load<int16_t>(data, i);
  } else if (dtype == "I8") {
    for (size_t i = 0; i < n; ++i) out[i] = data[i] < 128 ? data[i] : data[i] - 256;  // two's complement int8
  } else if (dtype == "U8" || dtype == "BOOL") {
    for (size_t i = 0; i < n; ++i) out[i] = data[i];
  } else {
    throw Error("tensor of dtype " + dtype + ": cannot be read as int64");
  }
  return out;
}

SafetensorsFile SafetensorsFile::read(const std::string& path, const std::string& hint, int64_t max_bytes) {
  auto refuse = [&](const std::string& why) {
    return Error(path + ": not a readable safetensors file (" + why + ")" + hint);
  };
  auto os_error = [&](int code) { return refuse(errno_text(code) + " (os error " + std::to_string(code) + ")"); };
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) throw os_error(errno);
  struct stat info {};
  if (::fstat(::fileno(file.get()), &info) != 0) throw os_error(errno);
  if (!S_ISREG(info.st_mode)) throw refuse("not a regular file");
  if (info.st_size > max_bytes) {
    throw refuse(std::to_string(info.st_size) + " bytes, over the " + std::to_string(max_bytes) +
                 "-byte limit for this file");
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(info.st_size));
  const size_t got = bytes.empty() ? 0 : std::fread(bytes.data(), 1, bytes.size(), file.get());
  if (std::ferror(file.get())) throw os_error(errno);
  bytes.resize(got);  // a file that shrank meanwhile is judged on what was read
  return parse(std::move(bytes), path, hint);
}

SafetensorsFile SafetensorsFile::parse(std::vector<uint8_t> bytes, const std::string& path, const std::string& hint) {
  SafetensorsFile out;
  out.path_ = path;
  out.bytes_ = std::move(bytes);
  const std::vector<uint8_t>& buffer = out.bytes_;
  try {
    if (buffer.size() < 8) throw HeaderError{"header too small"};
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = n << 8 | buffer[static_cast<size_t>(i)];
    if (n > kMaxHeaderBytes) throw HeaderError{"header too large"};
    if (n > buffer.size() - 8) throw HeaderError{"invalid header length"};
    const std::string text(reinterpret_cast<const char*>(buffer.data()) + 8, static_cast<size_t>(n));
    nlohmann::ordered_json header;
    try {
      header = python_json_loads(text, false, kHeaderMaxDepth);
    } catch (const JsonError& exc) {
      const std::string detail = exc.what();
      if (detail.rfind("'utf-8' codec", 0) == 0) throw HeaderError{"invalid UTF-8 in header: " + detail};
      // serde_json words the commonest case "expected value at line L column C".
      const std::string expecting = "Expecting value: line ";
      if (detail.rfind(expecting, 0) == 0) {
        const size_t paren = detail.find(" (char ");
        throw HeaderError{"invalid JSON in header: expected value at line " +
                          detail.substr(expecting.size(), paren - expecting.size())};
      }
      throw HeaderError{"invalid JSON in header: " + detail};
    }
    if (!header.is_object()) {
      throw HeaderError{"invalid JSON in header: invalid type: " + python_repr(header) +
                        ", expected struct HashMetadata"};
    }
    struct Entry {
      uint64_t start = 0, end = 0;
      std::string name;
      TensorView view;
    };
    std::vector<Entry> entries;
    for (const auto& item : header.items()) {
      const auto& value = item.value();
      if (item.key() == "__metadata__") {
        if (value.is_null()) continue;
        if (!value.is_object()) {
          throw HeaderError{"invalid JSON in header: invalid type: " + python_repr(value) + ", expected a map"};
        }
        for (const auto& meta : value.items()) {
          if (!meta.value().is_string()) {
            throw HeaderError{"invalid JSON in header: invalid type: " + python_repr(meta.value()) +
                              ", expected a string"};
          }
          out.metadata_[meta.key()] = meta.value().get<std::string>();
        }
        continue;
      }
      if (!value.is_object()) {
        throw HeaderError{"invalid JSON in header: invalid type: " + python_repr(value) +
                          ", expected struct TensorInfo"};
      }
      for (const char* field : {"dtype", "shape", "data_offsets"}) {
        if (!value.contains(field))
          throw HeaderError{"invalid JSON in header: missing field `" + std::string(field) + "`"};
      }
      Entry entry;
      entry.name = item.key();
      const auto& dtype = value.at("dtype");
      if (!dtype.is_string() || dtype_bits(dtype.get<std::string>()) == 0) {
        throw HeaderError{"invalid JSON in header: unknown variant " + python_repr(dtype) + " for dtype"};
      }
      entry.view.dtype = dtype.get<std::string>();
      const auto& shape = value.at("shape");
      if (!shape.is_array()) {
        throw HeaderError{"invalid JSON in header: invalid type: " + python_repr(shape) + ", expected a sequence"};
      }
      for (const auto& dim : shape) {
        const uint64_t size = header_uint(dim, "usize");
        if (size > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          throw HeaderError{"overflow computing buffer size from shape and/or element type"};
        }
        entry.view.shape.push_back(static_cast<int64_t>(size));
      }
      const auto& offsets = value.at("data_offsets");
      if (!offsets.is_array() || offsets.size() != 2) {
        throw HeaderError{"invalid JSON in header: invalid type: " + python_repr(offsets) +
                          ", expected an array of length 2"};
      }
      entry.start = header_uint(offsets[0], "usize");
      entry.end = header_uint(offsets[1], "usize");
      entries.push_back(std::move(entry));
    }
    std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      return std::tie(a.start, a.end) < std::tie(b.start, b.end);
    });
    uint64_t position = 0;
    for (auto& entry : entries) {
      if (entry.start != position || entry.end < entry.start) {
        throw HeaderError{"invalid offset for tensor `" + entry.name + "`"};
      }
      position = entry.end;
      uint64_t elements = 1;
      for (int64_t dim : entry.view.shape) {
        const uint64_t d = static_cast<uint64_t>(dim);
        if (d != 0 && elements > std::numeric_limits<uint64_t>::max() / d) {
          throw HeaderError{"overflow computing buffer size from shape and/or element type"};
        }
        elements *= d;
      }
      const uint64_t bits_per = dtype_bits(entry.view.dtype);
      if (elements > std::numeric_limits<uint64_t>::max() / bits_per) {
        throw HeaderError{"overflow computing buffer size from shape and/or element type"};
      }
      const uint64_t bits = elements * bits_per;
      if (bits % 8 != 0) throw HeaderError{"misaligned slice"};
      if (entry.end - entry.start != bits / 8) {
        throw HeaderError{"invalid shape, data type, or offset for tensor"};
      }
    }
    if (position != buffer.size() - 8 - n) throw HeaderError{"incomplete metadata, file not fully covered"};
    const uint8_t* data = buffer.data() + 8 + n;
    for (auto& entry : entries) {
      entry.view.data = data + entry.start;
      entry.view.size_bytes = static_cast<size_t>(entry.end - entry.start);
      out.tensors_[entry.name] = std::move(entry.view);
    }
  } catch (const HeaderError& error) {
    throw Error(path + ": not a readable safetensors file (Error while deserializing header: " + error.text + ")" +
                hint);
  }
  return out;
}

const TensorView& SafetensorsFile::tensor(const std::string& name) const {
  auto found = tensors_.find(name);
  if (found == tensors_.end()) throw Error(path_ + ": holds no tensor named '" + name + "'");
  return found->second;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& item : tensors_) out.push_back(item.first);
  return out;
}

}  // namespace textcam::detail
