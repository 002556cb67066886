//! Resize, center crop and normalize one RGB8 image into its slot of an NCHW float32 buffer,
//! with the arithmetic of torchvision's `Resize` (with any of Pillow's filters), `CenterCrop`,
//! `ToTensor` and `Normalize` on PIL images.

use image::RgbImage;

use crate::error::{Error, Result};
use crate::resample::{resize_rgb8, Filter};

/// How the decoded image is brought to the model's input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// `Resize(n)`: the shorter side becomes `n`, the aspect ratio is kept; a center crop follows.
    ShorterSide(u32),
    /// `Resize((height, width))`: exactly this size, no crop.
    Exact {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
    },
}

impl Resize {
    /// timm's `crop_pct` recipe: the shorter side becomes `floor(crop / crop_pct)`, then a
    /// center crop of `crop` (timm's `transforms_factory`: `scale_size = math.floor(img_size /
    /// crop_pct)`).
    pub fn for_crop_pct(crop: u32, crop_pct: f64) -> Result<Self> {
        if !(crop_pct > 0.0 && crop_pct <= 1.0) {
            return Err(Error::InvalidArgument(format!(
                "crop_pct must be above 0 and at most 1 (the crop's share of the resized shorter \
                 side, such as 0.875), got {crop_pct}"
            )));
        }
        // Python's float division and math.floor, in f64 as Python computes them.
        let side = (f64::from(crop) / crop_pct).floor();
        if side > f64::from(u32::MAX) {
            return Err(Error::InvalidArgument(format!(
                "crop_pct {crop_pct} makes the resized shorter side {side}, too large; \
                 give a crop_pct nearer 1"
            )));
        }
        Ok(Resize::ShorterSide(side as u32))
    }
}

/// The whole preprocessing recipe, validated once and shared by every image of every batch.
#[derive(Clone, Debug)]
pub struct PreprocessSpec {
    resize: Resize,
    filter: Filter,
    crop: u32,
    mean: [f32; 3],
    std: [f32; 3],
    /// `(v / 255 - mean) / std` for every byte value, per channel, computed in float32 exactly as
    /// `ToTensor` + `Normalize` do, so normalizing is a table look-up.
    table: Box<[[f32; 256]; 3]>,
}

impl std::fmt::Display for Resize {
    /// As a user writes it: `256`, or `224,224` for (height, width).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resize::ShorterSide(side) => write!(f, "{side}"),
            Resize::Exact { height, width } => write!(f, "{height},{width}"),
        }
    }
}

impl PreprocessSpec {
    /// Validates the recipe: positive sizes, a crop that fits the resized image, non-zero std.
    pub fn new(resize: Resize, crop: u32, mean: [f32; 3], std: [f32; 3]) -> Result<Self> {
        match resize {
            Resize::ShorterSide(0)
            | Resize::Exact { height: 0, .. }
            | Resize::Exact { width: 0, .. } => {
                return Err(Error::InvalidArgument(format!(
                    "resize must be a positive size or a (height, width) pair of positive sizes, got {resize}"
                )));
            }
            Resize::ShorterSide(side) if crop == 0 || crop > side => {
                return Err(Error::InvalidArgument(format!(
                    "crop must be between 1 and resize ({side}), got {crop}"
                )));
            }
            _ => {}
        }
        if let Some(bad) = std.iter().find(|s| !s.is_finite() || **s == 0.0) {
            return Err(Error::InvalidArgument(format!(
                "std values must be finite and non-zero, got {bad} in {}",
                as_typed(&std)
            )));
        }
        if let Some(bad) = mean.iter().find(|m| !m.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "mean values must be finite, got {bad} in {}",
                as_typed(&mean)
            )));
        }
        let mut table = Box::new([[0.0f32; 256]; 3]);
        for (c, row) in table.iter_mut().enumerate() {
            for (v, slot) in row.iter_mut().enumerate() {
                *slot = (v as f32 / 255.0 - mean[c]) / std[c];
            }
        }
        Ok(Self {
            resize,
            filter: Filter::default(),
            crop,
            mean,
            std,
            table,
        })
    }

    /// The same recipe resizing with `filter` (bilinear unless set).
    pub fn with_filter(self, filter: Filter) -> Self {
        Self { filter, ..self }
    }

    /// The resize step.
    pub fn resize(&self) -> Resize {
        self.resize
    }

    /// The resize's filter.
    pub fn filter(&self) -> Filter {
        self.filter
    }

    /// The center-crop size (ignored for [`Resize::Exact`]).
    pub fn crop(&self) -> u32 {
        self.crop
    }

    /// Per-channel mean.
    pub fn mean(&self) -> [f32; 3] {
        self.mean
    }

    /// Per-channel standard deviation.
    pub fn std(&self) -> [f32; 3] {
        self.std
    }

    /// (height, width) of one preprocessed image.
    pub fn output_size(&self) -> (usize, usize) {
        match self.resize {
            Resize::ShorterSide(_) => (self.crop as usize, self.crop as usize),
            Resize::Exact { height, width } => (height as usize, width as usize),
        }
    }

    /// Floats in one preprocessed image: 3 * height * width.
    pub fn image_len(&self) -> usize {
        let (h, w) = self.output_size();
        3 * h * w
    }

    /// The smallest upright (width, height) a decoder may reduce an image to: twice the resize
    /// target, so that the antialiased resize still does the final downscaling and the answers
    /// stay close to a full-size decode (PIL's `draft()` goes down to the target itself).
    pub fn min_source_size(&self) -> (u32, u32) {
        match self.resize {
            Resize::ShorterSide(side) => (2 * side, 2 * side),
            Resize::Exact { height, width } => (2 * width, 2 * height),
        }
    }

    /// Writes `image`, preprocessed, into `out` (length [`Self::image_len`]) as three planes.
    pub fn write(&self, image: &RgbImage, out: &mut [f32]) -> Result<()> {
        debug_assert_eq!(out.len(), self.image_len());
        let (width, height) = image.dimensions();
        if width == 0 || height == 0 {
            return Err(resize_error(width, height, "the image has no pixels"));
        }
        let (out_h, out_w) = self.output_size();
        // The center crop is resized alone: each output pixel's taps depend on its position in
        // the whole resized image only, so these are the pixels of a full resize, then a crop.
        let (resized, cols, rows) = match self.resize {
            Resize::ShorterSide(side) => {
                let (rw, rh) = resized_size(width, height, side);
                let (left, top) = (center_offset(rw, self.crop), center_offset(rh, self.crop));
                (
                    (rw as usize, rh as usize),
                    left as usize..(left + self.crop) as usize,
                    top as usize..(top + self.crop) as usize,
                )
            }
            Resize::Exact { height, width } => (
                (width as usize, height as usize),
                0..width as usize,
                0..height as usize,
            ),
        };
        let pixels = resize_rgb8(
            image.as_raw(),
            (width as usize, height as usize),
            resized,
            cols,
            rows,
            self.filter,
        );
        let plane = out_h * out_w;
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in pixels.chunks_exact(3).enumerate() {
            r[i] = self.table[0][px[0] as usize];
            g[i] = self.table[1][px[1] as usize];
            b[i] = self.table[2][px[2] as usize];
        }
        Ok(())
    }
}

fn resize_error(width: u32, height: u32, e: impl std::fmt::Display) -> Error {
    Error::Preprocess {
        width,
        height,
        reason: e.to_string(),
    }
}

/// torchvision's `Resize(side)` output (width, height): the shorter side becomes `side`, the
/// longer one `int(side * long / short)`.
pub fn resized_size(width: u32, height: u32, side: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (f64::from(side) * f64::from(long) / f64::from(short)) as u32;
    if width <= height {
        (side, new_long)
    } else {
        (new_long, side)
    }
}

/// torchvision's `CenterCrop` offset: `int(round((size - crop) / 2))`, with Python's
/// round-half-to-even.
pub fn center_offset(size: u32, crop: u32) -> u32 {
    let diff = size.saturating_sub(crop);
    let half = diff / 2;
    if diff % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// Three values as a user types them: `0.5,0.5,0.5`.
fn as_typed(values: &[f32; 3]) -> String {
    values.map(|v| v.to_string()).join(",")
}
