//! Encoded bytes to upright RGB8: format sniffing, header-checked limits, EXIF orientation, and
//! reduced-scale JPEG decoding.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

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
    /// JPEG is decoded at the smallest DCT scale (1/8, 1/4, 1/2) that still covers it, as PIL's
    /// `Image.draft()` does; `None` always decodes at full size.
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
    let name = format_name(format);
    if format == ImageFormat::Jpeg {
        if let Some(min_size) = options.min_size {
            if let Some(image) = decode_jpeg_reduced(bytes, min_size, options.max_pixels)? {
                return Ok(image);
            }
        }
    }
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

/// Decodes a YCbCr or grayscale JPEG at a reduced DCT scale. Returns `None` when the image is not
/// large enough to gain from it, or is CMYK (left to the full decoder and its colour conversion).
fn decode_jpeg_reduced(
    bytes: &[u8],
    (min_width, min_height): (u32, u32),
    max_pixels: u64,
) -> Result<Option<RgbImage>> {
    let decode_error = |e: jpeg_decoder::Error| Error::Decode {
        format: "JPEG",
        reason: e.to_string(),
    };
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.read_info().map_err(decode_error)?;
    let Some(info) = decoder.info() else {
        return Ok(None);
    };
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    check_pixels("JPEG", width, height, max_pixels)?;
    let orientation = decoder
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    // The minimum is given upright; a transposing orientation swaps the stored axes.
    let (need_w, need_h) = if transposes(orientation) {
        (min_height, min_width)
    } else {
        (min_width, min_height)
    };
    let gray = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => true,
        jpeg_decoder::PixelFormat::RGB24 => false,
        _ => return Ok(None),
    };
    if width < 2 * need_w || height < 2 * need_h {
        return Ok(None);
    }
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    let (out_w, out_h) = decoder
        .scale(clamp(need_w), clamp(need_h))
        .map_err(decode_error)?;
    let pixels = decoder.decode().map_err(decode_error)?;
    let (out_w, out_h) = (u32::from(out_w), u32::from(out_h));
    let rgb = if gray {
        pixels.iter().flat_map(|&v| [v, v, v]).collect()
    } else {
        pixels
    };
    let image = RgbImage::from_raw(out_w, out_h, rgb).ok_or_else(|| Error::Decode {
        format: "JPEG",
        reason: format!("the decoder returned too few pixels for {out_w}x{out_h}"),
    })?;
    let mut image = DynamicImage::ImageRgb8(image);
    image.apply_orientation(orientation);
    Ok(Some(image.into_rgb8()))
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
