// A service-style C++ host of libtextcam: load the bundle once, explain files from several
// threads sharing one Explainer, print one JSON line per image (in input order).
//
//   textcam_service [--threads N] [--selftest] BUNDLE IMAGE...
//
// Build: see the README's "C++" section (cmake -S cpp -B build/cpp && cmake --build build/cpp).
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "textcam/textcam.hpp"

namespace {

int usage() {
  std::cerr << "usage: textcam_service [--threads N] [--selftest] BUNDLE IMAGE...\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 4;
  bool selftest = false;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
      if (threads < 1) return usage();
    } else if (arg == "--selftest") {
      selftest = true;
    } else if (arg == "--help" || arg == "-h") {
      usage();
      return 0;
    } else {
      args.push_back(arg);
    }
  }
  if (args.empty() || (!selftest && args.size() < 2)) return usage();
  try {
    textcam::Options options;
    options.intra_op_threads = 1;  // parallelism comes from the host's threads
    options.allow_spinning = false;
    const textcam::Explainer explainer(args[0], options);  // loaded once, shared by every thread
    if (selftest) {
      const auto report = explainer.selftest();
      std::cout << report.table();
      return report.passed() ? 0 : 1;
    }
    const std::vector<std::string> images(args.begin() + 1, args.end());
    std::vector<std::string> lines(images.size());
    std::atomic<size_t> next{0};
    std::vector<std::thread> workers;
    workers.reserve(static_cast<size_t>(threads));
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&] {
        for (size_t i = next++; i < images.size(); i = next++) {
          try {
            lines[i] = textcam::to_json(explainer.explain_file(images[i]));
          } catch (const textcam::Error& error) {
            lines[i] = nlohmann::json{{"source", images[i]}, {"error", error.what()}}.dump(
                -1, ' ', false, nlohmann::json::error_handler_t::replace);
          }
        }
      });
    }
    for (auto& worker : workers) worker.join();
    for (const auto& line : lines) std::cout << line << "\n";
  } catch (const textcam::Error& error) {
    std::cerr << "textcam_service: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
