// A safetensors file (https://github.com/huggingface/safetensors, format section): an 8-byte
// little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__":
// {str: str}}, then the raw little-endian tensor bytes. Read whole into memory and bounds-checked.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace textcam::detail {

struct TensorView {
  std::string dtype;  // "F16", "F32", "F64", "I64", "U8", ...
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t size_bytes = 0;

  int64_t elements() const;
  std::vector<float> to_float() const;    // F16, F32, F64 -> float32
  std::vector<int64_t> to_int64() const;  // I64, I32 -> int64
};

// Float16 bits to float32, exactly (subnormals, infinities and NaN included).
float half_to_float(uint16_t bits);

class SafetensorsFile {
 public:
  // Throws textcam::Error("<path>: not a readable safetensors file (<why>)<hint>") on damage;
  // <why> words it as the Rust safetensors crate does ("Error while deserializing header: ...").
  // Files over max_bytes (the cap of the caller's kind of file) are refused unread.
  static SafetensorsFile read(const std::string& path, const std::string& hint, int64_t max_bytes = int64_t{1} << 30);
  // The same on bytes already in memory (`path` only names them in errors).
  static SafetensorsFile parse(std::vector<uint8_t> bytes, const std::string& path, const std::string& hint);

  SafetensorsFile(SafetensorsFile&&) = default;
  SafetensorsFile& operator=(SafetensorsFile&&) = default;
  SafetensorsFile(const SafetensorsFile&) = delete;  // the views point into bytes_
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorView& tensor(const std::string& name) const;  // throws if absent
  std::vector<std::string> names() const;

 private:
  SafetensorsFile() = default;

  std::string path_;
  std::vector<uint8_t> bytes_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, TensorView> tensors_;
};

}  // namespace textcam::detail
