// TensorRT: the bundle's engine (`textcam build-engine`) run on the GPU, as
// textcam.runtime.backends.tensorrt_runner runs it: the engine built for this GPU's compute
// capability and the installed TensorRT version, one execution context per optimization profile
// (each with its own CUDA stream, device buffers sized for the profile's largest batch and
// page-locked host buffers), handed out to concurrent callers as a pool (a caller waits while all
// are busy); batches above the profile's maximum are split, batches below its minimum padded with
// their last row (and trimmed). The same one-line errors.
//
// libnvinfer is loaded at run time (dlopen libnvinfer.so.<major of the headers>, or
// TEXTCAM_TENSORRT_LIBRARY) through createInferRuntime_INTERNAL, the factory behind
// nvinfer1::createInferRuntime, so the binary does not link TensorRT; the CUDA runtime is linked.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "bundle.hpp"
#include "explainer_impl.hpp"
#include "manifest.hpp"
#include "runner.hpp"
#include "textcam/textcam.hpp"

namespace textcam::detail {
namespace {

const char* const kPrecisions[] = {"fp32", "fp16", "bf16"};  // textcam.engines.entries.PRECISIONS
constexpr int kDefaultConcurrency = 2;
constexpr int kDefaultMinBatch = 1, kDefaultOptBatch = 8, kDefaultMaxBatch = 32;
constexpr int kDevice = 0;  // the Python runner's default CUDA device

std::string first_line(const std::string& text) {
  const auto end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

// ---- TensorRT's log: its last error on this thread goes into our one-line errors -------------

thread_local std::string last_tensorrt_error;

class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, nvinfer1::AsciiChar const* message) noexcept override {
    if (severity > Severity::kERROR || message == nullptr) return;
    try {
      last_tensorrt_error = first_line(message);
    } catch (...) {  // never let an exception into TensorRT
    }
  }
};

// TensorRT treats the logger as a singleton that must outlive every object: one, never destroyed.
Logger& process_logger() {
  static Logger* const instance = new Logger();
  return *instance;
}

// " (TensorRT: <its last error>)", or empty; clears it.
std::string tensorrt_said() {
  std::string said;
  said.swap(last_tensorrt_error);
  return said.empty() ? std::string() : " (TensorRT: " + said + ")";
}

// ---- CUDA, with RAII ----------------------------------------------------------------------------

void cuda_check(cudaError_t status, const std::string& what) {
  if (status == cudaSuccess) return;
  const char* name = cudaGetErrorName(status);
  throw Error("CUDA " + what + " failed: " + (name != nullptr ? name : std::to_string(static_cast<int>(status))));
}

struct CudaFree {
  void operator()(void* pointer) const noexcept { cudaFree(pointer); }
};
struct CudaFreeHost {
  void operator()(void* pointer) const noexcept { cudaFreeHost(pointer); }
};
struct CudaStreamDestroy {
  void operator()(cudaStream_t stream) const noexcept { cudaStreamDestroy(stream); }
};
using DeviceBuffer = std::unique_ptr<void, CudaFree>;
using PinnedBuffer = std::unique_ptr<void, CudaFreeHost>;
using Stream = std::unique_ptr<std::remove_pointer_t<cudaStream_t>, CudaStreamDestroy>;

DeviceBuffer device_buffer(size_t bytes) {
  void* pointer = nullptr;
  cuda_check(cudaMalloc(&pointer, std::max<size_t>(bytes, 1)), "cudaMalloc(" + std::to_string(bytes) + " bytes)");
  return DeviceBuffer(pointer);
}

PinnedBuffer pinned_buffer(size_t bytes) {
  void* pointer = nullptr;
  cuda_check(cudaMallocHost(&pointer, std::max<size_t>(bytes, 1)),
             "cudaMallocHost(" + std::to_string(bytes) + " bytes)");
  return PinnedBuffer(pointer);
}

Stream new_stream() {
  cudaStream_t stream = nullptr;
  cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  return Stream(stream);
}

struct Gpu {
  std::string name;
  std::string compute_capability;  // "major.minor"
};

Gpu open_gpu(int device) {
  int count = 0;
  cuda_check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  if (device < 0 || device >= count) {
    throw Error("device " + std::to_string(device) + ": this machine has " + std::to_string(count) + " CUDA device(s)");
  }
  cuda_check(cudaSetDevice(device), "cudaSetDevice");
  cudaDeviceProp props{};
  cuda_check(cudaGetDeviceProperties(&props, device), "cudaGetDeviceProperties");
  return {std::string(props.name), std::to_string(props.major) + "." + std::to_string(props.minor)};
}

// ---- libnvinfer, loaded once per process and never unloaded --------------------------------------

using CreateRuntime = void* (*)(void* logger, int32_t version);
using VersionFunction = int32_t (*)();

struct Library {
  std::string path;
  std::string version;  // "10.8.0.43": what the tensorrt wheel's __version__ (and so the manifest) says
  CreateRuntime create_runtime = nullptr;
};

std::mutex library_mutex;
const Library* loaded_library = nullptr;

std::string join(const std::vector<std::string>& items, const char* separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

std::vector<std::string> library_candidates() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): no thread-safe getenv exists; the library never calls setenv
  if (const char* env = std::getenv("TEXTCAM_TENSORRT_LIBRARY"); env != nullptr && *env != '\0') return {env};
  std::vector<std::string> candidates;
#ifdef TEXTCAM_DEFAULT_TENSORRT_LIBRARY
  const std::string built_in = TEXTCAM_DEFAULT_TENSORRT_LIBRARY;
  if (!built_in.empty()) candidates.push_back(built_in);
#endif
  candidates.push_back("libnvinfer.so." + std::to_string(NV_TENSORRT_MAJOR));
  return candidates;
}

// major.minor.patch.build from getInferLib{Major,Minor,Patch,Build}Version; major.minor.patch from
// getInferLibVersion where those are missing. Sets `major` (-1 when unknown).
std::string library_version(void* handle, int32_t& major) {
  auto part = [handle](const char* symbol) -> int32_t {
    auto function = reinterpret_cast<VersionFunction>(dlsym(handle, symbol));
    return function != nullptr ? function() : -1;
  };
  const int32_t parts[4] = {part("getInferLibMajorVersion"), part("getInferLibMinorVersion"),
                            part("getInferLibPatchVersion"), part("getInferLibBuildVersion")};
  if (std::all_of(std::begin(parts), std::end(parts), [](int32_t v) { return v >= 0; })) {
    major = parts[0];
    return std::to_string(parts[0]) + "." + std::to_string(parts[1]) + "." + std::to_string(parts[2]) + "." +
           std::to_string(parts[3]);
  }
  const int32_t packed = part("getInferLibVersion");  // major * 10000 + minor * 100 + patch (8.x: * 1000)
  if (packed < 0) {
    major = -1;
    return "";
  }
  const int32_t scale = packed >= 100000 ? 10000 : 1000;
  major = packed / scale;
  return std::to_string(major) + "." + std::to_string(packed % scale / 100) + "." + std::to_string(packed % 100);
}

const Library& load_library() {
  std::lock_guard<std::mutex> lock(library_mutex);
  if (loaded_library != nullptr) return *loaded_library;
  const std::string wanted = "libnvinfer.so." + std::to_string(NV_TENSORRT_MAJOR);
  std::vector<std::string> problems;
  for (const auto& candidate : library_candidates()) {
    void* handle = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      // NOLINTNEXTLINE(concurrency-mt-unsafe): under library_mutex; glibc keeps dlerror's state per thread
      const char* why = dlerror();
      problems.push_back(candidate + " (" + (why != nullptr ? first_line(why) : std::string("not found")) + ")");
      continue;
    }
    auto create = reinterpret_cast<CreateRuntime>(dlsym(handle, "createInferRuntime_INTERNAL"));
    if (create == nullptr) {
      problems.push_back(candidate + " (no createInferRuntime_INTERNAL: not TensorRT)");
      continue;  // handle stays open: closing foreign libraries can be unsafe
    }
    int32_t major = -1;
    auto library = std::make_unique<Library>();
    library->path = candidate;
    library->version = library_version(handle, major);
    library->create_runtime = create;
    if (major != NV_TENSORRT_MAJOR) {
      throw Error("TensorRT " + (library->version.empty() ? std::string("?") : library->version) + " at " + candidate +
                  " is not TensorRT " + std::to_string(NV_TENSORRT_MAJOR) +
                  ", whose headers this libtextcam was built with; install TensorRT " +
                  std::to_string(NV_TENSORRT_MAJOR) + " (or rebuild libtextcam against the installed one)");
    }
    loaded_library = library.release();
    return *loaded_library;
  }
  throw Error("TensorRT: no " + wanted + " could be loaded; looked at " + join(problems, ", ") +
              "; pip install 'textcam[tensorrt]', or set TEXTCAM_TENSORRT_LIBRARY to its " + wanted);
}

// ---- the words of textcam.engines.entries ---------------------------------------------------------

// shlex.quote
std::string shell_quote(const std::string& text) {
  if (text.empty()) return "''";
  const bool safe = std::all_of(text.begin(), text.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           std::strchr("_@%+=:,./-", c) != nullptr;
  });
  if (safe) return text;
  std::string quoted = "'";
  for (const char c : text) quoted += c == '\'' ? std::string("'\"'\"'") : std::string(1, c);
  return quoted + "'";
}

std::string rebuild_command(const std::string& bundle_path, const std::string& precision, int min_batch, int opt_batch,
                            int max_batch, int concurrency) {
  std::string command = "textcam build-engine " + shell_quote(bundle_path) + " --precision " + precision +
                        " --min-batch " + std::to_string(min_batch) + " --opt-batch " + std::to_string(opt_batch) +
                        " --max-batch " + std::to_string(max_batch);
  if (concurrency != 0 && concurrency != kDefaultConcurrency)
    command += " --concurrency " + std::to_string(concurrency);
  return command;
}

std::string rebuild_command(const std::string& bundle_path, const EngineEntry& entry) {
  return rebuild_command(bundle_path, entry.precision, entry.min_batch, entry.opt_batch, entry.max_batch,
                         entry.concurrency);
}

std::string sm(const std::string& compute_capability) {
  std::string digits;
  for (const char c : compute_capability) {
    if (c != '.') digits += c;
  }
  return "sm" + digits;
}

std::string describe(const EngineEntry& entry) {
  return entry.precision + ", " + sm(entry.compute_capability) + ", TensorRT " + entry.tensorrt + ", batch " +
         std::to_string(entry.min_batch) + "-" + std::to_string(entry.opt_batch) + "-" +
         std::to_string(entry.max_batch);
}

size_t precision_rank(const std::string& precision) {
  const auto found = std::find(std::begin(kPrecisions), std::end(kPrecisions), precision);
  return static_cast<size_t>(found - std::begin(kPrecisions));  // unknown ones last
}

// textcam.engines.entries.choose_engine: the engine for this GPU architecture and TensorRT version
// (and `precision` if given; else fp32 before fp16 before bf16). Every failure ends in the
// `textcam build-engine` command that makes a matching engine here.
// Engines built from another model.onnx (re-exported since) are never chosen.
const EngineEntry& choose_engine(const Bundle& bundle, const Gpu& gpu, const std::string& version,
                                 const std::optional<std::string>& precision) {
  if (precision && precision_rank(*precision) >= std::size(kPrecisions)) {
    throw Error("precision '" + *precision + "': expected one of fp32, fp16, bf16");
  }
  const auto& entries = bundle.info().engines;
  std::string wanted = precision.value_or("fp32");
  if (!precision) {
    size_t best_rank = std::size(kPrecisions) + 1;
    for (const auto& entry : entries) {
      if (precision_rank(entry.precision) < best_rank) {
        best_rank = precision_rank(entry.precision);
        wanted = entry.precision;
      }
    }
  }
  const auto fresh = [&](const EngineEntry& entry) {
    return !entry.model_sha256 || *entry.model_sha256 == bundle.info().model.sha256;
  };
  const EngineEntry* chosen = nullptr;
  for (const auto& entry : entries) {
    if (!fresh(entry)) continue;
    if (entry.compute_capability != gpu.compute_capability || entry.tensorrt != version) continue;
    if (precision && entry.precision != *precision) continue;
    if (chosen == nullptr || precision_rank(entry.precision) < precision_rank(chosen->precision)) chosen = &entry;
  }
  if (chosen != nullptr) return *chosen;
  const EngineEntry* model = nullptr;
  for (const auto& entry : entries) {
    if (entry.precision == wanted) {
      model = &entry;
      break;
    }
  }
  if (model == nullptr && !entries.empty()) model = &entries.front();
  const std::string hint = model != nullptr ? rebuild_command(bundle.path(), wanted, model->min_batch, model->opt_batch,
                                                              model->max_batch, model->concurrency)
                                            : rebuild_command(bundle.path(), wanted, kDefaultMinBatch, kDefaultOptBatch,
                                                              kDefaultMaxBatch, 0);
  if (entries.empty()) {
    throw Error(bundle.path() + ": the bundle has no TensorRT engine; build one with `" + hint + "`");
  }
  if (std::none_of(entries.begin(), entries.end(), fresh)) {
    throw Error(bundle.path() + ": its engines were built from another model.onnx (re-exported since); rebuild with `" +
                hint + "`");
  }
  std::vector<std::string> built;
  for (const auto& entry : entries) {
    if (fresh(entry)) built.push_back(describe(entry));
  }
  const std::string what = precision ? "no " + *precision + " engine" : "no engine";
  throw Error(bundle.path() + ": " + what + " for this GPU: the bundle has " + join(built, "; ") +
              "; this machine has " + sm(gpu.compute_capability) + " with TensorRT " + version + "; rebuild with `" +
              hint + "`");
}

// ---- Python spellings for messages ---------------------------------------------------------------

std::string python_list(const std::vector<std::string>& names) { return python_repr(nlohmann::ordered_json(names)); }

std::string python_tuple(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

std::vector<int64_t> dims_vector(const nvinfer1::Dims& dims) {
  const int32_t count = std::max<int32_t>(0, std::min<int32_t>(dims.nbDims, nvinfer1::Dims::MAX_DIMS));
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(count));
  for (int32_t i = 0; i < count; ++i) out.push_back(dims.d[i]);
  return out;
}

int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (const int64_t d : shape) count *= d;
  return count;
}

// ---- the engine's tensors and one execution slot -------------------------------------------------

struct TensorInfo {
  std::string name;
  bool is_input = false;
  nvinfer1::DataType type = nvinfer1::DataType::kFLOAT;
  size_t item_size = 0;
};

// The element types textcam feeds and reads (0: another).
size_t item_size(nvinfer1::DataType type) {
  switch (type) {
    case nvinfer1::DataType::kFLOAT:
      return sizeof(float);
    case nvinfer1::DataType::kINT32:
      return sizeof(int32_t);
    case nvinfer1::DataType::kINT64:
      return sizeof(int64_t);
    default:
      return 0;
  }
}

struct Feed {
  const void* data = nullptr;
  std::vector<int64_t> shape;
  bool is_int = false;  // int64 values, else float32
};

// One execution context on its own optimization profile and stream, with buffers for the largest batch.
class Slot {
 public:
  Slot(nvinfer1::ICudaEngine& engine, int32_t profile, const std::vector<TensorInfo>& tensors)
      : tensors_(tensors), stream_(new_stream()) {
    context_.reset(engine.createExecutionContext());
    if (!context_) {
      throw Error(
          "TensorRT could not create an execution context (out of GPU memory?); use fewer contexts or a "
          "smaller --max-batch" +
          tensorrt_said());
    }
    if (!context_->setOptimizationProfileAsync(profile, stream_.get())) {
      throw Error("TensorRT refused optimization profile " + std::to_string(profile) + tensorrt_said());
    }
    cuda_check(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize");
    for (const auto& tensor : tensors_) {
      if (!tensor.is_input) continue;
      const nvinfer1::Dims largest =
          engine.getProfileShape(tensor.name.c_str(), profile, nvinfer1::OptProfileSelector::kMAX);
      if (!context_->setInputShape(tensor.name.c_str(), largest)) {
        throw Error("engine input " + tensor.name + ": TensorRT refused its profile's largest shape " +
                    python_tuple(dims_vector(largest)) + tensorrt_said());
      }
    }
    for (const auto& tensor : tensors_) {
      const nvinfer1::Dims dims = context_->getTensorShape(tensor.name.c_str());
      const auto shape = dims_vector(dims);
      if (dims.nbDims < 0 || std::any_of(shape.begin(), shape.end(), [](int64_t d) { return d < 0; })) {
        throw Error("engine tensor " + tensor.name + ": shape " + python_tuple(shape) +
                    " does not follow from the batch");
      }
      const size_t bytes = static_cast<size_t>(element_count(shape)) * tensor.item_size;
      device_.push_back(device_buffer(bytes));
      host_.push_back(pinned_buffer(bytes));
      capacity_.push_back(bytes);
      if (!context_->setTensorAddress(tensor.name.c_str(), device_.back().get())) {
        throw Error("TensorRT refused the buffer of engine tensor " + tensor.name + tensorrt_said());
      }
    }
  }

  ~Slot() {
    if (stream_) cudaStreamSynchronize(stream_.get());
  }
  Slot(const Slot&) = delete;
  Slot& operator=(const Slot&) = delete;

  // feeds: every engine input by name, `batch` rows each (within the profile). The engine's outputs.
  Outputs run(const std::map<std::string, Feed>& feeds, int64_t batch) {
    try {
      return run_unguarded(feeds, batch);
    } catch (...) {
      cudaStreamSynchronize(stream_.get());  // nothing of a failed run may still touch the buffers
      throw;
    }
  }

 private:
  Outputs run_unguarded(const std::map<std::string, Feed>& feeds, int64_t batch) {
    if (batch != batch_) {
      batch_ = -1;
      for (const auto& tensor : tensors_) {
        if (!tensor.is_input) continue;
        const auto& shape = feeds.at(tensor.name).shape;
        nvinfer1::Dims dims{};
        dims.nbDims = static_cast<int32_t>(std::min<size_t>(shape.size(), nvinfer1::Dims::MAX_DIMS));
        for (int32_t i = 0; i < dims.nbDims; ++i) dims.d[i] = shape[static_cast<size_t>(i)];
        if (shape.size() > static_cast<size_t>(nvinfer1::Dims::MAX_DIMS) ||
            !context_->setInputShape(tensor.name.c_str(), dims)) {
          throw Error("engine input " + tensor.name + ": shape " + python_tuple(shape) +
                      " is outside the engine's profile" + tensorrt_said());
        }
      }
      shapes_.clear();
      for (const auto& tensor : tensors_) {
        const auto shape = dims_vector(context_->getTensorShape(tensor.name.c_str()));
        if (std::any_of(shape.begin(), shape.end(), [](int64_t d) { return d < 0; })) {
          throw Error("engine tensor " + tensor.name + ": shape " + python_tuple(shape) +
                      " does not follow from the batch");
        }
        shapes_.push_back(shape);
      }
      batch_ = batch;
    }
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const TensorInfo& tensor = tensors_[i];
      if (!tensor.is_input) continue;
      const Feed& feed = feeds.at(tensor.name);
      const auto count = static_cast<size_t>(element_count(feed.shape));
      const size_t bytes = count * tensor.item_size;
      if (bytes > capacity_[i]) {
        throw Error("engine input " + tensor.name + ": shape " + python_tuple(feed.shape) +
                    " is outside the engine's profile");
      }
      void* host = host_[i].get();
      if ((!feed.is_int && tensor.type == nvinfer1::DataType::kFLOAT) ||
          (feed.is_int && tensor.type == nvinfer1::DataType::kINT64)) {
        std::memcpy(host, feed.data, bytes);  // the engine takes the fed type as is
      } else if (feed.is_int && tensor.type == nvinfer1::DataType::kINT32) {
        const auto* values = static_cast<const int64_t*>(feed.data);
        auto* narrowed = static_cast<int32_t*>(host);
        for (size_t k = 0; k < count; ++k) narrowed[k] = static_cast<int32_t>(values[k]);
      } else {
        throw Error("engine input " + tensor.name +
                    ": the engine takes another element type than textcam feeds "
                    "(float32 images, int64 classes); rebuild the engine");
      }
      cuda_check(cudaMemcpyAsync(device_[i].get(), host, bytes, cudaMemcpyHostToDevice, stream_.get()),
                 "cudaMemcpyAsync");
    }
    if (!context_->enqueueV3(stream_.get())) {
      const std::string said = tensorrt_said();
      throw Error("TensorRT enqueueV3 failed" + (said.empty() ? std::string(" (see TensorRT's log)") : said));
    }
    for (size_t i = 0; i < tensors_.size(); ++i) {
      if (tensors_[i].is_input) continue;
      const size_t bytes = static_cast<size_t>(element_count(shapes_[i])) * tensors_[i].item_size;
      if (bytes > capacity_[i]) {
        throw Error("engine output " + tensors_[i].name + ": shape " + python_tuple(shapes_[i]) +
                    " exceeds the buffer sized for the profile's largest batch");
      }
      cuda_check(cudaMemcpyAsync(host_[i].get(), device_[i].get(), bytes, cudaMemcpyDeviceToHost, stream_.get()),
                 "cudaMemcpyAsync");
    }
    cuda_check(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize");
    Outputs outputs;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const TensorInfo& tensor = tensors_[i];
      if (tensor.is_input) continue;
      Tensor out;
      out.shape = shapes_[i];
      const auto count = static_cast<size_t>(element_count(out.shape));
      if (tensor.type == nvinfer1::DataType::kFLOAT) {
        const auto* values = static_cast<const float*>(host_[i].get());
        out.floats.assign(values, values + count);
      } else {
        out.is_int = true;
        if (tensor.type == nvinfer1::DataType::kINT64) {
          const auto* values = static_cast<const int64_t*>(host_[i].get());
          out.ints.assign(values, values + count);
        } else {  // kINT32
          const auto* values = static_cast<const int32_t*>(host_[i].get());
          out.ints.assign(values, values + count);
        }
      }
      outputs.emplace(tensor.name, std::move(out));
    }
    return outputs;
  }

  // Destroyed in reverse: the context first, then the buffers, then the stream.
  const std::vector<TensorInfo>& tensors_;
  Stream stream_;
  std::vector<DeviceBuffer> device_;  // per tensor, in tensors_ order
  std::vector<PinnedBuffer> host_;
  std::vector<size_t> capacity_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  int64_t batch_ = -1;                        // the batch the input shapes are set for
  std::vector<std::vector<int64_t>> shapes_;  // per tensor, for batch_
};

// Keeps the first `rows` of every output's `size` rows (the padding dropped).
void trim(Outputs& outputs, int64_t rows, int64_t size) {
  for (auto& [name, tensor] : outputs) {
    if (tensor.shape.empty() || tensor.shape[0] != size) {
      throw Error("engine output " + name + ": shape " + python_tuple(tensor.shape) + " does not start with the batch");
    }
    const auto per_row = static_cast<size_t>(element_count(tensor.shape) / size);
    tensor.shape[0] = rows;
    const size_t keep = per_row * static_cast<size_t>(rows);
    if (tensor.is_int) {
      tensor.ints.resize(keep);
    } else {
      tensor.floats.resize(keep);
    }
  }
}

// ---- the runner: an engine and its pool of slots ------------------------------------------------

class TensorRTRunner final : public GraphRunner {
 public:
  TensorRTRunner(const Bundle& bundle, const std::optional<std::string>& precision) {
    const Library& library = load_library();
    const Gpu gpu = open_gpu(kDevice);
    const EngineEntry& entry = choose_engine(bundle, gpu, library.version, precision);
    const std::string hint = rebuild_command(bundle.path(), entry);
    const std::string path = bundle.file(entry.plan, FileKind::kEngine, "rebuild it with `" + hint + "`");
    const std::vector<char> plan = read_plan(path, hint);

    runtime_.reset(static_cast<nvinfer1::IRuntime*>(
        library.create_runtime(static_cast<void*>(static_cast<nvinfer1::ILogger*>(&process_logger())),
                               static_cast<int32_t>(NV_TENSORRT_VERSION))));
    if (!runtime_) {
      throw Error("TensorRT " + library.version + " at " + library.path + " could not start a runtime" +
                  tensorrt_said());
    }
    if (!plan.empty()) engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
    if (!engine_) {
      last_tensorrt_error.clear();
      throw Error(path + ": TensorRT " + library.version +
                  " cannot deserialize it (corrupt, or built by another "
                  "TensorRT version or for another GPU); rebuild with `" +
                  hint + "`");
    }

    std::vector<std::string> input_names, output_names;
    const int32_t count = engine_->getNbIOTensors();
    for (int32_t i = 0; i < count; ++i) {
      const char* name = engine_->getIOTensorName(i);
      TensorInfo tensor;
      tensor.name = name != nullptr ? name : "";
      tensor.is_input = engine_->getTensorIOMode(tensor.name.c_str()) == nvinfer1::TensorIOMode::kINPUT;
      tensor.type = engine_->getTensorDataType(tensor.name.c_str());
      tensor.item_size = item_size(tensor.type);
      (tensor.is_input ? input_names : output_names).push_back(tensor.name);
      tensors_.push_back(tensor);
    }
    const auto& graph = bundle.info().graph;
    auto sorted = [](std::vector<std::string> names) {
      std::sort(names.begin(), names.end());
      return names;
    };
    const bool outputs_found = std::all_of(graph.outputs.begin(), graph.outputs.end(), [&](const std::string& n) {
      return std::find(output_names.begin(), output_names.end(), n) != output_names.end();
    });
    if (sorted(input_names) != sorted(graph.inputs) || !outputs_found) {
      throw Error(path + ": engine tensors " + python_list(input_names) + " -> " + python_list(output_names) +
                  " do not match the bundle's graph " + python_list(graph.inputs) + " -> " +
                  python_list(graph.outputs) + "; rebuild with `" + hint + "`");
    }
    std::vector<std::string> missing;
    for (const auto& name : input_names) {
      if (name != "image" && name != "target_class") missing.push_back(name);
    }
    if (!missing.empty() || input_names.empty()) {
      throw Error("engine inputs " + python_list(missing.empty() ? std::vector<std::string>{"image"} : missing) +
                  " not given; the engine takes " + python_list(input_names));
    }
    for (const auto& tensor : tensors_) {
      if (tensor.item_size == 0) {
        std::string message = path;
        message.append(": engine tensor ").append(tensor.name).append(" has an element type textcam does not read; ");
        message.append("rebuild with `").append(hint).append("`");
        throw Error(message);
      }
    }
    output_names_ = graph.outputs;

    const int32_t profiles = engine_->getNbOptimizationProfiles();
    if (profiles < 1) throw Error(path + ": the engine has no optimization profile; rebuild with `" + hint + "`");
    const char* first = input_names.front().c_str();
    const auto batch_of = [&](nvinfer1::OptProfileSelector select) -> int64_t {
      const nvinfer1::Dims dims = engine_->getProfileShape(first, 0, select);
      return dims.nbDims >= 1 ? dims.d[0] : -1;
    };
    min_batch_ = batch_of(nvinfer1::OptProfileSelector::kMIN);
    max_batch_ = batch_of(nvinfer1::OptProfileSelector::kMAX);
    if (min_batch_ < 1 || max_batch_ < min_batch_) {
      throw Error(path + ": engine input " + input_names.front() +
                  " has no batch range in its profile; rebuild "
                  "with `" +
                  hint + "`");
    }
    for (int32_t index = 0; index < profiles; ++index) {
      slots_.push_back(std::make_unique<Slot>(*engine_, index, tensors_));
      free_.push_back(slots_.back().get());
    }
  }

  ~TensorRTRunner() override {
    cudaSetDevice(kDevice);  // the slots synchronize and free on the engine's device
    free_.clear();
    slots_.clear();
  }
  TensorRTRunner(const TensorRTRunner&) = delete;
  TensorRTRunner& operator=(const TensorRTRunner&) = delete;

  Outputs run(const float* images, int64_t batch, int64_t channels, int64_t height, int64_t width,
              const int64_t* target_class) const override {
    if (batch <= 0) throw Error("empty batch: give at least one image");
    cuda_check(cudaSetDevice(kDevice), "cudaSetDevice");  // the current device is per thread
    const auto image_size = static_cast<size_t>(channels * height * width);
    std::vector<Outputs> pieces;
    std::vector<float> padded_images;
    std::vector<int64_t> padded_classes;
    for (int64_t start = 0; start < batch; start += max_batch_) {  // BatchProfile.chunks
      const int64_t stop = std::min(start + max_batch_, batch);
      const int64_t rows = stop - start;
      const int64_t size = std::max(rows, min_batch_);
      const float* chunk_images = images + static_cast<size_t>(start) * image_size;
      const int64_t* chunk_classes = target_class + start;
      if (size > rows) {  // pad_batch: the last row repeated up to the profile's minimum
        const float* last = chunk_images + static_cast<size_t>(rows - 1) * image_size;
        padded_images.assign(chunk_images, chunk_images + static_cast<size_t>(rows) * image_size);
        padded_classes.assign(chunk_classes, chunk_classes + rows);
        for (int64_t row = rows; row < size; ++row) {
          padded_images.insert(padded_images.end(), last, last + image_size);
          padded_classes.push_back(chunk_classes[rows - 1]);
        }
        chunk_images = padded_images.data();
        chunk_classes = padded_classes.data();
      }
      std::map<std::string, Feed> feeds;
      feeds["image"] = Feed{chunk_images, {size, channels, height, width}, false};
      feeds["target_class"] = Feed{chunk_classes, {size}, true};
      Outputs outputs;
      {
        Lease lease(*this);
        outputs = lease.slot.run(feeds, size);
      }
      if (size > rows) trim(outputs, rows, size);
      pieces.push_back(std::move(outputs));
    }
    Outputs result;
    for (const auto& name : output_names_) {
      Tensor joined = std::move(pieces.front().at(name));
      for (size_t p = 1; p < pieces.size(); ++p) {
        Tensor& piece = pieces[p].at(name);
        if (joined.shape.empty() || piece.shape.empty()) {
          throw Error("engine output " + name + ": a scalar cannot be joined along the batch");
        }
        joined.shape[0] += piece.shape[0];
        joined.floats.insert(joined.floats.end(), piece.floats.begin(), piece.floats.end());
        joined.ints.insert(joined.ints.end(), piece.ints.begin(), piece.ints.end());
      }
      result.emplace(name, std::move(joined));
    }
    return result;
  }

  std::string name() const override { return "tensorrt"; }

 private:
  // A free slot for the lifetime of the lease; waits while every slot is busy.
  struct Lease {
    explicit Lease(const TensorRTRunner& runner) : owner(runner), slot(runner.acquire()) {}
    ~Lease() { owner.release(slot); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    const TensorRTRunner& owner;
    Slot& slot;
  };

  Slot& acquire() const {
    std::unique_lock<std::mutex> lock(mutex_);
    available_.wait(lock, [this] { return !free_.empty(); });
    Slot* slot = free_.back();
    free_.pop_back();
    return *slot;
  }

  void release(Slot& slot) const {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      free_.push_back(&slot);
    }
    available_.notify_one();
  }

  static std::vector<char> read_plan(const std::string& path, const std::string& hint) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) throw Error(path + ": cannot read the engine; rebuild with `" + hint + "`");
    const std::streamoff size = in.tellg();
    std::vector<char> data(static_cast<size_t>(std::max<std::streamoff>(size, 0)));
    in.seekg(0);
    if (!data.empty() && !in.read(data.data(), static_cast<std::streamsize>(data.size()))) {
      throw Error(path + ": cannot read the engine; rebuild with `" + hint + "`");
    }
    return data;
  }

  // Declaration order is destruction order reversed: slots, then the engine, then the runtime.
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::vector<TensorInfo> tensors_;
  std::vector<std::string> output_names_;  // the manifest's graph outputs, in its order
  int64_t min_batch_ = 1, max_batch_ = 1;
  std::vector<std::unique_ptr<Slot>> slots_;
  mutable std::mutex mutex_;
  mutable std::condition_variable available_;
  mutable std::vector<Slot*> free_;
};

}  // namespace

std::unique_ptr<GraphRunner> make_tensorrt_runner(const Bundle& bundle, const Options& options) {
  // no precision asked: the default choice (fp32, else fp16, else bf16), as Python's
  return std::make_unique<TensorRTRunner>(bundle, options.tensorrt_precision.empty()
                                                      ? std::nullopt
                                                      : std::optional<std::string>(options.tensorrt_precision));
}

}  // namespace textcam::detail
