// textcam_native: thin nanobind bindings over libtextcam. The Python runtime
// (textcam.runtime.native) turns these dicts and arrays into its own Explanation objects; the
// kernels (preprocess, select, ...) are exposed so tests can hold each step to numpy's.
// textcam::Error becomes textcam.TextcamError; the GIL is released while the core works.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/array.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "concepts.hpp"
#include "heatmap.hpp"
#include "image_decode.hpp"
#include "preprocess.hpp"
#include "runner.hpp"
#include "textcam/textcam.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using FloatArray = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using ByteArray = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;
using IdArray = nb::ndarray<const int64_t, nb::c_contig, nb::device::cpu>;

// A vector handed to numpy without a copy: the array owns it.
template <typename T>
nb::object to_numpy(std::vector<T>&& values, std::initializer_list<size_t> shape) {
  auto* owned = new std::vector<T>(std::move(values));
  nb::capsule owner(owned, [](void* pointer) noexcept { delete static_cast<std::vector<T>*>(pointer); });
  return nb::ndarray<nb::numpy, T>(owned->data(), shape, owner).cast();
}

nb::dict explanation_dict(textcam::Explanation&& e) {
  nb::dict out;
  out["class_index"] = e.class_index;
  out["label"] = e.label;
  out["score"] = e.score;
  const size_t classes = e.logits.size();
  const size_t channels = e.channel_weights.size();
  out["logits"] = to_numpy(std::move(e.logits), {classes});
  out["heatmap"] = to_numpy(std::move(e.heatmap), {static_cast<size_t>(e.height), static_cast<size_t>(e.width)});
  out["channel_weights"] = to_numpy(std::move(e.channel_weights), {channels});
  out["channel_activation"] = to_numpy(std::move(e.channel_activation), {channels});
  nb::list concepts;
  for (auto& c : e.concepts) concepts.append(nb::make_tuple(c.phrase, c.phrase_id, c.score, c.weight));
  out["concepts"] = concepts;
  nb::list groups;
  for (auto& g : e.groups) {
    nb::dict group;
    group["phrase"] = g.phrase;
    group["phrase_id"] = g.phrase_id;
    const size_t members = g.channels.size();
    group["channels"] = to_numpy(std::move(g.channels), {members});
    group["share"] = g.share;
    group["saliency"] = to_numpy(std::move(g.saliency),
                                 {static_cast<size_t>(g.saliency_height), static_cast<size_t>(g.saliency_width)});
    group["heatmap"] = to_numpy(std::move(g.heatmap), {static_cast<size_t>(e.height), static_cast<size_t>(e.width)});
    groups.append(group);
  }
  out["groups"] = groups;
  out["source"] = e.source.empty() ? nb::none() : nb::cast(e.source);
  return out;
}

nb::list explanation_list(std::vector<textcam::Explanation>&& results) {
  nb::list out;
  for (auto& result : results) out.append(explanation_dict(std::move(result)));
  return out;
}

textcam::ConceptOptions concept_options(const nb::dict& given) {
  textcam::ConceptOptions c;
  for (auto [key, value] : given) {
    const std::string name = nb::cast<std::string>(key);
    if (value.is_none()) continue;
    if (name == "beta") {
      c.beta = nb::cast<std::string>(value);
    } else if (name == "top_k") {
      c.top_k = nb::cast<int>(value);
    } else if (name == "candidates") {
      c.candidates = nb::cast<int>(value);
    } else if (name == "steps") {
      c.steps = nb::cast<int>(value);
    } else if (name == "group_channels") {
      c.group_channels = nb::cast<int>(value);
    } else if (name == "l1") {
      c.l1 = nb::cast<double>(value);
    } else if (name == "l2") {
      c.l2 = nb::cast<double>(value);
    } else if (name == "center") {
      c.center = nb::cast<bool>(value);
    } else {
      throw textcam::Error("concepts: no setting '" + name + "'");
    }
  }
  return c;
}

textcam::detail::InputSection input_section(const nb::dict& spec) {
  textcam::detail::InputSection input;
  input.height = nb::cast<int>(spec["height"]);
  input.width = nb::cast<int>(spec["width"]);
  const auto mean = nb::cast<std::vector<double>>(spec["mean"]);
  const auto std_ = nb::cast<std::vector<double>>(spec["std"]);
  if (mean.size() != 3 || std_.size() != 3) throw textcam::Error("input: mean and std need three values");
  std::copy(mean.begin(), mean.end(), input.mean.begin());
  std::copy(std_.begin(), std_.end(), input.std.begin());
  input.resize = nb::cast<std::string>(spec["resize"]);
  input.scale = nb::cast<double>(spec["scale"]);
  return input;
}

textcam::detail::Geometry geometry_from(int width, int height, const std::array<double, 4>& box) {
  textcam::detail::Geometry geometry;
  geometry.width = width;
  geometry.height = height;
  geometry.box = box;
  return geometry;
}

}  // namespace

NB_MODULE(textcam_native, m) {
  m.doc() = "libtextcam, textcam's C++ core (see textcam.runtime.native)";
  m.attr("__version__") = textcam::version();

  // textcam.TextcamError when textcam is importable (always, under textcam.runtime)
  static PyObject* error_type = nullptr;
  try {
    error_type = nb::module_::import_("textcam.errors").attr("TextcamError").inc_ref().ptr();
  } catch (const nb::python_error&) {
    error_type = PyErr_NewException("textcam_native.TextcamError", PyExc_RuntimeError, nullptr);
  }
  m.attr("TextcamError") = nb::handle(error_type);
  nb::register_exception_translator([](const std::exception_ptr& thrown, void*) {
    try {
      std::rethrow_exception(thrown);
    } catch (const textcam::Error& error) {
      PyErr_SetString(error_type, error.what());
    }
  });

  nb::class_<textcam::Explainer>(m, "Explainer")
      .def(
          "__init__",
          [](textcam::Explainer* self, const std::string& bundle, const std::string& backend, int intra_op_threads,
             bool allow_spinning, const std::string& onnxruntime_library, int batch_size, int64_t max_pixels,
             bool use_fused, bool verify_checksums, const nb::dict& concepts, const std::string& tensorrt_precision) {
            textcam::Options options;
            options.backend = backend;
            options.intra_op_threads = intra_op_threads;
            options.allow_spinning = allow_spinning;
            options.onnxruntime_library = onnxruntime_library;
            options.batch_size = batch_size;
            options.max_pixels = max_pixels;
            options.use_fused = use_fused;
            options.verify_checksums = verify_checksums;
            options.concepts = concept_options(concepts);
            options.tensorrt_precision = tensorrt_precision;
            nb::gil_scoped_release released;
            new (self) textcam::Explainer(bundle, options);
          },
          "bundle"_a, "backend"_a = "onnxruntime", "intra_op_threads"_a = 0, "allow_spinning"_a = true,
          "onnxruntime_library"_a = "", "batch_size"_a = 16, "max_pixels"_a = 72000000, "use_fused"_a = true,
          "verify_checksums"_a = true, "concepts"_a = nb::dict(), "tensorrt_precision"_a = "")
      .def(
          "explain_files",
          [](const textcam::Explainer& self, const std::vector<std::string>& paths, const std::vector<int64_t>& classes,
             bool groups) {
            std::vector<textcam::FileResult> results;
            {
              nb::gil_scoped_release released;
              results = self.explain_files(paths, classes, groups);
            }
            nb::list out;
            for (auto& result : results) {
              out.append(nb::make_tuple(
                  result.path,
                  result.explanation ? nb::object(explanation_dict(std::move(*result.explanation))) : nb::none(),
                  result.error));
            }
            return out;
          },
          "paths"_a, "class_index"_a = std::vector<int64_t>(), "groups"_a = false)
      .def(
          "explain_images",
          [](const textcam::Explainer& self, const std::vector<ByteArray>& images, const std::vector<int64_t>& classes,
             bool groups) {
            std::vector<textcam::ImageView> views;
            for (const auto& image : images) {
              if (image.ndim() != 2 && image.ndim() != 3) throw textcam::Error("image array: expected HxW or HxWxC");
              const int channels = image.ndim() == 3 ? static_cast<int>(image.shape(2)) : 1;
              views.push_back(
                  {image.data(), static_cast<int>(image.shape(0)), static_cast<int>(image.shape(1)), channels});
            }
            std::vector<textcam::Explanation> results;
            {
              nb::gil_scoped_release released;
              results = self.explain_images(views, classes, groups);
            }
            return explanation_list(std::move(results));
          },
          "images"_a, "class_index"_a = std::vector<int64_t>(), "groups"_a = false)
      .def(
          "explain_batch",
          [](const textcam::Explainer& self, const FloatArray& batch, const std::vector<int64_t>& classes,
             bool groups) {
            const auto& summary = self.summary();
            if (batch.ndim() != 4 || batch.shape(1) != 3 || static_cast<int>(batch.shape(2)) != summary.input_height ||
                static_cast<int>(batch.shape(3)) != summary.input_width) {
              throw textcam::Error("float batch: expected float32 [B, 3, " + std::to_string(summary.input_height) +
                                   ", " + std::to_string(summary.input_width) + "]");
            }
            std::vector<textcam::Explanation> results;
            {
              nb::gil_scoped_release released;
              results = self.explain_batch(batch.data(), static_cast<int64_t>(batch.shape(0)), classes, groups);
            }
            return explanation_list(std::move(results));
          },
          "batch"_a, "class_index"_a = std::vector<int64_t>(), "groups"_a = false)
      .def("selftest",
           [](const textcam::Explainer& self) {
             textcam::SelftestReport report;
             {
               nb::gil_scoped_release released;
               report = self.selftest();
             }
             nb::list rows;
             for (const auto& row : report.rows) {
               rows.append(nb::make_tuple(row.stage, row.output, row.measure, row.value, row.tolerance, row.passed));
             }
             return nb::make_tuple(report.images, rows);
           })
      .def_prop_ro("summary", [](const textcam::Explainer& self) {
        const auto& s = self.summary();
        nb::dict out;
        out["path"] = s.path;
        out["classes"] = s.classes;
        out["method"] = s.method;
        out["layer"] = s.layer;
        out["channels"] = s.channels;
        out["input_height"] = s.input_height;
        out["input_width"] = s.input_width;
        out["has_semantics"] = s.has_semantics;
        out["fused"] = s.fused;
        out["backend"] = s.backend;
        out["onnxruntime_version"] = s.onnxruntime_version;
        return out;
      });

  // ---- the steps, one by one (parity tests hold each to numpy's) ------------------------------

  m.def(
      "load_image",
      [](const std::string& path, int64_t max_pixels) {
        textcam::detail::RgbImage image;
        {
          nb::gil_scoped_release released;
          image = textcam::detail::load_image(path, max_pixels);
        }
        const auto h = static_cast<size_t>(image.height);
        const auto w = static_cast<size_t>(image.width);
        return to_numpy(std::move(image.pixels), {h, w, 3});
      },
      "path"_a, "max_pixels"_a = 72000000);

  m.def(
      "preprocess",
      [](const ByteArray& rgb, const nb::dict& spec) {
        if (rgb.ndim() != 3 || rgb.shape(2) != 3) throw textcam::Error("preprocess: expected uint8 HxWx3");
        const auto input = input_section(spec);
        textcam::detail::RgbImage image;
        image.height = static_cast<int>(rgb.shape(0));
        image.width = static_cast<int>(rgb.shape(1));
        image.pixels.assign(rgb.data(), rgb.data() + rgb.size());
        std::vector<float> out(3 * static_cast<size_t>(input.height) * static_cast<size_t>(input.width));
        const auto geometry = textcam::detail::preprocess(image, input, out.data());
        const auto box = geometry.box;
        return nb::make_tuple(
            to_numpy(std::move(out), {3, static_cast<size_t>(input.height), static_cast<size_t>(input.width)}),
            nb::make_tuple(box[0], box[1], box[2], box[3]));
      },
      "rgb"_a, "input"_a);

  m.def(
      "map_to_original",
      [](const FloatArray& cam, int width, int height, const std::array<double, 4>& box) {
        const auto geometry = geometry_from(width, height, box);
        auto full = textcam::detail::map_to_original(cam.data(), static_cast<int>(cam.shape(0)),
                                                     static_cast<int>(cam.shape(1)), geometry);
        return to_numpy(std::move(full), {static_cast<size_t>(height), static_cast<size_t>(width)});
      },
      "cam"_a, "width"_a, "height"_a, "box"_a);

  m.def(
      "select",
      [](const FloatArray& weights, const FloatArray& activation, const FloatArray& S, const FloatArray& T,
         const nb::dict& settings, std::optional<IdArray> among) {
        const auto resolved =
            textcam::detail::ConceptSettings::resolve(nlohmann::json::object(), concept_options(settings));
        const int batch = static_cast<int>(weights.shape(0));
        const int channels = static_cast<int>(weights.shape(1));
        const int dim = static_cast<int>(S.shape(1));
        const int vocabulary = static_cast<int>(T.shape(0));
        std::vector<float> s(S.data(), S.data() + S.size());
        std::vector<float> t(T.data(), T.data() + T.size());
        const auto mean = textcam::detail::vocabulary_mean(t, vocabulary, dim);
        const int64_t* among_ids = among ? among->data() : nullptr;
        const int among_n = among ? static_cast<int>(among->shape(1)) : 0;
        textcam::detail::Selection selection;
        {
          nb::gil_scoped_release released;
          selection = textcam::detail::select_for_outputs(weights.data(), activation.data(), batch, channels, s, t, dim,
                                                          resolved, mean, among_ids, among_n);
        }
        const auto rows = static_cast<size_t>(selection.rows);
        const auto k = static_cast<size_t>(selection.k);
        return nb::make_tuple(to_numpy(std::move(selection.ids), {rows, k}),
                              to_numpy(std::move(selection.scores), {rows, k}),
                              to_numpy(std::move(selection.weights), {rows, k}));
      },
      "weights"_a, "activation"_a, "S"_a, "T"_a, "settings"_a = nb::dict(), "among"_a = nb::none());

  m.def(
      "channel_groups",
      [](const FloatArray& weights_row, const FloatArray& activation_row, const FloatArray& activations,
         const FloatArray& S, const FloatArray& T, const std::vector<int64_t>& selected, int max_channels) {
        std::vector<float> s(S.data(), S.data() + S.size());
        std::vector<float> t(T.data(), T.data() + T.size());
        const int channels = static_cast<int>(activations.shape(0));
        const int h = static_cast<int>(activations.shape(1));
        const int w = static_cast<int>(activations.shape(2));
        auto groups =
            textcam::detail::channel_groups(weights_row.data(), activation_row.data(), activations.data(), channels, h,
                                            w, s, t, static_cast<int>(S.shape(1)), selected, max_channels);
        nb::list out;
        for (auto& group : groups) {
          const size_t members = group.channels.size();
          out.append(
              nb::make_tuple(group.phrase_id, to_numpy(std::move(group.channels), {members}), group.share,
                             to_numpy(std::move(group.saliency), {static_cast<size_t>(h), static_cast<size_t>(w)})));
        }
        return out;
      },
      "weights_row"_a, "activation_row"_a, "activations"_a, "S"_a, "T"_a, "selected"_a, "max_channels"_a = 64);
}
