// Decoding: files written here with libpng / TurboJPEG, expected pixels derived from the stated
// rules (PREPROCESSING["color"], images.py _TRANSPOSE), never from this decoder's own output.
#include <gtest/gtest.h>
#include <png.h>
#include <turbojpeg.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "image_decode.hpp"
#include "textcam/textcam.hpp"

namespace fs = std::filesystem;
using textcam::Error;
using textcam::ImageView;
using textcam::detail::check_size;
using textcam::detail::exif_orientation;
using textcam::detail::from_view;
using textcam::detail::load_image;
using textcam::detail::RgbImage;
using textcam::detail::upright;

namespace {

constexpr int64_t kMax = 72000000;

std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "textcam_image_XXXXXX").string();
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    path_ = mkdtemp(buffer.data());
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  std::string file(const std::string& name) const { return (fs::path(path_) / name).string(); }

 private:
  std::string path_;
};

void write_bytes(const std::string& path, const std::vector<uint8_t>& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

struct PngSpec {
  int width = 0, height = 0, bit_depth = 8, color_type = PNG_COLOR_TYPE_RGB;
  std::vector<uint8_t> samples;  // rows packed as libpng wants them (16-bit big-endian)
  std::vector<png_color> palette;
  std::vector<uint8_t> trns;
  std::vector<uint8_t> exif;  // eXIf payload (TIFF bytes)
};

void write_png(const std::string& path, const PngSpec& spec) {
  FILE* fp = std::fopen(path.c_str(), "wb");
  ASSERT_NE(fp, nullptr);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    std::fclose(fp);
    FAIL() << "libpng write failed";
  }
  png_init_io(png, fp);
  png_set_IHDR(png, info, static_cast<png_uint_32>(spec.width), static_cast<png_uint_32>(spec.height), spec.bit_depth,
               spec.color_type, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (!spec.palette.empty()) {
    png_set_PLTE(png, info, spec.palette.data(), static_cast<int>(spec.palette.size()));
  }
  if (!spec.trns.empty()) {
    png_set_tRNS(png, info, spec.trns.data(), static_cast<int>(spec.trns.size()), nullptr);
  }
  if (!spec.exif.empty()) {
    png_set_eXIf_1(png, info, static_cast<png_uint_32>(spec.exif.size()), const_cast<png_bytep>(spec.exif.data()));
  }
  png_write_info(png, info);
  const size_t row_bytes = spec.samples.size() / static_cast<size_t>(spec.height);
  for (int y = 0; y < spec.height; ++y) {
    png_write_row(png, spec.samples.data() + row_bytes * static_cast<size_t>(y));
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  std::fclose(fp);
}

std::vector<uint8_t> encode_jpeg(const std::vector<uint8_t>& pixels, int width, int height, int format, int subsamp,
                                 int quality) {
  tjhandle tj = tjInitCompress();
  unsigned char* jpeg = nullptr;
  unsigned long size = 0;
  const int rc = tjCompress2(tj, pixels.data(), width, 0, height, format, &jpeg, &size, subsamp, quality, 0);
  std::vector<uint8_t> out;
  if (rc == 0) out.assign(jpeg, jpeg + size);
  tjFree(jpeg);
  tjDestroy(tj);
  return out;
}

// A TIFF block with IFD0 holding one entry (tag, type, count, value in the first bytes).
std::vector<uint8_t> tiff_one_entry(bool little, uint16_t tag, uint16_t type, uint32_t count, uint32_t value) {
  std::vector<uint8_t> d;
  auto u16 = [&](uint32_t v) {
    if (little) {
      d.push_back(static_cast<uint8_t>(v & 0xFF));
      d.push_back(static_cast<uint8_t>(v >> 8));
    } else {
      d.push_back(static_cast<uint8_t>(v >> 8));
      d.push_back(static_cast<uint8_t>(v & 0xFF));
    }
  };
  auto u32 = [&](uint32_t v) {
    if (little) {
      u16(v & 0xFFFF);
      u16(v >> 16);
    } else {
      u16(v >> 16);
      u16(v & 0xFFFF);
    }
  };
  d.push_back(little ? 'I' : 'M');
  d.push_back(little ? 'I' : 'M');
  u16(42);
  u32(8);
  u16(1);
  u16(tag);
  u16(type);
  u32(count);
  if (type == 3) {
    u16(value);
    u16(0);
  } else {
    u32(value);
  }
  u32(0);
  return d;
}

std::vector<uint8_t> with_exif_prefix(const std::vector<uint8_t>& tiff) {
  std::vector<uint8_t> d(6 + tiff.size(), 0);
  std::memcpy(d.data(), "Exif", 4);
  std::copy(tiff.begin(), tiff.end(), d.begin() + 6);
  return d;
}

uint8_t composite(unsigned v, unsigned a) {
  // round_half_up(v * a / 255), PREPROCESSING["color"]; never exactly half, so floor(x + 0.5)
  return static_cast<uint8_t>(std::floor(static_cast<double>(v) * a / 255.0 + 0.5));
}

RgbImage labelled(int width, int height) {
  RgbImage image;
  image.width = width;
  image.height = height;
  for (int i = 0; i < width * height; ++i) {
    image.pixels.push_back(static_cast<uint8_t>(i));
    image.pixels.push_back(static_cast<uint8_t>(100 + i));
    image.pixels.push_back(static_cast<uint8_t>(200 + i));
  }
  return image;
}

std::vector<int> labels(const RgbImage& image) {
  std::vector<int> out;
  for (size_t i = 0; i < image.pixels.size(); i += 3) {
    EXPECT_EQ(image.pixels[i + 1], image.pixels[i] + 100);
    out.push_back(image.pixels[i]);
  }
  return out;
}

}  // namespace

TEST(ImageCheckSize, Messages) {
  EXPECT_NO_THROW(check_size(10, 10, 100, "x"));
  EXPECT_EQ(error_of([] { check_size(11, 10, 100, "a.png"); }),
            "a.png: 11x10 is larger than the 100-pixel limit; downscale it or raise max_pixels");
  EXPECT_EQ(error_of([] { check_size(5000, 5000, 1234567, "b"); }),
            "b: 5000x5000 is larger than the 1,234,567-pixel limit; downscale it or raise max_pixels");
  EXPECT_EQ(error_of([] { check_size(0, 3, 100, "c"); }), "c: 0x3 image has no pixels");
  EXPECT_EQ(error_of([] { check_size(3, 3, 0, "c"); }), "max_pixels=0: expected a positive whole number of pixels");
}

TEST(ImageFromView, GrayRgbRgba) {
  const std::vector<uint8_t> gray = {0, 17, 255, 128, 1, 2};
  ImageView view{gray.data(), 2, 3, 1};
  RgbImage image = from_view(view, kMax);
  ASSERT_EQ(image.width, 3);
  ASSERT_EQ(image.height, 2);
  for (size_t i = 0; i < gray.size(); ++i) {
    EXPECT_EQ(image.pixels[3 * i], gray[i]);
    EXPECT_EQ(image.pixels[3 * i + 1], gray[i]);
    EXPECT_EQ(image.pixels[3 * i + 2], gray[i]);
  }
  const std::vector<uint8_t> rgb = {1, 2, 3, 4, 5, 6};
  image = from_view(ImageView{rgb.data(), 1, 2, 3}, kMax);
  EXPECT_EQ(image.pixels, rgb);
}

TEST(ImageFromView, RgbaCompositedOnBlackAllPairs) {
  std::vector<uint8_t> rgba;
  for (int v = 0; v < 256; ++v) {
    for (int a = 0; a < 256; ++a) {
      rgba.insert(rgba.end(), {static_cast<uint8_t>(v), static_cast<uint8_t>(255 - v), 7, static_cast<uint8_t>(a)});
    }
  }
  const RgbImage image = from_view(ImageView{rgba.data(), 256, 256, 4}, kMax);
  int mismatches = 0;
  for (unsigned v = 0; v < 256; ++v) {
    for (unsigned a = 0; a < 256; ++a) {
      const uint8_t* p = image.pixels.data() + 3 * (v * 256 + a);
      mismatches += p[0] != composite(v, a) || p[1] != composite(255 - v, a) || p[2] != composite(7, a);
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(ImageFromView, Errors) {
  const std::vector<uint8_t> px(24, 0);
  EXPECT_EQ(error_of([&] {
              from_view(ImageView{px.data(), 2, 3, 2}, kMax);
            }),
            "image array of shape (2, 3, 2): expected HxW, HxWx1, HxWx3 or HxWx4 uint8");
  EXPECT_EQ(error_of([&] {
              from_view(ImageView{px.data(), 2, 3, 3}, 5);
            }),
            "image array of shape (2, 3, 3): 3x2 is larger than the 5-pixel limit; downscale it or raise max_pixels");
  EXPECT_EQ(error_of([&] {
              from_view(ImageView{px.data(), 0, 3, 3}, kMax);
            }),
            "image array of shape (0, 3, 3): 3x0 image has no pixels");
}

TEST(ImageExif, OrientationBothByteOrders) {
  for (bool little : {true, false}) {
    for (uint32_t value = 0; value <= 9; ++value) {
      const auto tiff = tiff_one_entry(little, 0x0112, 3, 1, value);
      const int expected = value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
      EXPECT_EQ(exif_orientation(tiff.data(), tiff.size()), expected) << little << " " << value;
      const auto app1 = with_exif_prefix(tiff);
      EXPECT_EQ(exif_orientation(app1.data(), app1.size()), expected);
    }
    const auto as_long = tiff_one_entry(little, 0x0112, 4, 1, 6);
    EXPECT_EQ(exif_orientation(as_long.data(), as_long.size()), 6);
  }
}

TEST(ImageExif, BrokenBlocksMeanNoRotation) {
  auto good = tiff_one_entry(true, 0x0112, 3, 1, 6);
  ASSERT_EQ(exif_orientation(good.data(), good.size()), 6);
  // every truncation of the block: no rotation, no out-of-bounds read (ASan checks the latter)
  for (size_t n = 0; n < good.size() - 4; ++n) {
    std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_EQ(exif_orientation(cut.data(), cut.size()), 1) << n;
  }
  EXPECT_EQ(exif_orientation(nullptr, 0), 1);
  auto other_tag = tiff_one_entry(true, 0x0100, 3, 1, 6);
  EXPECT_EQ(exif_orientation(other_tag.data(), other_tag.size()), 1);
  auto tuple = tiff_one_entry(true, 0x0112, 3, 2, 6);  // a tuple for Pillow
  EXPECT_EQ(exif_orientation(tuple.data(), tuple.size()), 1);
  auto bad_magic = good;
  bad_magic[2] = 43;
  EXPECT_EQ(exif_orientation(bad_magic.data(), bad_magic.size()), 1);
  auto far_ifd = good;
  far_ifd[4] = 0xF0;  // IFD0 offset past the end
  EXPECT_EQ(exif_orientation(far_ifd.data(), far_ifd.size()), 1);
  auto many = good;
  many[8] = 0xFF;  // entry count past the end
  many[9] = 0xFF;
  EXPECT_EQ(exif_orientation(many.data(), many.size()), 1);
}

TEST(ImageUpright, KnownPermutations) {
  // 3 wide, 2 tall: a b c / d e f = 0 1 2 / 3 4 5
  const RgbImage image = labelled(3, 2);
  struct Case {
    int orientation, width, height;
    std::vector<int> pixels;
  };
  const std::vector<Case> cases = {
      {1, 3, 2, {0, 1, 2, 3, 4, 5}}, {2, 3, 2, {2, 1, 0, 5, 4, 3}}, {3, 3, 2, {5, 4, 3, 2, 1, 0}},
      {4, 3, 2, {3, 4, 5, 0, 1, 2}}, {5, 2, 3, {0, 3, 1, 4, 2, 5}}, {6, 2, 3, {3, 0, 4, 1, 5, 2}},
      {7, 2, 3, {5, 2, 4, 1, 3, 0}}, {8, 2, 3, {2, 5, 1, 4, 0, 3}}, {9, 3, 2, {0, 1, 2, 3, 4, 5}},
  };
  for (const Case& c : cases) {
    const RgbImage turned = upright(image, c.orientation);
    EXPECT_EQ(turned.width, c.width) << c.orientation;
    EXPECT_EQ(turned.height, c.height) << c.orientation;
    EXPECT_EQ(labels(turned), c.pixels) << c.orientation;
  }
}

TEST(ImageLoad, PngColorTypes) {
  TempDir dir;
  {  // 8-bit RGB: unchanged
    PngSpec spec{3, 2, 8, PNG_COLOR_TYPE_RGB, {}, {}, {}, {}};
    for (int i = 0; i < 18; ++i) spec.samples.push_back(static_cast<uint8_t>(i * 13));
    write_png(dir.file("rgb.png"), spec);
    const RgbImage image = load_image(dir.file("rgb.png"), kMax);
    EXPECT_EQ(image.width, 3);
    EXPECT_EQ(image.height, 2);
    EXPECT_EQ(image.pixels, spec.samples);
  }
  {  // RGBA: composited on black
    PngSpec spec{
        4,  1,  8, PNG_COLOR_TYPE_RGB_ALPHA, {10, 20, 30, 0, 200, 100, 50, 128, 255, 255, 255, 255, 99, 3, 250, 77},
        {}, {}, {}};
    write_png(dir.file("rgba.png"), spec);
    const RgbImage image = load_image(dir.file("rgba.png"), kMax);
    for (int x = 0; x < 4; ++x) {
      for (int c = 0; c < 3; ++c) {
        EXPECT_EQ(
            image.pixels[static_cast<size_t>(3 * x + c)],
            composite(spec.samples[static_cast<size_t>(4 * x + c)], spec.samples[static_cast<size_t>(4 * x + 3)]));
      }
    }
  }
  {  // gray + alpha
    PngSpec spec{2, 1, 8, PNG_COLOR_TYPE_GRAY_ALPHA, {200, 100, 31, 255}, {}, {}, {}};
    write_png(dir.file("la.png"), spec);
    const RgbImage image = load_image(dir.file("la.png"), kMax);
    const std::vector<uint8_t> expected = {composite(200, 100), composite(200, 100), composite(200, 100), 31, 31, 31};
    EXPECT_EQ(image.pixels, expected);
  }
  {  // 16-bit gray with values above 255: top = 65535, gray = floor(v / 65535 * 255 + 0.5)
    const std::vector<uint16_t> values = {0, 255, 256, 32767, 32768, 65535};
    PngSpec spec{6, 1, 16, PNG_COLOR_TYPE_GRAY, {}, {}, {}, {}};
    for (uint16_t v : values)
      spec.samples.insert(spec.samples.end(), {static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v)});
    write_png(dir.file("g16.png"), spec);
    const RgbImage image = load_image(dir.file("g16.png"), kMax);
    for (size_t i = 0; i < values.size(); ++i) {
      const auto expected = static_cast<uint8_t>(std::floor(values[i] / 65535.0 * 255.0 + 0.5));
      EXPECT_EQ(image.pixels[3 * i], expected) << values[i];
      EXPECT_EQ(image.pixels[3 * i + 2], expected);
    }
  }
  {  // 16-bit gray all <= 255: top = 255, values kept
    PngSpec spec{3, 1, 16, PNG_COLOR_TYPE_GRAY, {0, 0, 0, 7, 0, 255}, {}, {}, {}};
    write_png(dir.file("g16low.png"), spec);
    const RgbImage image = load_image(dir.file("g16low.png"), kMax);
    const std::vector<uint8_t> expected = {0, 0, 0, 7, 7, 7, 255, 255, 255};
    EXPECT_EQ(image.pixels, expected);
  }
  {  // 16-bit RGB: the high byte of each sample (Pillow's "RGB;16B")
    PngSpec spec{1, 1, 16, PNG_COLOR_TYPE_RGB, {0x12, 0xFF, 0xAB, 0x01, 0x00, 0x80}, {}, {}, {}};
    write_png(dir.file("rgb16.png"), spec);
    EXPECT_EQ(load_image(dir.file("rgb16.png"), kMax).pixels, (std::vector<uint8_t>{0x12, 0xAB, 0x00}));
  }
  {  // 2-bit gray: v * 85
    PngSpec spec{4, 1, 2, PNG_COLOR_TYPE_GRAY, {0b00011011}, {}, {}, {}};
    write_png(dir.file("g2.png"), spec);
    EXPECT_EQ(load_image(dir.file("g2.png"), kMax).pixels,
              (std::vector<uint8_t>{0, 0, 0, 85, 85, 85, 170, 170, 170, 255, 255, 255}));
  }
  {  // palette with a short tRNS: alpha from it, 255 past it
    PngSpec spec{3,     1, 8, PNG_COLOR_TYPE_PALETTE, {0, 1, 2}, {{200, 100, 50}, {10, 20, 30}, {250, 251, 252}},
                 {128}, {}};
    write_png(dir.file("p.png"), spec);
    const std::vector<uint8_t> expected = {
        composite(200, 128), composite(100, 128), composite(50, 128), 10, 20, 30, 250, 251, 252};
    EXPECT_EQ(load_image(dir.file("p.png"), kMax).pixels, expected);
  }
}

TEST(ImageLoad, PngExifOrientation) {
  TempDir dir;
  PngSpec spec{3, 2, 8, PNG_COLOR_TYPE_RGB, {}, {}, {}, tiff_one_entry(false, 0x0112, 3, 1, 6)};
  for (int i = 0; i < 6; ++i)
    spec.samples.insert(spec.samples.end(),
                        {static_cast<uint8_t>(i), static_cast<uint8_t>(100 + i), static_cast<uint8_t>(200 + i)});
  write_png(dir.file("o6.png"), spec);
  const RgbImage image = load_image(dir.file("o6.png"), kMax);
  EXPECT_EQ(image.width, 2);
  EXPECT_EQ(image.height, 3);
  EXPECT_EQ(labels(image), (std::vector<int>{3, 0, 4, 1, 5, 2}));  // 90 degrees clockwise
}

TEST(ImageLoad, JpegConstantAndGray) {
  TempDir dir;
  const int w = 19, h = 11;
  // a constant image survives JPEG exactly at quality 100 (DC only, quantizer 1)
  for (int subsamp : {TJSAMP_444, TJSAMP_420}) {
    std::vector<uint8_t> rgb(static_cast<size_t>(w * h * 3), 0);
    for (size_t i = 0; i < rgb.size(); i += 3) {
      rgb[i] = 128;
      rgb[i + 1] = 128;
      rgb[i + 2] = 128;
    }
    write_bytes(dir.file("c.jpg"), encode_jpeg(rgb, w, h, TJPF_RGB, subsamp, 100));
    const RgbImage image = load_image(dir.file("c.jpg"), kMax);
    ASSERT_EQ(image.width, w);
    ASSERT_EQ(image.height, h);
    EXPECT_EQ(image.pixels, rgb);
  }
  std::vector<uint8_t> gray(static_cast<size_t>(w * h), 77);
  write_bytes(dir.file("g.jpg"), encode_jpeg(gray, w, h, TJPF_GRAY, TJSAMP_GRAY, 100));
  const RgbImage image = load_image(dir.file("g.jpg"), kMax);
  EXPECT_EQ(image.pixels, std::vector<uint8_t>(static_cast<size_t>(w * h * 3), 77));
}

TEST(ImageLoad, JpegExifOrientationAndTruncation) {
  TempDir dir;
  const int w = 64, h = 32;
  std::vector<uint8_t> rgb(static_cast<size_t>(w * h * 3));
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<uint8_t>((i * 7919) % 251);  // busy scan data
  std::vector<uint8_t> jpeg = encode_jpeg(rgb, w, h, TJPF_RGB, TJSAMP_444, 90);
  ASSERT_GT(jpeg.size(), 2000U);
  const auto exif = with_exif_prefix(tiff_one_entry(true, 0x0112, 3, 1, 8));
  std::vector<uint8_t> with_exif = {0xFF,
                                    0xD8,
                                    0xFF,
                                    0xE1,
                                    static_cast<uint8_t>((exif.size() + 2) >> 8),
                                    static_cast<uint8_t>((exif.size() + 2) & 0xFF)};
  with_exif.insert(with_exif.end(), exif.begin(), exif.end());
  with_exif.insert(with_exif.end(), jpeg.begin() + 2, jpeg.end());
  write_bytes(dir.file("o8.jpg"), with_exif);
  const RgbImage image = load_image(dir.file("o8.jpg"), kMax);
  EXPECT_EQ(image.width, h);
  EXPECT_EQ(image.height, w);

  std::vector<uint8_t> cut(jpeg.begin(), jpeg.begin() + static_cast<std::ptrdiff_t>(jpeg.size() - 40));
  write_bytes(dir.file("cut.jpg"), cut);
  EXPECT_EQ(error_of([&] { load_image(dir.file("cut.jpg"), kMax); }),
            dir.file("cut.jpg") +
                ": cannot decode the image (OSError: image file is truncated); is it truncated or corrupt?");
}

TEST(ImageLoad, Errors) {
  TempDir dir;
  const std::string missing = dir.file("missing.jpg");
  EXPECT_EQ(error_of([&] { load_image(missing, kMax); }), missing + ": no such file");
  write_bytes(dir.file("empty.png"), {});
  EXPECT_EQ(error_of([&] { load_image(dir.file("empty.png"), kMax); }), dir.file("empty.png") + ": empty file");
  fs::create_directory(dir.file("sub"));
  EXPECT_EQ(error_of([&] { load_image(dir.file("sub"), kMax); }), dir.file("sub") + ": is a directory");
  write_bytes(dir.file("text.jpg"), {'h', 'e', 'l', 'l', 'o'});
  EXPECT_EQ(error_of([&] { load_image(dir.file("text.jpg"), kMax); }),
            dir.file("text.jpg") + ": not an image (or a format Pillow cannot read)");
  write_bytes(dir.file("b.bmp"), {'B', 'M', 0, 0, 0, 0, 0, 0});
  EXPECT_EQ(
      error_of([&] { load_image(dir.file("b.bmp"), kMax); }),
      dir.file("b.bmp") +
          ": image format not supported by the native core (JPEG and PNG only); convert it or use the Python runtime");
  EXPECT_EQ(error_of([] { load_image("  ", kMax); }), "image path '  ': empty; pass a file name");

  // a PNG header claiming 100000 x 100000 with no pixel data: refused from the header
  PngSpec spec{2, 2, 8, PNG_COLOR_TYPE_GRAY, {1, 2, 3, 4}, {}, {}, {}};
  write_png(dir.file("small.png"), spec);
  EXPECT_EQ(error_of([&] { load_image(dir.file("small.png"), 3); }),
            dir.file("small.png") + ": 2x2 is larger than the 3-pixel limit; downscale it or raise max_pixels");
  const std::vector<uint8_t> png = read_bytes(dir.file("small.png"));
  auto header_only = [&](uint32_t side) {
    std::vector<uint8_t> d(png.begin(), png.begin() + 33);  // signature + IHDR, no image data
    for (int k = 0; k < 2; ++k) {
      for (int b = 0; b < 4; ++b) d[static_cast<size_t>(16 + 4 * k + b)] = static_cast<uint8_t>(side >> (24 - 8 * b));
    }
    const auto crc = static_cast<uint32_t>(crc32(0L, d.data() + 12, 17));
    for (int b = 0; b < 4; ++b) d[static_cast<size_t>(29 + b)] = static_cast<uint8_t>(crc >> (24 - 8 * b));
    // an IDAT chunk with a few bytes (never decoded) and IEND
    const std::vector<uint8_t> tail = {0, 0, 0, 2, 'I', 'D', 'A', 'T', 0x78, 0x9C, 0,    0,    0,
                                       0, 0, 0, 0, 0,   'I', 'E', 'N', 'D',  0xAE, 0x42, 0x60, 0x82};
    d.insert(d.end(), tail.begin(), tail.end());
    return d;
  };
  write_bytes(dir.file("big.png"), header_only(10000));
  EXPECT_EQ(error_of([&] { load_image(dir.file("big.png"), kMax); }),
            dir.file("big.png") +
                ": 10000x10000 is larger than the 72,000,000-pixel limit; downscale it or raise max_pixels");
  write_bytes(dir.file("bomb.png"), header_only(20000));
  EXPECT_EQ(
      error_of([&] { load_image(dir.file("bomb.png"), kMax); }),
      dir.file("bomb.png") + ": larger than Pillow's decompression-bomb limit (178,956,970 pixels); downscale it");
  // the header alone (no IDAT): Pillow's PNG plugin gives up while opening
  std::vector<uint8_t> header_alone(png.begin(), png.begin() + 33);
  write_bytes(dir.file("header.png"), header_alone);
  EXPECT_EQ(error_of([&] { load_image(dir.file("header.png"), kMax); }),
            dir.file("header.png") + ": not an image (or a format Pillow cannot read)");
  header_alone.resize(20);  // inside IHDR
  write_bytes(dir.file("header20.png"), header_alone);
  EXPECT_EQ(error_of([&] { load_image(dir.file("header20.png"), kMax); }),
            dir.file("header20.png") +
                ": cannot decode the image (OSError: Truncated File Read); is it truncated or corrupt?");
  // the same header with its data cut: truncated, in Pillow's words
  std::vector<uint8_t> cut(png.begin(), png.begin() + static_cast<std::ptrdiff_t>(png.size() - 20));
  write_bytes(dir.file("cut.png"), cut);
  EXPECT_EQ(error_of([&] { load_image(dir.file("cut.png"), kMax); }),
            dir.file("cut.png") +
                ": cannot decode the image (OSError: image file is truncated); is it truncated or corrupt?");
}
