// A bundle directory opened for reading: the typed manifest and every file it names, resolved
// only through Bundle::file (confined to the directory, a regular file, the recorded size, the
// recorded sha256), as textcam.runtime.bundle.Bundle does.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "manifest.hpp"

namespace textcam::detail {

class Bundle {
 public:
  // Reads and validates the manifest; with verify, checks model.onnx now. Without verify no file's
  // sha256 is computed (a host that already checked them, e.g. the Python runtime); confinement, file
  // type and size are always checked.
  static Bundle open(const std::string& dir, bool verify = true);

  const std::string& path() const { return path_; }  // as Python prints it (see python_text.hpp)
  const Manifest& info() const { return info_; }

  // The checked path of a file the manifest names (inside the bundle, a regular file of the recorded
  // size, and with verify the recorded sha256); `hint` replaces the generic advice.
  std::string file(const FileRef& ref, FileKind kind, const std::string& hint = "") const;

  // The graph, with its external data (if any) checked too: ONNX Runtime reads it beside the graph.
  std::string model_path() const {
    if (info_.model_external_data) file(*info_.model_external_data, FileKind::kModel);
    return file(info_.model, FileKind::kModel);
  }

 private:
  // Files already checked ({relative name: path}), shared by copies of the Bundle as Python's
  // with_graph shares _checked; guarded by its mutex (file() may run on several threads).
  struct Checked {
    std::mutex mutex;
    std::map<std::string, std::string> paths;
  };

  std::string path_;
  Manifest info_;
  bool verify_ = true;
  std::shared_ptr<Checked> checked_ = std::make_shared<Checked>();
};

// The name runtime/bundle.py gives each kind ("model", "semantics", "fused_graph", ...).
const char* file_kind_name(FileKind kind);

// os.path.realpath(path) (strict=False) as Python computes it: symlinks resolved component by
// component, missing components kept, loops left unresolved; absolute and normalized.
std::string python_realpath(const std::string& path);

}  // namespace textcam::detail
