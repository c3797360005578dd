// ONNX Runtime, loaded at run time (dlopen) from the installed onnxruntime: never linked, so one
// binary follows whatever onnxruntime the user has (as onnxruntime-genai does). The headers are
// of C API level ORT_API_VERSION; any library at that level or newer serves them.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <sstream>

#include "runner.hpp"
#include "textcam/textcam.hpp"

namespace textcam::detail {
namespace {

constexpr const char* kMinimumVersion = "1.21";  // the headers' release: ORT_API_VERSION 21

struct Runtime {
  const OrtApi* api = nullptr;
  std::string library;
  std::string version;
  std::unique_ptr<Ort::Env> env;
};

std::mutex runtime_mutex;
Runtime* loaded = nullptr;  // loaded once per process, never unloaded (ORT does not support it)

std::vector<std::string> candidate_libraries(const std::string& explicit_path) {
  if (!explicit_path.empty()) return {explicit_path};
  std::vector<std::string> candidates;
  // NOLINTNEXTLINE(concurrency-mt-unsafe): no thread-safe getenv exists; the library never calls setenv
  if (const char* env = std::getenv("TEXTCAM_ONNXRUNTIME_LIBRARY"); env != nullptr && *env != '\0') {
    return {env};
  }
  const std::string built_in = TEXTCAM_DEFAULT_ONNXRUNTIME_LIBRARY;
  if (!built_in.empty()) candidates.push_back(built_in);
  candidates.emplace_back("libonnxruntime.so.1");
  candidates.emplace_back("libonnxruntime.so");
  return candidates;
}

std::string join(const std::vector<std::string>& items, const char* separator) {
  std::ostringstream out;
  for (size_t i = 0; i < items.size(); ++i) out << (i ? separator : "") << items[i];
  return out.str();
}

Runtime& load_runtime(const std::string& explicit_path) {
  std::lock_guard<std::mutex> lock(runtime_mutex);
  if (loaded != nullptr) return *loaded;
  const auto candidates = candidate_libraries(explicit_path);
  std::vector<std::string> problems;
  for (const auto& candidate : candidates) {
    void* handle = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      // NOLINTNEXTLINE(concurrency-mt-unsafe): under runtime_mutex; glibc keeps dlerror's state per thread
      const char* why = dlerror();
      problems.push_back(candidate + " (" + (why ? why : "not found") + ")");
      continue;
    }
    using GetApiBase = const OrtApiBase* (*)();
    auto get_base = reinterpret_cast<GetApiBase>(dlsym(handle, "OrtGetApiBase"));
    if (get_base == nullptr) {
      problems.push_back(candidate + " (no OrtGetApiBase: not ONNX Runtime)");
      continue;  // handle stays open: harmless, and closing foreign libraries can be unsafe
    }
    const OrtApiBase* base = get_base();
    const char* version = base->GetVersionString();
    const OrtApi* api = base->GetApi(ORT_API_VERSION);
    if (api == nullptr) {
      throw Error("ONNX Runtime " + std::string(version ? version : "?") + " at " + candidate + " is older than the " +
                  kMinimumVersion +
                  " textcam's native core needs; "
                  "pip install 'onnxruntime>=" +
                  kMinimumVersion +
                  "' (or point TEXTCAM_ONNXRUNTIME_LIBRARY at a newer "
                  "libonnxruntime.so)");
    }
    Ort::InitApi(api);
    auto runtime = std::make_unique<Runtime>();
    runtime->api = api;
    runtime->library = candidate;
    runtime->version = version ? version : "";
    runtime->env = std::make_unique<Ort::Env>(ORT_LOGGING_LEVEL_ERROR, "textcam");
    loaded = runtime.release();
    return *loaded;
  }
  throw Error("ONNX Runtime: no libonnxruntime could be loaded (needs " + std::string(kMinimumVersion) +
              " or newer); looked at " + join(problems, ", ") +
              "; pip install onnxruntime, or set TEXTCAM_ONNXRUNTIME_LIBRARY to its libonnxruntime.so");
}

std::string first_line(const std::string& text) {
  const auto end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

class OnnxRuntimeRunner final : public GraphRunner {
 public:
  OnnxRuntimeRunner(const std::string& model_path, const std::vector<std::string>& expected_inputs,
                    const OrtOptions& options)
      : backend_(options.backend) {
    Runtime& runtime = load_runtime(options.library);
    Ort::SessionOptions session_options;
    session_options.SetLogSeverityLevel(3);
    if (options.intra_op_threads < 0) {
      throw Error("intra_op_threads=" + std::to_string(options.intra_op_threads) + ": expected a positive number");
    }
    if (options.intra_op_threads > 0) session_options.SetIntraOpNumThreads(options.intra_op_threads);
    session_options.AddConfigEntry("session.intra_op.allow_spinning", options.allow_spinning ? "1" : "0");
    add_providers(session_options);
    try {
      session_ = std::make_unique<Ort::Session>(*runtime.env, model_path.c_str(), session_options);
    } catch (const Ort::Exception& exc) {
      throw Error(model_path + ": ONNX Runtime cannot load it (" + first_line(exc.what()) +
                  "); re-run `textcam export`");
    }
    Ort::AllocatorWithDefaultOptions allocator;
    for (size_t i = 0; i < session_->GetInputCount(); ++i) {
      input_names_.emplace_back(session_->GetInputNameAllocated(i, allocator).get());
    }
    for (size_t i = 0; i < session_->GetOutputCount(); ++i) {
      output_names_.emplace_back(session_->GetOutputNameAllocated(i, allocator).get());
    }
    // Run() takes C strings: made once here (the strings above never change after this)
    input_pointers_.reserve(input_names_.size());
    output_pointers_.reserve(output_names_.size());
    for (const auto& name : input_names_) input_pointers_.push_back(name.c_str());
    for (const auto& name : output_names_) output_pointers_.push_back(name.c_str());
    if (input_names_ != expected_inputs) {
      throw Error(model_path + ": graph inputs " + python_list(input_names_) + " differ from the manifest's " +
                  python_list(expected_inputs) + "; re-run `textcam export`");
    }
  }

  Outputs run(const float* images, int64_t batch, int64_t channels, int64_t height, int64_t width,
              const int64_t* target_class) const override {
    auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    const std::array<int64_t, 4> image_shape{batch, channels, height, width};
    const std::array<int64_t, 1> class_shape{batch};
    std::array<Ort::Value, 2> inputs{
        Ort::Value::CreateTensor<float>(memory, const_cast<float*>(images),
                                        static_cast<size_t>(batch * channels * height * width), image_shape.data(),
                                        image_shape.size()),
        Ort::Value::CreateTensor<int64_t>(memory, const_cast<int64_t*>(target_class), static_cast<size_t>(batch),
                                          class_shape.data(), class_shape.size())};
    std::vector<Ort::Value> values;
    try {
      values = session_->Run(Ort::RunOptions{nullptr}, input_pointers_.data(), inputs.data(), inputs.size(),
                             output_pointers_.data(), output_pointers_.size());
    } catch (const Ort::Exception& exc) {
      throw Error("ONNX Runtime failed to run the graph (" + first_line(exc.what()) + ")");
    }
    Outputs outputs;
    for (size_t i = 0; i < values.size(); ++i) {
      auto info = values[i].GetTensorTypeAndShapeInfo();
      Tensor tensor;
      tensor.shape = info.GetShape();
      const size_t count = info.GetElementCount();
      switch (info.GetElementType()) {
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: {
          const float* data = values[i].GetTensorData<float>();
          tensor.floats.assign(data, data + count);
          break;
        }
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: {
          const int64_t* data = values[i].GetTensorData<int64_t>();
          tensor.ints.assign(data, data + count);
          tensor.is_int = true;
          break;
        }
        default:
          throw Error("the graph returned output '" + output_names_[i] +
                      "' of an element type textcam does not read; re-export the bundle");
      }
      outputs.emplace(output_names_[i], std::move(tensor));
    }
    return outputs;
  }

  std::string name() const override { return backend_; }

 private:
  static std::string python_list(const std::vector<std::string>& names) {
    std::vector<std::string> quoted;
    quoted.reserve(names.size());
    for (const auto& name : names) quoted.push_back("'" + name + "'");
    return "[" + join(quoted, ", ") + "]";
  }

  void add_providers(Ort::SessionOptions& session_options) const {
    if (backend_ == "onnxruntime") return;
    const std::string wanted = backend_ == "onnxruntime-cuda" ? "CUDAExecutionProvider" : "TensorrtExecutionProvider";
    const auto available = Ort::GetAvailableProviders();
    if (std::find(available.begin(), available.end(), wanted) == available.end()) {
      throw Error("backend '" + backend_ + "': not available here (this onnxruntime has no " + wanted +
                  "; available: " + join(available, ", ") + "); install onnxruntime-gpu on a machine with a GPU");
    }
    try {
      if (backend_ == "onnxruntime-tensorrt") {
        OrtTensorRTProviderOptionsV2* trt = nullptr;
        Ort::ThrowOnError(Ort::GetApi().CreateTensorRTProviderOptions(&trt));
        std::unique_ptr<OrtTensorRTProviderOptionsV2, void (*)(OrtTensorRTProviderOptionsV2*)> owned(
            trt, Ort::GetApi().ReleaseTensorRTProviderOptions);
        session_options.AppendExecutionProvider_TensorRT_V2(*owned);
      }
      // CUDA runs what TensorRT does not take, and everything for onnxruntime-cuda
      OrtCUDAProviderOptionsV2* cuda = nullptr;
      Ort::ThrowOnError(Ort::GetApi().CreateCUDAProviderOptions(&cuda));
      std::unique_ptr<OrtCUDAProviderOptionsV2, void (*)(OrtCUDAProviderOptionsV2*)> owned_cuda(
          cuda, Ort::GetApi().ReleaseCUDAProviderOptions);
      session_options.AppendExecutionProvider_CUDA_V2(*owned_cuda);
    } catch (const Ort::Exception& exc) {
      throw Error("backend '" + backend_ + "': ONNX Runtime cannot start it (" + first_line(exc.what()) + ")");
    }
  }

  std::string backend_;
  std::unique_ptr<Ort::Session> session_;
  std::vector<std::string> input_names_;
  std::vector<std::string> output_names_;
  std::vector<const char*> input_pointers_;
  std::vector<const char*> output_pointers_;
};

}  // namespace

std::unique_ptr<GraphRunner> make_onnxruntime_runner(const std::string& model_path,
                                                     const std::vector<std::string>& expected_inputs,
                                                     const OrtOptions& options) {
  return std::make_unique<OnnxRuntimeRunner>(model_path, expected_inputs, options);
}

std::string onnxruntime_version() {
  std::lock_guard<std::mutex> lock(runtime_mutex);
  return loaded ? loaded->version : std::string();
}

}  // namespace textcam::detail
