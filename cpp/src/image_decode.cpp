// Decoding to upright 8-bit RGB as textcam.runtime.images.load_image / array_to_image do.
//
// JPEG goes through TurboJPEG (libjpeg-turbo, accurate DCT, fancy upsampling: Pillow's settings,
// so the same pixels), PNG through libpng's classic API with the conversions done here by
// Pillow's rules (16-bit gray by PREPROCESSING["color"], other 16-bit samples by their high byte,
// palettes as Pillow pads them, transparency of gray/RGB images ignored, alpha composited on
// black). The EXIF orientation comes from the JPEG's APP1 segment or the PNG's eXIf chunk.
#include "image_decode.hpp"

#include <png.h>
#include <sys/stat.h>
#include <turbojpeg.h>

#include <algorithm>
#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <utility>

#include "os_error.hpp"
#include "python_text.hpp"

namespace textcam::detail {

namespace {

// Pillow's Image.MAX_IMAGE_PIXELS; Image.open refuses more than twice as many.
constexpr int64_t kPillowBombPixels = int64_t{2} * 89478485;

uint8_t round_half_up_mul(unsigned v, unsigned a) {
  // round_half_up(v * a / 255); equals Pillow's alpha_composite on opaque black (all 65536 pairs)
  return static_cast<uint8_t>((v * a * 2 + 255) / 510);
}

[[noreturn]] void decode_failure(const std::string& shown, const std::string& type, const std::string& what) {
  std::string line = what;
  const auto newline = line.find('\n');
  if (newline != std::string::npos) line.resize(newline);
  throw Error(shown + ": cannot decode the image (" + type + ": " + line + "); is it truncated or corrupt?");
}

// ---------------------------------------------------------------------------------------------
// EXIF

uint32_t read_u16(const uint8_t* p, bool little) {
  return little ? static_cast<uint32_t>(p[0] | (p[1] << 8)) : static_cast<uint32_t>((p[0] << 8) | p[1]);
}

uint32_t read_u32(const uint8_t* p, bool little) {
  if (little) {
    return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
           (static_cast<uint32_t>(p[3]) << 24);
  }
  return (static_cast<uint32_t>(p[0]) << 24) | (static_cast<uint32_t>(p[1]) << 16) |
         (static_cast<uint32_t>(p[2]) << 8) | static_cast<uint32_t>(p[3]);
}

// ---------------------------------------------------------------------------------------------
// file reading

std::vector<uint8_t> read_file(const std::string& path, const std::string& shown) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (errno == EACCES) throw Error(shown + ": permission denied; make the file readable");
    if (errno == ENOENT) throw Error(shown + ": no such file");
    throw Error(shown + ": cannot read the file (" + errno_text(errno) + ")");
  }
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  in.seekg(0, std::ios::beg);
  if (size < 0) throw Error(shown + ": cannot read the file");
  std::vector<uint8_t> data(static_cast<size_t>(size));
  if (size > 0 && !in.read(reinterpret_cast<char*>(data.data()), size)) {
    throw Error(shown + ": cannot read the file");
  }
  return data;
}

bool starts_with(const std::vector<uint8_t>& data, const char* prefix, size_t offset = 0) {
  const size_t n = std::strlen(prefix);
  return data.size() >= offset + n && std::memcmp(data.data() + offset, prefix, n) == 0;
}

// Formats Pillow opens that this core does not decode.
bool pillow_reads_other_format(const std::vector<uint8_t>& d) {
  if (starts_with(d, "BM") || starts_with(d, "GIF87a") || starts_with(d, "GIF89a")) return true;
  if (starts_with(d, "II*") && d.size() >= 4 && d[3] == 0) return true;
  if (d.size() >= 4 && d[0] == 'M' && d[1] == 'M' && d[2] == 0 && d[3] == '*') return true;
  if (d.size() >= 4 && d[0] == 'I' && d[1] == 'I' && d[2] == '+' && d[3] == 0) return true;  // BigTIFF
  if (starts_with(d, "RIFF") && starts_with(d, "WEBP", 8)) return true;
  if (d.size() >= 2 && d[0] == 'P' && std::strchr("1234567fF", d[1]) != nullptr && d[1] != 0) return true;
  if (starts_with(d, "ftypavif", 4) || starts_with(d, "ftypavis", 4)) return true;
  if (starts_with(d, "icns") || starts_with(d, "8BPS") || starts_with(d, "qoif") || starts_with(d, "DDS ")) return true;
  if (d.size() >= 4 && d[0] == 0 && d[1] == 0 && d[2] == 1 && d[3] == 0) return true;              // ICO
  if (d.size() >= 4 && d[0] == 0xFF && d[1] == 0x4F && d[2] == 0xFF && d[3] == 0x51) return true;  // J2K
  if (starts_with(d, "jP  ", 4)) return true;                                                      // JPEG 2000
  return false;
}

// ---------------------------------------------------------------------------------------------
// JPEG

struct TjHandle {
  tjhandle handle = tjInitDecompress();
  TjHandle() = default;
  TjHandle(const TjHandle&) = delete;
  TjHandle& operator=(const TjHandle&) = delete;
  ~TjHandle() {
    if (handle != nullptr) tjDestroy(handle);
  }
};

struct JpegMarkers {
  std::vector<uint8_t> exif;  // APP1 "Exif\0\0" payloads: the first, then later ones' data appended
  bool truncated = false;     // a segment runs past the end of the file (Pillow: "Truncated File Read")
  bool unreadable = false;    // Pillow's JPEG plugin gives up (no image format found)
};

// The header segments up to SOS, walked as Pillow's JpegImageFile._open walks them.
JpegMarkers scan_jpeg_markers(const std::vector<uint8_t>& d) {
  JpegMarkers found;
  const size_t size = d.size();
  size_t pos = 3;          // Pillow read "\xff\xd8\xff" and holds the last 0xFF
  bool pending_ff = true;  // a 0xFF read, its marker byte next
  bool frame = false;      // a SOF segment (Pillow: the mode and size are known)
  while (true) {
    if (!pending_ff) {
      if (pos >= size) break;
      if (d[pos++] == 0xFF) pending_ff = true;  // else junk, skipped
      continue;
    }
    if (pos >= size) break;
    const uint8_t marker = d[pos++];
    pending_ff = false;
    if (marker >= 0xC0 && marker <= 0xFE) {
      const bool no_segment =
          marker == 0xC8 || (marker >= 0xD0 && marker <= 0xD9) || (marker >= 0xF0 && marker <= 0xFD);
      if (!no_segment) {
        if (size - pos < 2) {
          found.unreadable = true;  // struct.error reading the length
          break;
        }
        const size_t length = (static_cast<size_t>(d[pos]) << 8) | d[pos + 1];
        const size_t n = length >= 2 ? length - 2 : 0;
        pos += 2;
        if (size - pos < n) {
          found.truncated = true;
          break;
        }
        const uint8_t* payload = d.data() + pos;
        if (marker == 0xE1 && n >= 6 && std::memcmp(payload, "Exif\0\0", 6) == 0) {
          found.exif.insert(found.exif.end(), payload + (found.exif.empty() ? 0 : 6), payload + n);
        }
        if (marker <= 0xCF && marker != 0xC4 && marker != 0xCC) frame = true;
        pos += n;
      }
      if (marker == 0xDA) break;  // start of scan
    } else if (marker == 0xFF) {
      pending_ff = true;  // padding
    } else if (marker != 0x00) {
      found.unreadable = true;  // "no marker found"
      break;
    }
  }
  if (!found.truncated && !frame) found.unreadable = true;
  return found;
}

RgbImage decode_jpeg(const std::vector<uint8_t>& d, const std::string& shown, int64_t max_pixels, int* orientation) {
  TjHandle tj;
  if (tj.handle == nullptr) throw Error(shown + ": cannot decode the image (TurboJPEG did not start)");
  int width = 0, height = 0, subsamp = 0, colorspace = 0;
  auto* buffer = const_cast<unsigned char*>(d.data());
  const auto size = static_cast<unsigned long>(d.size());
  const JpegMarkers markers = scan_jpeg_markers(d);
  // a file ending inside a header segment: Pillow's read runs short while opening
  if (markers.truncated) decode_failure(shown, "OSError", "Truncated File Read");
  if (markers.unreadable) throw Error(shown + ": not an image (or a format Pillow cannot read)");
  if (tjDecompressHeader3(tj.handle, buffer, size, &width, &height, &subsamp, &colorspace) != 0 || width < 1 ||
      height < 1) {
    decode_failure(shown, "OSError", tjGetErrorStr2(tj.handle));
  }
  if (static_cast<int64_t>(width) * height > kPillowBombPixels) {
    throw Error(shown + ": larger than Pillow's decompression-bomb limit (" + with_commas(kPillowBombPixels) +
                " pixels); downscale it");
  }
  check_size(width, height, max_pixels, shown);
  *orientation = markers.exif.empty() ? 1 : exif_orientation(markers.exif.data(), markers.exif.size());

  const bool cmyk = colorspace == TJCS_CMYK || colorspace == TJCS_YCCK;
  const int channels = cmyk ? 4 : 3;
  const size_t count = static_cast<size_t>(width) * static_cast<size_t>(height);
  std::vector<uint8_t> raw(count * static_cast<size_t>(channels));
  const int status =
      tjDecompress2(tj.handle, buffer, size, raw.data(), width, 0, height, cmyk ? TJPF_CMYK : TJPF_RGB, 0);
  if (status != 0) {
    const std::string message = tjGetErrorStr2(tj.handle);
    if (tjGetErrorCode(tj.handle) != TJERR_WARNING) decode_failure(shown, "OSError", message);
    // libjpeg's warnings about corrupt data are not errors for Pillow either; running out of
    // data is ("image file is truncated")
    if (message.find("Premature end of JPEG file") != std::string::npos) {
      decode_failure(shown, "OSError", "image file is truncated");
    }
  }
  RgbImage image;
  image.width = width;
  image.height = height;
  if (!cmyk) {
    image.pixels = std::move(raw);
    return image;
  }
  // Pillow reads CMYK JPEGs as "CMYK;I" (inverted, Adobe's convention, whatever the markers say),
  // then r = round_half_up((255 - c) * (255 - k) / 255)
  image.pixels.resize(count * 3);
  for (size_t i = 0; i < count; ++i) {
    const uint8_t* p = raw.data() + 4 * i;
    // inverted c is 255 - raw c, so 255 - c is the raw value
    image.pixels[3 * i + 0] = round_half_up_mul(p[0], p[3]);
    image.pixels[3 * i + 1] = round_half_up_mul(p[1], p[3]);
    image.pixels[3 * i + 2] = round_half_up_mul(p[2], p[3]);
  }
  return image;
}

// ---------------------------------------------------------------------------------------------
// PNG

// The last eXIf chunk's payload (Pillow keeps the last), walking the chunks with bounds checks.
std::pair<const uint8_t*, size_t> find_png_exif(const std::vector<uint8_t>& d) {
  std::pair<const uint8_t*, size_t> found{nullptr, 0};
  size_t pos = 8;
  while (pos + 12 <= d.size()) {
    const size_t length = read_u32(d.data() + pos, false);
    if (length > d.size() - pos - 12) break;
    const uint8_t* type = d.data() + pos + 4;
    if (std::memcmp(type, "eXIf", 4) == 0) found = {d.data() + pos + 8, length};
    if (std::memcmp(type, "IEND", 4) == 0) break;
    pos += 12 + length;
  }
  return found;
}

struct PngState {
  png_structp png = nullptr;
  png_infop info = nullptr;
  const std::vector<uint8_t>* data = nullptr;
  size_t pos = 0;
  std::string message;
  std::string shown;
  int64_t max_pixels = 0;
  // results
  png_uint_32 width = 0, height = 0;
  int bit_depth = 0, color_type = 0;
  size_t rowbytes = 0;
  std::vector<uint8_t> raw;
  std::vector<png_bytep> rows;
  std::vector<uint8_t> palette;  // 256 x RGBA as Pillow pads it
  bool header_read = false;

  PngState() = default;
  PngState(const PngState&) = delete;
  PngState& operator=(const PngState&) = delete;
  ~PngState() {
    if (png != nullptr) png_destroy_read_struct(&png, info != nullptr ? &info : nullptr, nullptr);
  }
};

extern "C" void png_error_handler(png_structp png, png_const_charp message) {
  auto* state = static_cast<PngState*>(png_get_error_ptr(png));
  state->message = message != nullptr ? message : "libpng error";
  png_longjmp(png, 1);
}

extern "C" void png_warning_handler(png_structp, png_const_charp) {}

extern "C" void png_read_from_memory(png_structp png, png_bytep out, size_t length) {
  auto* state = static_cast<PngState*>(png_get_io_ptr(png));
  const std::vector<uint8_t>& d = *state->data;
  if (length > d.size() - state->pos) png_error(png, "image file is truncated");
  std::memcpy(out, d.data() + state->pos, length);
  state->pos += length;
}

// All libpng calls, under one setjmp; the state lives in the caller's frame.
bool png_decode_core(PngState& s) {
  if (setjmp(png_jmpbuf(s.png))) return false;
  png_set_read_fn(s.png, &s, png_read_from_memory);
  png_set_user_limits(s.png, 0x7fffffffL, 0x7fffffffL);
  png_read_info(s.png, s.info);
  s.width = png_get_image_width(s.png, s.info);
  s.height = png_get_image_height(s.png, s.info);
  s.bit_depth = png_get_bit_depth(s.png, s.info);
  s.color_type = png_get_color_type(s.png, s.info);
  s.header_read = true;
  if (static_cast<int64_t>(s.width) * static_cast<int64_t>(s.height) > kPillowBombPixels) return true;
  if (static_cast<int64_t>(s.width) * static_cast<int64_t>(s.height) > s.max_pixels) return true;

  if (s.color_type == PNG_COLOR_TYPE_PALETTE) {
    // indices, expanded by Pillow's palette below (entries past PLTE are opaque black)
    for (int i = 0; i < 256; ++i) s.palette[4 * static_cast<size_t>(i) + 3] = 255;
    png_colorp entries = nullptr;
    int count = 0;
    if (png_get_PLTE(s.png, s.info, &entries, &count) != 0) {
      for (int i = 0; i < count && i < 256; ++i) {
        s.palette[4 * static_cast<size_t>(i) + 0] = entries[i].red;
        s.palette[4 * static_cast<size_t>(i) + 1] = entries[i].green;
        s.palette[4 * static_cast<size_t>(i) + 2] = entries[i].blue;
      }
    }
    png_bytep alphas = nullptr;
    int num_trans = 0;
    if (png_get_tRNS(s.png, s.info, &alphas, &num_trans, nullptr) != 0 && alphas != nullptr) {
      for (int i = 0; i < num_trans && i < 256; ++i) s.palette[4 * static_cast<size_t>(i) + 3] = alphas[i];
    }
    if (s.bit_depth < 8) png_set_packing(s.png);
  } else if (s.bit_depth < 8) {
    png_set_expand_gray_1_2_4_to_8(s.png);  // 1-bit 0/255, 2-bit v * 85, 4-bit v * 17: as Pillow
  } else if (s.bit_depth == 16 && s.color_type != PNG_COLOR_TYPE_GRAY) {
    png_set_strip_16(s.png);  // Pillow's ";16B" unpackers keep the high byte
  }
  png_set_interlace_handling(s.png);
  png_read_update_info(s.png, s.info);
  s.rowbytes = png_get_rowbytes(s.png, s.info);
  s.raw.resize(s.rowbytes * s.height);
  s.rows.resize(s.height);
  for (png_uint_32 y = 0; y < s.height; ++y) s.rows[y] = s.raw.data() + s.rowbytes * y;
  png_read_image(s.png, s.rows.data());
  // the chunks after the image data are not needed (eXIf is found by scanning)
  return true;
}

// The chunks before the image data, walked as Pillow's PngImageFile._open reads them: a short
// chunk header or checksum is a broken file (no format read it), short chunk data a truncated one.
void check_png_chunks(const std::vector<uint8_t>& d, const std::string& shown) {
  size_t pos = 8;
  while (true) {
    if (d.size() - pos < 8) throw Error(shown + ": not an image (or a format Pillow cannot read)");
    const size_t length = read_u32(d.data() + pos, false);
    if (std::memcmp(d.data() + pos + 4, "IDAT", 4) == 0) return;
    if (d.size() - pos - 8 < length) decode_failure(shown, "OSError", "Truncated File Read");
    if (d.size() - pos - 8 - length < 4) throw Error(shown + ": not an image (or a format Pillow cannot read)");
    pos += 12 + length;
  }
}

RgbImage decode_png(const std::vector<uint8_t>& d, const std::string& shown, int64_t max_pixels, int* orientation) {
  check_png_chunks(d, shown);
  PngState s;
  s.data = &d;
  s.shown = shown;
  s.max_pixels = max_pixels;
  s.palette.assign(size_t{256} * 4, 0);
  s.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &s, png_error_handler, png_warning_handler);
  if (s.png == nullptr) throw Error(shown + ": not enough memory to decode it; downscale it or lower max_pixels");
  s.info = png_create_info_struct(s.png);
  if (s.info == nullptr) throw Error(shown + ": not enough memory to decode it; downscale it or lower max_pixels");
  const bool ok = png_decode_core(s);
  if (!s.header_read && s.message.find("truncated") != std::string::npos) {
    decode_failure(shown, "OSError", "Truncated File Read");  // Pillow, reading the header
  }
  if (!s.header_read) {
    // Pillow's PNG plugin refuses a broken header while opening: no format read it
    throw Error(shown + ": not an image (or a format Pillow cannot read)");
  }
  const int64_t width = s.width, height = s.height;
  if (width * height > kPillowBombPixels) {
    throw Error(shown + ": larger than Pillow's decompression-bomb limit (" + with_commas(kPillowBombPixels) +
                " pixels); downscale it");
  }
  check_size(width, height, max_pixels, shown);
  if (!ok) {
    // Pillow's words: a short file, else zlib's or the chunk structure's complaint
    const bool truncated = s.message.find("truncated") != std::string::npos;
    decode_failure(shown, "OSError",
                   truncated ? "image file is truncated" : "broken data stream when reading image file");
  }
  const auto exif = find_png_exif(d);
  *orientation = exif.first != nullptr ? exif_orientation(exif.first, exif.second) : 1;

  RgbImage image;
  image.width = static_cast<int>(width);
  image.height = static_cast<int>(height);
  const size_t w = s.width;
  image.pixels.resize(w * s.height * 3);
  uint8_t* out = image.pixels.data();
  if (s.color_type == PNG_COLOR_TYPE_GRAY && s.bit_depth == 16) {
    // mode I;16: one scale for the whole image (PREPROCESSING["color"])
    unsigned top_value = 0;
    for (png_uint_32 y = 0; y < s.height; ++y) {
      const uint8_t* row = s.rows[y];
      for (size_t x = 0; x < w; ++x)
        top_value = std::max(top_value, static_cast<unsigned>((row[2 * x] << 8) | row[2 * x + 1]));
    }
    const double top = top_value > 255 ? 65535.0 : 255.0;
    for (png_uint_32 y = 0; y < s.height; ++y) {
      const uint8_t* row = s.rows[y];
      for (size_t x = 0; x < w; ++x) {
        const double v = static_cast<double>((row[2 * x] << 8) | row[2 * x + 1]);
        double g = v / top * 255.0 + 0.5;
        g = g < 0.0 ? 0.0 : (g > 255.0 ? 255.0 : g);
        const auto gray = static_cast<uint8_t>(g);
        *out++ = gray;
        *out++ = gray;
        *out++ = gray;
      }
    }
    return image;
  }
  for (png_uint_32 y = 0; y < s.height; ++y) {
    const uint8_t* row = s.rows[y];
    for (size_t x = 0; x < w; ++x) {
      switch (s.color_type) {
        case PNG_COLOR_TYPE_GRAY:
          out[0] = out[1] = out[2] = row[x];
          break;
        case PNG_COLOR_TYPE_GRAY_ALPHA:
          out[0] = out[1] = out[2] = round_half_up_mul(row[2 * x], row[2 * x + 1]);
          break;
        case PNG_COLOR_TYPE_RGB:
          out[0] = row[3 * x];
          out[1] = row[3 * x + 1];
          out[2] = row[3 * x + 2];
          break;
        case PNG_COLOR_TYPE_RGB_ALPHA: {
          const uint8_t a = row[4 * x + 3];
          out[0] = round_half_up_mul(row[4 * x], a);
          out[1] = round_half_up_mul(row[4 * x + 1], a);
          out[2] = round_half_up_mul(row[4 * x + 2], a);
          break;
        }
        default: {  // palette
          const uint8_t* entry = s.palette.data() + 4 * static_cast<size_t>(row[x]);
          out[0] = round_half_up_mul(entry[0], entry[3]);
          out[1] = round_half_up_mul(entry[1], entry[3]);
          out[2] = round_half_up_mul(entry[2], entry[3]);
          break;
        }
      }
      out += 3;
    }
  }
  return image;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

void check_size(int64_t width, int64_t height, int64_t max_pixels, const std::string& what) {
  if (max_pixels < 1) {
    throw Error("max_pixels=" + std::to_string(max_pixels) + ": expected a positive whole number of pixels");
  }
  if (width < 1 || height < 1) {
    throw Error(what + ": " + std::to_string(width) + "x" + std::to_string(height) + " image has no pixels");
  }
  if (width > max_pixels / height) {  // width * height > max_pixels, without overflow
    throw Error(what + ": " + std::to_string(width) + "x" + std::to_string(height) + " is larger than the " +
                with_commas(max_pixels) + "-pixel limit; downscale it or raise max_pixels");
  }
}

int exif_orientation(const uint8_t* data, size_t size) {
  if (data == nullptr) return 1;
  if (size >= 6 && std::memcmp(data, "Exif\0\0", 6) == 0) {
    data += 6;
    size -= 6;
  }
  if (size < 8) return 1;
  bool little = false;
  if (data[0] == 'I' && data[1] == 'I' && data[2] == 42 && data[3] == 0) {
    little = true;
  } else if (!(data[0] == 'M' && data[1] == 'M' && data[2] == 0 && data[3] == 42)) {
    return 1;
  }
  const size_t ifd = read_u32(data + 4, little);
  if (ifd > size || size - ifd < 2) return 1;
  const size_t entries = read_u16(data + ifd, little);
  if ((size - ifd - 2) / 12 < entries) return 1;  // Pillow fails on a short entry table: no rotation
  int value = 1;
  for (size_t i = 0; i < entries; ++i) {
    const uint8_t* entry = data + ifd + 2 + 12 * i;
    if (read_u16(entry, little) != 0x0112) continue;
    const uint32_t type = read_u16(entry + 2, little);
    const uint32_t count = read_u32(entry + 4, little);
    if (count != 1) {
      value = 1;  // a tuple for Pillow, not an int
      continue;
    }
    switch (type) {
      case 1:  // BYTE
        value = entry[8];
        break;
      case 6:                                                // SBYTE
        value = entry[8] < 128 ? entry[8] : entry[8] - 256;  // the byte as a two's complement int8
        break;
      case 3:  // SHORT
        value = static_cast<int>(read_u16(entry + 8, little));
        break;
      case 8:  // SSHORT
        value = static_cast<int16_t>(read_u16(entry + 8, little));
        break;
      case 4:     // LONG
      case 9:     // SLONG
      case 13: {  // IFD
        const uint32_t v = read_u32(entry + 8, little);
        value = v <= 8 ? static_cast<int>(v) : 1;
        break;
      }
      default:
        value = 1;
        break;
    }
  }
  return value >= 1 && value <= 8 ? value : 1;
}

RgbImage upright(RgbImage image, int orientation) {
  if (orientation < 2 || orientation > 8) return image;
  const size_t W = static_cast<size_t>(image.width), H = static_cast<size_t>(image.height);
  const bool swap = orientation >= 5;
  const size_t out_w = swap ? H : W, out_h = swap ? W : H;
  std::vector<uint8_t> out(W * H * 3);
  for (size_t y = 0; y < out_h; ++y) {
    for (size_t x = 0; x < out_w; ++x) {
      size_t sx = 0, sy = 0;  // source column and row
      switch (orientation) {
        case 2:
          sx = W - 1 - x;
          sy = y;
          break;  // FLIP_LEFT_RIGHT
        case 3:
          sx = W - 1 - x;
          sy = H - 1 - y;
          break;  // ROTATE_180
        case 4:
          sx = x;
          sy = H - 1 - y;
          break;  // FLIP_TOP_BOTTOM
        case 5:
          sx = y;
          sy = x;
          break;  // TRANSPOSE
        case 6:
          sx = y;
          sy = H - 1 - x;
          break;  // ROTATE_270 (90 clockwise)
        case 7:
          sx = W - 1 - y;
          sy = H - 1 - x;
          break;  // TRANSVERSE
        default:
          sx = W - 1 - y;
          sy = x;
          break;  // 8: ROTATE_90 (counter-clockwise)
      }
      const uint8_t* src = image.pixels.data() + (sy * W + sx) * 3;
      uint8_t* dst = out.data() + (y * out_w + x) * 3;
      dst[0] = src[0];
      dst[1] = src[1];
      dst[2] = src[2];
    }
  }
  RgbImage turned;
  turned.width = static_cast<int>(out_w);
  turned.height = static_cast<int>(out_h);
  turned.pixels = std::move(out);
  return turned;
}

RgbImage load_image(const std::string& path, int64_t max_pixels) {
  if (path.find_first_not_of(" \t\n\r\f\v") == std::string::npos) {
    throw Error("image path " + python_str_repr(path) + ": empty; pass a file name");
  }
  if (path.find('\0') != std::string::npos) {
    throw Error("image path " + python_str_repr(python_path(path)) + ": contains a NUL character");
  }
  const std::string shown = python_path(path);
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) throw Error(shown + ": no such file");
    if (errno == EACCES) throw Error(shown + ": permission denied; make the file readable");
    throw Error(shown + ": cannot read the file (" + errno_text(errno) + ")");
  }
  if (info.st_size == 0) throw Error(shown + ": empty file");
  if (S_ISDIR(info.st_mode)) throw Error(shown + ": is a directory");
  if (max_pixels < 1) check_size(1, 1, max_pixels, shown);
  const std::vector<uint8_t> data = read_file(path, shown);
  if (data.empty()) throw Error(shown + ": empty file");

  int orientation = 1;
  RgbImage image;
  if (data.size() >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) {
    image = decode_jpeg(data, shown, max_pixels, &orientation);
  } else if (data.size() >= 8 && std::memcmp(data.data(), "\x89PNG\r\n\x1a\n", 8) == 0) {
    image = decode_png(data, shown, max_pixels, &orientation);
  } else if (pillow_reads_other_format(data)) {
    throw Error(shown +
                ": image format not supported by the native core (JPEG and PNG only); convert it or use "
                "the Python runtime");
  } else {
    throw Error(shown + ": not an image (or a format Pillow cannot read)");
  }
  return upright(std::move(image), orientation);
}

RgbImage from_view(const ImageView& view, int64_t max_pixels) {
  const std::string shape = view.channels == 1
                                ? "(" + std::to_string(view.height) + ", " + std::to_string(view.width) + ")"
                                : "(" + std::to_string(view.height) + ", " + std::to_string(view.width) + ", " +
                                      std::to_string(view.channels) + ")";
  if (view.channels != 1 && view.channels != 3 && view.channels != 4) {
    throw Error("image array of shape " + shape + ": expected HxW, HxWx1, HxWx3 or HxWx4 uint8");
  }
  check_size(view.width, view.height, max_pixels, "image array of shape " + shape);
  if (view.pixels == nullptr) throw Error("image array of shape " + shape + ": no pixel buffer (null pointer)");
  RgbImage image;
  image.width = view.width;
  image.height = view.height;
  const size_t count = static_cast<size_t>(view.width) * static_cast<size_t>(view.height);
  image.pixels.resize(count * 3);
  const uint8_t* in = view.pixels;
  uint8_t* out = image.pixels.data();
  switch (view.channels) {
    case 1:
      for (size_t i = 0; i < count; ++i) out[3 * i] = out[3 * i + 1] = out[3 * i + 2] = in[i];
      break;
    case 3:
      std::memcpy(out, in, count * 3);
      break;
    default:
      for (size_t i = 0; i < count; ++i) {
        const uint8_t a = in[4 * i + 3];
        out[3 * i + 0] = round_half_up_mul(in[4 * i + 0], a);
        out[3 * i + 1] = round_half_up_mul(in[4 * i + 1], a);
        out[3 * i + 2] = round_half_up_mul(in[4 * i + 2], a);
      }
      break;
  }
  return image;
}

}  // namespace textcam::detail
