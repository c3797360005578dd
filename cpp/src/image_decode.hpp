// Decoding to upright 8-bit RGB as textcam.runtime.images does: JPEG through libjpeg-turbo (the
// same decoder as Pillow, so the same pixels), PNG through libpng (gray, gray+alpha, palette with
// transparency, RGB, RGBA, 16-bit), the EXIF orientation applied, alpha composited on black.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "textcam/textcam.hpp"

namespace textcam::detail {

struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;  // height x width x 3
};

// Refuses images without pixels or with more than max_pixels, naming `what`.
void check_size(int64_t width, int64_t height, int64_t max_pixels, const std::string& what);

// The file at `path` as upright RGB, or a one-line Error naming the file.
RgbImage load_image(const std::string& path, int64_t max_pixels);

// Caller's pixels (gray, RGB or RGBA) as RGB; RGBA composited on black as Pillow does.
RgbImage from_view(const ImageView& view, int64_t max_pixels);

// EXIF Orientation (1-8) from an APP1 Exif payload (starting at "Exif\0\0") or a PNG eXIf chunk (the TIFF
// bytes alone); 1 when absent/unreadable (bounds-checked; a short IFD0 entry table counts as unreadable).
int exif_orientation(const uint8_t* data, size_t size);

// `image` turned as `orientation` says (2-8); 1 returns it unchanged.
RgbImage upright(RgbImage image, int orientation);

}  // namespace textcam::detail
