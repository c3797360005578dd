// Bundle: runtime/bundle.py's Bundle.open and Bundle.file, with the same checks and messages.
#include "bundle.hpp"

#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "os_error.hpp"
#include "python_text.hpp"
#include "sha256.hpp"
#include "textcam/textcam.hpp"

namespace textcam::detail {

namespace {

// Per FileKind (in its order): the manifest's name for the kind, what errors call it, their advice.
struct KindText {
  const char* name;
  const char* what;
  const char* hint;
};

const KindText& kind_text(FileKind kind) {
  static const KindText table[] = {
      {"model", "graph", "re-run `textcam export`"},
      {"semantics", "semantics store", "re-run `textcam semantics`"},
      {"fused_graph", "fused ranking graph", "re-run `textcam semantics`"},
      {"engine", "TensorRT engine", "rebuild it with `textcam build-engine`"},
      {"engine_onnx", "engine's reduced graph", "rebuild it with `textcam build-engine`"},
      {"selftest", "self-test data", "re-run `textcam export` (or `textcam semantics`)"},
  };
  return table[static_cast<size_t>(kind)];
}

}  // namespace

const char* file_kind_name(FileKind kind) { return kind_text(kind).name; }

namespace {

// ---- posixpath, as Python 3.11 writes it --------------------------------------------------

std::string pjoin(const std::string& a, const std::string& b) {
  if (!b.empty() && b[0] == '/') return b;
  if (a.empty() || a.back() == '/') return a + b;
  return a + "/" + b;
}

std::pair<std::string, std::string> psplit(const std::string& p) {
  const size_t i = p.rfind('/') + 1;  // npos + 1 == 0
  std::string head = p.substr(0, i);
  const std::string tail = p.substr(i);
  if (!head.empty() && head.find_first_not_of('/') != std::string::npos) {
    while (!head.empty() && head.back() == '/') head.pop_back();
  }
  return {head, tail};
}

std::string pnormpath(const std::string& path) {
  if (path.empty()) return ".";
  int initial = path[0] == '/' ? 1 : 0;
  if (initial == 1 && path.size() >= 2 && path[1] == '/' && (path.size() == 2 || path[2] != '/')) initial = 2;
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    const std::string comp = path.substr(start, end - start);
    start = end + 1;
    if (comp.empty() || comp == ".") continue;
    if (comp != ".." || (initial == 0 && parts.empty()) || (!parts.empty() && parts.back() == "..")) {
      parts.push_back(comp);
    } else if (!parts.empty()) {
      parts.pop_back();
    }
  }
  std::string out(static_cast<size_t>(initial), '/');
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? "/" : "") + parts[i];
  return out.empty() ? "." : out;
}

std::pair<std::string, bool> join_realpath(std::string path, std::string rest,
                                           std::map<std::string, std::optional<std::string>>& seen) {
  if (!rest.empty() && rest[0] == '/') {
    rest = rest.substr(1);
    path = "/";
  }
  while (!rest.empty()) {
    const size_t slash = rest.find('/');
    std::string name = rest.substr(0, slash);
    rest = slash == std::string::npos ? std::string() : rest.substr(slash + 1);
    if (name.empty() || name == ".") continue;
    if (name == "..") {
      if (!path.empty()) {
        auto [head, tail] = psplit(path);
        path = head;
        if (tail == "..") path = pjoin(pjoin(path, ".."), "..");
      } else {
        path = "..";
      }
      continue;
    }
    const std::string newpath = pjoin(path, name);
    struct stat info {};
    const bool is_link = ::lstat(newpath.c_str(), &info) == 0 && S_ISLNK(info.st_mode);
    if (!is_link) {
      path = newpath;
      continue;
    }
    auto found = seen.find(newpath);
    if (found != seen.end()) {
      if (found->second) {
        path = *found->second;
        continue;
      }
      return {pjoin(newpath, rest), false};  // a symlink loop
    }
    seen[newpath] = std::nullopt;
    std::string target(PATH_MAX, '\0');
    const ssize_t length = ::readlink(newpath.c_str(), target.data(), target.size());
    target.resize(length < 0 ? 0 : static_cast<size_t>(length));
    auto [resolved, ok] = join_realpath(path, target, seen);
    if (!ok) return {pjoin(resolved, rest), false};
    path = resolved;
    seen[newpath] = path;
  }
  return {path, true};
}

std::string pcommonpath(const std::string& a, const std::string& b) {
  auto split = [](const std::string& p) {
    std::vector<std::string> parts;
    size_t start = 0;
    while (start <= p.size()) {
      size_t end = p.find('/', start);
      if (end == std::string::npos) end = p.size();
      std::string comp = p.substr(start, end - start);
      if (!comp.empty() && comp != ".") parts.push_back(comp);
      start = end + 1;
    }
    return parts;
  };
  const auto pa = split(a);
  const auto pb = split(b);
  std::string out = !a.empty() && a[0] == '/' ? "/" : "";
  for (size_t i = 0; i < pa.size() && i < pb.size() && pa[i] == pb[i]; ++i) out += (i ? "/" : "") + pa[i];
  return out;
}

}  // namespace

std::string python_realpath(const std::string& path) {
  std::map<std::string, std::optional<std::string>> seen;
  std::string resolved = join_realpath("", path, seen).first;
  if (resolved.empty() || resolved[0] != '/') {
    std::string cwd(PATH_MAX, '\0');
    if (::getcwd(cwd.data(), cwd.size()) != nullptr) {
      cwd.resize(std::strlen(cwd.c_str()));
      resolved = pjoin(cwd, resolved);
    }
  }
  return pnormpath(resolved);
}

Bundle Bundle::open(const std::string& dir, bool verify) {
  Bundle bundle;
  bundle.path_ = python_path(dir);
  bundle.info_ = parse_manifest(read_manifest_ordered(dir), join_path(dir, "manifest.json"));
  bundle.verify_ = verify;
  if (verify) bundle.model_path();
  return bundle;
}

std::string Bundle::file(const FileRef& ref, FileKind kind, const std::string& hint) const {
  {
    std::lock_guard<std::mutex> lock(checked_->mutex);
    auto found = checked_->paths.find(ref.file);
    if (found != checked_->paths.end()) return found->second;
  }
  const std::string what = kind_text(kind).what;
  const std::string advice = hint.empty() ? kind_text(kind).hint : hint;
  std::string path = join_path(path_, ref.file);  // not const: returned by move
  const std::string root = python_realpath(path_);
  const std::string real = python_realpath(path);
  if (pcommonpath(root, real) != root || real == root) {
    throw Error(path + ": the " + what + " named in the manifest lies outside the bundle; " + advice);
  }
  struct stat info {};
  if (::stat(real.c_str(), &info) != 0) {
    const int code = errno;
    if (code == ENOENT) throw Error(path + ": the " + what + " named in the manifest is missing; " + advice);
    throw Error(path + ": cannot read the " + what + " (" + errno_text(code) + ")");
  }
  if (!S_ISREG(info.st_mode)) throw Error(path + ": the " + what + " is not a regular file; " + advice);
  const int64_t cap = file_cap(kind);
  const int64_t size = static_cast<int64_t>(info.st_size);
  if (size > cap || (ref.size_bytes && size != *ref.size_bytes)) {
    const std::string said =
        ref.size_bytes ? "the manifest says " + with_commas(*ref.size_bytes) : "the limit is " + with_commas(cap);
    throw Error(path + ": " + with_commas(size) + " bytes, " + said + " (truncated or replaced); " + advice);
  }
  if (verify_ && sha256_file(real, size) != ref.sha256) {
    throw Error(path + ": checksum differs from the manifest (file changed); " + advice);
  }
  std::lock_guard<std::mutex> lock(checked_->mutex);
  checked_->paths.emplace(ref.file, path);
  return path;
}

}  // namespace textcam::detail
