//! Encoded bytes to upright RGB8: format sniffing, header-checked limits, EXIF orientation, and
//! reduced-scale JPEG decoding.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::errors::DecodeErrors as ZuneError;
use zune_jpeg::JpegDecoder;

use crate::error::{Error, Result};

/// Pillow's decompression-bomb threshold (`2 * Image.MAX_IMAGE_PIXELS`): above it Pillow refuses
/// to open an image, so the PIL recipe could not classify it either.
pub const DEFAULT_MAX_PIXELS: u64 = 2 * 89_478_485;

/// How to decode: the pixel limit and an optional smallest size for reduced-scale JPEG decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Images whose header announces more pixels than this are refused before any allocation.
    pub max_pixels: u64,
    /// Smallest (width, height), in upright orientation, the decoded image must keep. When set, a
    /// JPEG is decoded at the smallest DCT scale (1/8, 1/4, 1/2) that still covers it, the way
    /// PIL's `Image.draft()` works; `None` always decodes at full size.
    pub min_size: Option<(u32, u32)>,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            min_size: None,
        }
    }
}

/// Decodes one encoded image (JPEG, PNG, WebP, GIF first frame, BMP, TIFF) into upright RGB8.
///
/// Grayscale, alpha, palette, CMYK and 16-bit images become RGB8 (alpha is dropped, as PIL's
/// `convert("RGB")` does), and the EXIF orientation is applied as `ImageOps.exif_transpose` does.
pub fn decode_rgb8(bytes: &[u8], options: &DecodeOptions) -> Result<RgbImage> {
    let format = sniff(bytes)?;
    if format == ImageFormat::Jpeg {
        return decode_jpeg(bytes, options);
    }
    let name = format_name(format);
    let decode_error = |e: image::ImageError| Error::Decode {
        format: name,
        reason: e.to_string(),
    };
    let mut reader = ImageReader::new(Cursor::new(bytes));
    reader.set_format(format);
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    check_pixels(name, width, height, options.max_pixels)?;
    // A missing or unreadable EXIF block means "upright", as in Pillow.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// Finds the format from the first bytes; the file name or extension is never trusted.
pub fn sniff(bytes: &[u8]) -> Result<ImageFormat> {
    if bytes.is_empty() {
        return Err(Error::EmptyImage);
    }
    match image::guess_format(bytes) {
        Ok(
            format @ (ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
            | ImageFormat::Tiff),
        ) => Ok(format),
        _ => Err(Error::UnsupportedFormat {
            magic: bytes
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        }),
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        _ => "unsupported",
    }
}

fn check_pixels(format: &'static str, width: u32, height: u32, limit: u64) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limit {
        return Err(Error::TooLarge {
            format,
            width,
            height,
            pixels,
            limit,
        });
    }
    if pixels == 0 {
        return Err(Error::Decode {
            format,
            reason: format!("the header announces a {width}x{height} image"),
        });
    }
    Ok(())
}

fn jpeg_error(e: impl std::fmt::Display) -> Error {
    Error::Decode {
        format: "JPEG",
        reason: e.to_string(),
    }
}

/// JPEGs go to zune-jpeg directly (not through `image`), so that a truncated file is an error,
/// as it is in PIL, instead of an image padded with grey.
fn decode_jpeg(bytes: &[u8], options: &DecodeOptions) -> Result<RgbImage> {
    let strict = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), strict);
    decoder.decode_headers().map_err(jpeg_error)?;
    let (width, height) = decoder.dimensions().ok_or_else(|| jpeg_error("no frame header"))?;
    let (width, height) = (width as u32, height as u32);
    check_pixels("JPEG", width, height, options.max_pixels)?;
    let orientation = decoder
        .exif()
        .and_then(|exif| Orientation::from_exif_chunk(exif))
        .unwrap_or(Orientation::NoTransforms);
    let color = decoder.input_colorspace();
    let reducible = matches!(color, Some(ColorSpace::YCbCr | ColorSpace::Luma));
    let reduced = match options.min_size {
        Some(min_size) if reducible => {
            decode_jpeg_reduced(bytes, (width, height), orientation, min_size)?
        }
        _ => None,
    };
    let image = match reduced {
        Some(image) => image,
        None => {
            let pixels = match decoder.decode() {
                Ok(pixels) => pixels,
                Err(ZuneError::ExhaustedData) => {
                    return Err(jpeg_error("the data ends before the last scan"))
                }
                // libjpeg, and so PIL, accept files with minor marker errors; so do we, but
                // never one that runs out of data.
                Err(_) => {
                    let lenient = strict.set_strict_mode(false);
                    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), lenient);
                    let pixels = decoder.decode().map_err(jpeg_error)?;
                    pixels
                }
            };
            RgbImage::from_raw(width, height, pixels)
                .ok_or_else(|| jpeg_error("the decoder returned fewer pixels than the header"))?
        }
    };
    let mut image = DynamicImage::ImageRgb8(image);
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

/// Decodes a YCbCr or grayscale JPEG at the smallest DCT scale (1/8, 1/4, 1/2) that keeps
/// `min_size` (upright); `None` when the image is not at least twice that size.
fn decode_jpeg_reduced(
    bytes: &[u8],
    (width, height): (u32, u32),
    orientation: Orientation,
    (min_width, min_height): (u32, u32),
) -> Result<Option<RgbImage>> {
    // The minimum is given upright; a transposing orientation swaps the stored axes.
    let (need_w, need_h) = if transposes(orientation) {
        (min_height, min_width)
    } else {
        (min_width, min_height)
    };
    if width < 2 * need_w || height < 2 * need_h {
        return Ok(None);
    }
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    let (out_w, out_h) = decoder
        .scale(clamp(need_w), clamp(need_h))
        .map_err(jpeg_error)?;
    let gray = matches!(
        decoder.info().map(|info| info.pixel_format),
        Some(jpeg_decoder::PixelFormat::L8)
    );
    let pixels = decoder.decode().map_err(jpeg_error)?;
    let rgb = if gray {
        pixels.iter().flat_map(|&v| [v, v, v]).collect()
    } else {
        pixels
    };
    let image = RgbImage::from_raw(u32::from(out_w), u32::from(out_h), rgb)
        .ok_or_else(|| jpeg_error("the decoder returned fewer pixels than the scaled header"))?;
    Ok(Some(image))
}

fn transposes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}
