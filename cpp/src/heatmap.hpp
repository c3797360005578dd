// The heatmap math of textcam.runtime.heatmap: the graph's map finish (for channel-group maps)
// and the map back onto the original image (Pillow's float BILINEAR, pass order as Pillow 13).
#pragma once

#include <vector>

#include "preprocess.hpp"

namespace textcam::detail {

// float32 [height, width]: Pillow's BILINEAR resize of a float32 [in_h, in_w] map.
std::vector<float> resize_map(const float* map, int in_h, int in_w, int height, int width);

// The graph's [H, W] map onto the original image through geometry's box; clamped to [0, 1].
std::vector<float> map_to_original(const float* cam, int H, int W, const Geometry& geometry);

// [h, w] pre-ReLU saliency (double) -> [H, W] in [0, 1]: ReLU, min-max (eps 1e-7), bilinear
// half-pixel resize, ReLU, min-max, as the joint graph finishes `cam`.
std::vector<float> finish_map(const std::vector<double>& saliency, int h, int w, int H, int W);

}  // namespace textcam::detail
