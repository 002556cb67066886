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
    if format == ImageFormat::Jpeg {
        return decode_jpeg(bytes, options);
    }
    let name = format_name(format);
    let decode_error = |e: image::ImageError| match e {
        image::ImageError::Unsupported(e) => Error::UnsupportedFeature {
            format: name,
            reason: e.to_string(),
        },
        e => Error::Decode {
            format: name,
            reason: e.to_string(),
        },
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

/// JPEGs are decoded by libjpeg-turbo (through TurboJPEG), the decoder PIL and torchvision use,
/// so the pixels are the recipe's own; its DCT scaling is what PIL's `draft()` uses.
fn decode_jpeg(bytes: &[u8], options: &DecodeOptions) -> Result<RgbImage> {
    let mut decompressor = turbojpeg::Decompressor::new().map_err(jpeg_error)?;
    let header = decompressor.read_header(bytes).map_err(jpeg_error)?;
    let (width, height) = (header.width as u32, header.height as u32);
    check_pixels("JPEG", width, height, options.max_pixels)?;
    let markers = JpegMarkers::read(bytes);
    let orientation = markers
        .exif
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    if let (Some(min_size), false) = (options.min_size, header.is_lossless) {
        let factor = draft_factor((header.width, header.height), orientation, min_size);
        decompressor
            .set_scaling_factor(factor)
            .map_err(jpeg_error)?;
    }
    let scaled = header.scaled(decompressor.scaling_factor());
    let cmyk = matches!(
        header.colorspace,
        turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK
    );
    let format = if cmyk {
        turbojpeg::PixelFormat::CMYK
    } else {
        turbojpeg::PixelFormat::RGB
    };
    let mut image = turbojpeg::Image {
        pixels: vec![0u8; scaled.width * scaled.height * format.size()],
        width: scaled.width,
        pitch: scaled.width * format.size(),
        height: scaled.height,
        format,
    };
    if let Err(error) = decompressor.decompress(bytes, image.as_deref_mut()) {
        // libjpeg reports running out of data both as "Premature end of JPEG file" and as
        // "Corrupt JPEG data: premature end of data segment"; its other "Corrupt JPEG data"
        // warnings (stray bytes) leave a complete image, which PIL accepts too.
        let message = error.to_string().to_ascii_lowercase();
        if message.contains("premature end") {
            return Err(jpeg_error("the data ends before the image is complete"));
        }
        if !message.contains("corrupt jpeg data") {
            return Err(jpeg_error(error));
        }
    }
    let pixels = if cmyk {
        cmyk_to_rgb(&image.pixels, markers.adobe)
    } else {
        image.pixels
    };
    let rgb = RgbImage::from_raw(scaled.width as u32, scaled.height as u32, pixels)
        .ok_or_else(|| jpeg_error("the decoder returned fewer pixels than the header"))?;
    let mut rgb = DynamicImage::ImageRgb8(rgb);
    rgb.apply_orientation(orientation);
    Ok(rgb.into_rgb8())
}

/// The smallest of PIL's draft scales (1/8, 1/4, 1/2) that keeps `min_size` (upright), or 1.
fn draft_factor(
    (width, height): (usize, usize),
    orientation: Orientation,
    (min_width, min_height): (u32, u32),
) -> turbojpeg::ScalingFactor {
    // The minimum is given upright; a transposing orientation swaps the stored axes.
    let (need_w, need_h) = if transposes(orientation) {
        (min_height as usize, min_width as usize)
    } else {
        (min_width as usize, min_height as usize)
    };
    [8, 4, 2]
        .into_iter()
        .map(|denom| turbojpeg::ScalingFactor::new(1, denom))
        .find(|f| f.scale(width) >= need_w && f.scale(height) >= need_h)
        .unwrap_or(turbojpeg::ScalingFactor::ONE)
}

/// PIL's CMYK to RGB (`ImagingConvert` "CMYK" -> "RGB"), after undoing the inversion that
/// Adobe-marked files store (PIL's "CMYK;I" raw mode).
fn cmyk_to_rgb(cmyk: &[u8], adobe_inverted: bool) -> Vec<u8> {
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let [c, m, y, k] = if adobe_inverted {
            [255 - px[0], 255 - px[1], 255 - px[2], 255 - px[3]]
        } else {
            [px[0], px[1], px[2], px[3]]
        };
        let nk = 255 - u32::from(k);
        for v in [c, m, y] {
            rgb.push((nk - muldiv255(u32::from(v), nk)) as u8);
        }
    }
    rgb
}

/// What the decoder needs from the marker segments before the first scan.
#[derive(Default)]
struct JpegMarkers<'a> {
    /// The TIFF body of the first APP1 "Exif" segment.
    exif: Option<&'a [u8]>,
    /// An APP14 "Adobe" segment is present (CMYK stored inverted).
    adobe: bool,
}

impl<'a> JpegMarkers<'a> {
    fn read(bytes: &'a [u8]) -> Self {
        let mut markers = Self::default();
        let mut at = 2; // after SOI
        while at + 4 <= bytes.len() && bytes[at] == 0xFF {
            let marker = bytes[at + 1];
            match marker {
                0xFF => at += 1,               // fill byte
                0xDA | 0xD9 => break,          // start of scan, end of image
                0x01 | 0xD0..=0xD7 => at += 2, // markers without a length
                _ => {
                    let length = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
                    let Some(body) = bytes.get(at + 4..at + 2 + length.max(2)) else {
                        break;
                    };
                    if marker == 0xE1 && markers.exif.is_none() {
                        markers.exif = body.strip_prefix(b"Exif\0\0");
                    } else if marker == 0xEE && body.starts_with(b"Adobe") {
                        markers.adobe = true;
                    }
                    at += 2 + length.max(2);
                }
            }
        }
        markers
    }
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
