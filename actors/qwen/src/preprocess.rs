//! Qwen2-VL / Qwen2.5-VL's image processor, computed as transformers 5.24's PIL-based
//! `Qwen2VLImageProcessorPil` does: [`smart_resize`] picks a size of whole merged patches within
//! the pixel bounds, Pillow's bicubic filter resizes the 8-bit image to it (bit-exact,
//! [`resize_bicubic`]), the bytes are rescaled (in `f64`, then rounded to `f32`) and normalised
//! (in `f32`), and the image, repeated over the temporal patch, is cut into rows of patches in
//! the order the vision tower reads them ([`preprocess`]).

use std::path::Path;

use rlrig_contract::Image;
use serde::Deserialize;
use serde_json::Value;

use crate::QwenError;
use rlrig_hf::HfError;

/// OpenAI CLIP's per-channel mean, transformers' `OPENAI_CLIP_MEAN`.
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP's per-channel standard deviation, transformers' `OPENAI_CLIP_STD`.
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// PIL's code for the bicubic filter (`PILImageResampling.BICUBIC`), the only one supported.
const BICUBIC: u32 = 3;

/// The image processor's settings (`preprocessor_config.json`).
///
/// The pixel bounds are read from the top-level `min_pixels` / `max_pixels` (the published
/// checkpoints) or from `size: {"shortest_edge", "longest_edge"}` (what transformers 5.x's
/// `save_pretrained` writes); the top-level keys win, as in transformers. Bookkeeping keys
/// (`image_processor_type`, `processor_class`, …) are ignored, transformers' generic keys are
/// accepted at values that change nothing (`do_center_crop: false`, `crop_size: null`, …), and
/// any other key, or an unsupported value (`resample` other than 3, …), is refused by name.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct ProcessorConfig {
    /// Fewest pixels of the resized image (`size.shortest_edge`).
    pub min_pixels: usize,
    /// Most pixels of the resized image (`size.longest_edge`).
    pub max_pixels: usize,
    /// Side of a patch in pixels.
    pub patch_size: usize,
    /// Frames per patch; an image is repeated to fill them.
    pub temporal_patch_size: usize,
    /// Side of the square of patches merged into one token.
    pub merge_size: usize,
    /// Per-channel mean subtracted after rescaling.
    pub image_mean: [f64; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub image_std: [f64; 3],
    /// Whether to resize to [`smart_resize`]'s size.
    pub do_resize: bool,
    /// Whether to multiply the bytes by `rescale_factor`.
    pub do_rescale: bool,
    /// The rescale factor (1/255).
    pub rescale_factor: f64,
    /// Whether to normalise with `image_mean` / `image_std`.
    pub do_normalize: bool,
    /// Whether to convert to RGB (a no-op here: images are already RGB).
    pub do_convert_rgb: bool,
    /// PIL's resampling filter (only 3, bicubic).
    pub resample: u32,
}

impl Default for ProcessorConfig {
    /// Qwen2.5-VL's defaults (transformers' `Qwen2VLImageProcessor` class defaults).
    fn default() -> Self {
        ProcessorConfig {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            do_resize: true,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            do_convert_rgb: true,
            resample: BICUBIC,
        }
    }
}

/// `size` in `preprocessor_config.json`: transformers 5.x's `shortest_edge` / `longest_edge`
/// (pixel counts, despite the names), or 4.x's `min_pixels` / `max_pixels`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSize {
    #[serde(default)]
    shortest_edge: Option<usize>,
    #[serde(default)]
    longest_edge: Option<usize>,
    #[serde(default)]
    min_pixels: Option<usize>,
    #[serde(default)]
    max_pixels: Option<usize>,
}

/// A mean or standard deviation: one number for every channel or one per channel.
#[derive(Deserialize)]
#[serde(untagged)]
enum PerChannel {
    One(f64),
    Three([f64; 3]),
}

impl PerChannel {
    fn get(&self) -> [f64; 3] {
        match *self {
            PerChannel::One(v) => [v; 3],
            PerChannel::Three(v) => v,
        }
    }
}

/// A key that, when written, must hold a value: `null` is refused (transformers would take it
/// as `None`, which is neither the default nor a setting).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// `preprocessor_config.json` as written, before the checks. `min_pixels`, `max_pixels` and
/// `size` may be `null` (transformers then keeps the defaults).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    min_pixels: Option<usize>,
    #[serde(default)]
    max_pixels: Option<usize>,
    #[serde(default)]
    size: Option<RawSize>,
    #[serde(default, deserialize_with = "present")]
    patch_size: Option<usize>,
    #[serde(default, deserialize_with = "present")]
    temporal_patch_size: Option<usize>,
    #[serde(default, deserialize_with = "present")]
    merge_size: Option<usize>,
    #[serde(default, deserialize_with = "present")]
    image_mean: Option<PerChannel>,
    #[serde(default, deserialize_with = "present")]
    image_std: Option<PerChannel>,
    #[serde(default, deserialize_with = "present")]
    do_resize: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    do_rescale: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    rescale_factor: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    do_normalize: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    do_convert_rgb: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    resample: Option<u32>,
    // transformers' generic image-processor keys, accepted where they change nothing.
    #[serde(default)]
    do_center_crop: Option<Value>,
    #[serde(default)]
    crop_size: Option<Value>,
    #[serde(default)]
    do_pad: Option<Value>,
    #[serde(default)]
    pad_size: Option<Value>,
    #[serde(default)]
    data_format: Option<Value>,
    #[serde(default)]
    input_data_format: Option<Value>,
    #[serde(default)]
    return_tensors: Option<Value>,
    #[serde(default)]
    device: Option<Value>,
    #[serde(default)]
    disable_grouping: Option<Value>,
    #[serde(default)]
    default_to_square: Option<Value>,
    // Bookkeeping, ignored.
    #[serde(default, rename = "image_processor_type")]
    _image_processor_type: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "processor_class")]
    _processor_class: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "_processor_class")]
    _underscore_processor_class: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "feature_extractor_type")]
    _feature_extractor_type: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "auto_map")]
    _auto_map: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "transformers_version")]
    _transformers_version: Option<serde::de::IgnoredAny>,
}

/// Refuses a generic key unless it is absent, `null` or one of `neutral`.
fn neutral(key: &str, value: &Option<Value>, neutral: &[Value]) -> Result<(), String> {
    match value {
        None => Ok(()),
        Some(v) if neutral.contains(v) => Ok(()),
        Some(v) => Err(format!("`{key}`: {v} is not supported")),
    }
}

impl TryFrom<RawConfig> for ProcessorConfig {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Self, String> {
        let d = ProcessorConfig::default();
        // transformers: `size` (or the class default when absent), then the top-level
        // `min_pixels` / `max_pixels` override it.
        let (mut min_pixels, mut max_pixels) = match &raw.size {
            None => (Some(d.min_pixels), Some(d.max_pixels)),
            Some(s) => (
                s.shortest_edge.or(s.min_pixels),
                s.longest_edge.or(s.max_pixels),
            ),
        };
        if raw.min_pixels.is_some() {
            min_pixels = raw.min_pixels;
        }
        if raw.max_pixels.is_some() {
            max_pixels = raw.max_pixels;
        }
        let min_pixels =
            min_pixels.ok_or("`size`: needs `shortest_edge` (or a top-level `min_pixels`)")?;
        let max_pixels =
            max_pixels.ok_or("`size`: needs `longest_edge` (or a top-level `max_pixels`)")?;
        neutral("do_center_crop", &raw.do_center_crop, &[Value::Bool(false)])?;
        neutral("crop_size", &raw.crop_size, &[])?;
        neutral("do_pad", &raw.do_pad, &[Value::Bool(false)])?;
        neutral("pad_size", &raw.pad_size, &[])?;
        neutral(
            "data_format",
            &raw.data_format,
            &[Value::from("channels_first")],
        )?;
        neutral("input_data_format", &raw.input_data_format, &[])?;
        neutral("return_tensors", &raw.return_tensors, &[])?;
        neutral("device", &raw.device, &[])?;
        let bools = [Value::Bool(false), Value::Bool(true)];
        neutral("disable_grouping", &raw.disable_grouping, &bools)?;
        neutral("default_to_square", &raw.default_to_square, &bools)?;
        let config = ProcessorConfig {
            min_pixels,
            max_pixels,
            patch_size: raw.patch_size.unwrap_or(d.patch_size),
            temporal_patch_size: raw.temporal_patch_size.unwrap_or(d.temporal_patch_size),
            merge_size: raw.merge_size.unwrap_or(d.merge_size),
            image_mean: raw.image_mean.map_or(d.image_mean, |m| m.get()),
            image_std: raw.image_std.map_or(d.image_std, |s| s.get()),
            do_resize: raw.do_resize.unwrap_or(d.do_resize),
            do_rescale: raw.do_rescale.unwrap_or(d.do_rescale),
            rescale_factor: raw.rescale_factor.unwrap_or(d.rescale_factor),
            do_normalize: raw.do_normalize.unwrap_or(d.do_normalize),
            do_convert_rgb: raw.do_convert_rgb.unwrap_or(d.do_convert_rgb),
            resample: raw.resample.unwrap_or(d.resample),
        };
        config.check()?;
        Ok(config)
    }
}

impl ProcessorConfig {
    /// Reads and checks `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, QwenError> {
        let raw: RawConfig = crate::read_json(path)?;
        ProcessorConfig::try_from(raw).map_err(|message| {
            QwenError::File(HfError::Config {
                path: path.to_owned(),
                message,
            })
        })
    }

    /// Checks the settings, naming the first unsupported key.
    fn check(&self) -> Result<(), String> {
        if self.resample != BICUBIC {
            return Err(format!(
                "`resample`: {} is not supported (only 3, bicubic)",
                self.resample
            ));
        }
        for (key, v) in [
            ("min_pixels", self.min_pixels),
            ("max_pixels", self.max_pixels),
            ("patch_size", self.patch_size),
            ("temporal_patch_size", self.temporal_patch_size),
            ("merge_size", self.merge_size),
        ] {
            if v == 0 {
                return Err(format!("`{key}`: must be positive"));
            }
        }
        if self.image_mean.iter().any(|m| !m.is_finite()) {
            return Err("`image_mean`: must be finite".into());
        }
        if self.image_std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err("`image_std`: must be finite and non-zero".into());
        }
        if !self.rescale_factor.is_finite() {
            return Err("`rescale_factor`: must be finite".into());
        }
        Ok(())
    }

    /// Tokens an image of `grid` (temporal, height, width, in patches) takes in the decoder:
    /// `t · h · w / merge_size²`.
    pub fn image_tokens(&self, grid: [usize; 3]) -> usize {
        grid[0] * grid[1] * grid[2] / (self.merge_size * self.merge_size).max(1)
    }

    /// The patch grid (temporal, height, width) [`preprocess`] gives an image of `height` ×
    /// `width` pixels, without processing it.
    pub fn grid(&self, height: usize, width: usize) -> Result<[usize; 3], QwenError> {
        let (h, w) = self.target_size(height, width)?;
        Ok([1, h / self.patch_size, w / self.patch_size])
    }

    /// The size (height, width) the image is processed at: [`smart_resize`]'s when resizing,
    /// else its own, which must then be whole merged patches.
    fn target_size(&self, height: usize, width: usize) -> Result<(usize, usize), QwenError> {
        self.check().map_err(QwenError::Invalid)?;
        let factor = self.patch_size * self.merge_size;
        let (h, w) = if self.do_resize {
            smart_resize(height, width, factor, self.min_pixels, self.max_pixels)?
        } else {
            (height, width)
        };
        if h == 0 || w == 0 || !h.is_multiple_of(factor) || !w.is_multiple_of(factor) {
            return Err(QwenError::Invalid(format!(
                "an image of {w}x{h} pixels is not whole {factor}x{factor} merged patches{}",
                if self.do_resize {
                    ""
                } else {
                    " (`do_resize` is false)"
                }
            )));
        }
        Ok((h, w))
    }
}

/// The size (height, width) nearest to `height` × `width` that is a multiple of `factor` on
/// both sides and holds between `min_pixels` and `max_pixels` pixels, as transformers'
/// `smart_resize` computes it (Python's round-half-to-even, `f64` arithmetic). Like it, this
/// refuses an aspect ratio above 200, and it refuses zero sizes, `factor` or `max_pixels`
/// (where Python would divide by zero).
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize), QwenError> {
    if height == 0 || width == 0 || factor == 0 || max_pixels == 0 {
        return Err(QwenError::Invalid(format!(
            "smart_resize: height {height}, width {width}, factor {factor} and max_pixels \
             {max_pixels} must be positive"
        )));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > 200.0 {
        return Err(QwenError::Invalid(format!(
            "absolute aspect ratio must be smaller than 200, got {ratio} ({width}x{height})"
        )));
    }
    let mut h_bar = (h / f).round_ties_even() as usize * factor;
    let mut w_bar = (w / f).round_ties_even() as usize * factor;
    // Python's ints do not overflow; the product of two sizes fits u128.
    let area = height as u128 * width as u128;
    if h_bar as u128 * w_bar as u128 > max_pixels as u128 {
        let beta = (area as f64 / max_pixels as f64).sqrt();
        h_bar = factor.max((h / beta / f).floor() as usize * factor);
        w_bar = factor.max((w / beta / f).floor() as usize * factor);
    } else if (h_bar as u128 * w_bar as u128) < min_pixels as u128 {
        let beta = (min_pixels as f64 / area as f64).sqrt();
        h_bar = (h * beta / f).ceil() as usize * factor;
        w_bar = (w * beta / f).ceil() as usize * factor;
    }
    Ok((h_bar, w_bar))
}

/// Pillow's fixed-point precision for 8-bit resampling (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bicubic kernel (a = −0.5).
fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One pass's fixed-point coefficients: for each output index, the first input index and how
/// many inputs it reads, and `ksize` coefficients a row.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    k: Vec<i32>,
}

/// Pillow's `precompute_coeffs` then `normalize_coeffs_8bpc` for the bicubic filter over the
/// whole input (box `0..in_size`).
fn precompute_coeffs(in_size: usize, out_size: usize) -> Coeffs {
    const SUPPORT: f64 = 2.0;
    // The box edges are C floats: `(double)(in1 - in0) / outSize`.
    let scale = f64::from(in_size as f32) / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's `(int)` truncates toward zero, as `as` does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, wx) in w[..n].iter_mut().enumerate() {
            *wx = bicubic_filter(((x + xmin) as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        let row = &mut k[xx * ksize..xx * ksize + n];
        for (kx, &wx) in row.iter_mut().zip(&w[..n]) {
            let v = if ww != 0.0 { wx / ww } else { wx };
            let fixed = v * f64::from(1u32 << PRECISION_BITS);
            *kx = if v < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs { ksize, bounds, k }
}

/// Pillow's `clip8`: the accumulated fixed-point sum to a byte.
#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's horizontal pass over rows `first_row..first_row + n_rows` of `src` (`src_w`
/// pixels wide): `n_rows` rows of `hor.bounds.len()` pixels.
fn horizontal_pass(
    src: &[u8],
    src_w: usize,
    first_row: usize,
    n_rows: usize,
    hor: &Coeffs,
) -> Vec<u8> {
    let half = 1i32 << (PRECISION_BITS - 1);
    let dst_w = hor.bounds.len();
    let mut out = vec![0u8; n_rows * dst_w * 3];
    for (y, out_row) in out.chunks_exact_mut(dst_w * 3).enumerate() {
        let in_row = &src[(y + first_row) * src_w * 3..(y + first_row + 1) * src_w * 3];
        for (xx, px) in out_row.chunks_exact_mut(3).enumerate() {
            let (xmin, n) = hor.bounds[xx];
            let k = &hor.k[xx * hor.ksize..xx * hor.ksize + n];
            let (mut s0, mut s1, mut s2) = (half, half, half);
            for (p, &kx) in in_row[xmin * 3..(xmin + n) * 3].chunks_exact(3).zip(k) {
                s0 += i32::from(p[0]) * kx;
                s1 += i32::from(p[1]) * kx;
                s2 += i32::from(p[2]) * kx;
            }
            px[0] = clip8(s0);
            px[1] = clip8(s1);
            px[2] = clip8(s2);
        }
    }
    out
}

/// Pillow's vertical pass over `src` (`width` pixels wide, its first row being input row
/// `row_offset`): `vert.bounds.len()` rows.
fn vertical_pass(src: &[u8], width: usize, row_offset: usize, vert: &Coeffs) -> Vec<u8> {
    let half = 1i32 << (PRECISION_BITS - 1);
    let stride = width * 3;
    let mut out = vec![0u8; vert.bounds.len() * stride];
    let mut acc = vec![0i32; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin, n) = vert.bounds[yy];
        let k = &vert.k[yy * vert.ksize..yy * vert.ksize + n];
        acc.fill(half);
        for (y, &ky) in (ymin - row_offset..).zip(k) {
            for (a, &p) in acc.iter_mut().zip(&src[y * stride..(y + 1) * stride]) {
                *a += i32::from(p) * ky;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Resizes 8-bit RGB bytes (`src_w` × `src_h`, row-major) to `dst_w` × `dst_h` exactly as
/// Pillow 13's `Image.resize((dst_w, dst_h), Image.BICUBIC)`: two separable passes, each
/// rounding and clipping to bytes, a pass whose size does not change skipped. The horizontal
/// pass runs first (over the rows the vertical pass reads), unless the height shrinks by more
/// than twice as many pixels as the width does (Pillow 13, python-pillow/Pillow#9549; Pillow
/// 12 and older always ran the horizontal pass first).
fn resize_rgb8(src: &[u8], src_w: usize, src_h: usize, dst_w: usize, dst_h: usize) -> Vec<u8> {
    let need_horizontal = dst_w != src_w;
    let need_vertical = dst_h != src_h;
    if !need_horizontal && !need_vertical {
        return src.to_vec();
    }
    let vertical_first =
        dst_h < src_h && (src_h - dst_h) as i128 > 2 * (src_w as i128 - dst_w as i128);
    let vert = precompute_coeffs(src_h, dst_h);
    if vertical_first {
        let tmp = vertical_pass(src, src_w, 0, &vert);
        if !need_horizontal {
            return tmp;
        }
        return horizontal_pass(&tmp, src_w, 0, dst_h, &precompute_coeffs(src_w, dst_w));
    }
    if !need_horizontal {
        return vertical_pass(src, src_w, 0, &vert);
    }
    // Only the rows the vertical pass reads (all of them, with the whole image as the box).
    let first_row = vert.bounds[0].0;
    let last_row = vert.bounds[dst_h - 1].0 + vert.bounds[dst_h - 1].1;
    let hor = precompute_coeffs(src_w, dst_w);
    let tmp = horizontal_pass(src, src_w, first_row, last_row - first_row, &hor);
    if !need_vertical {
        return tmp;
    }
    vertical_pass(&tmp, dst_w, first_row, &vert)
}

/// Resizes an image to `width` × `height` with Pillow's bicubic filter, bit-exact with
/// `PIL.Image.resize((width, height), Image.BICUBIC)` on an RGB image. The same size returns
/// the image unchanged.
pub fn resize_bicubic(image: &Image, width: usize, height: usize) -> Result<Image, QwenError> {
    let (src_w, src_h) = (image.width() as usize, image.height() as usize);
    if src_w == 0 || src_h == 0 || width == 0 || height == 0 {
        return Err(QwenError::Invalid(format!(
            "cannot resize an image of {src_w}x{src_h} pixels to {width}x{height}"
        )));
    }
    let (w32, h32) = match (u32::try_from(width), u32::try_from(height)) {
        (Ok(w), Ok(h)) => (w, h),
        _ => {
            return Err(QwenError::Invalid(format!(
                "{width}x{height} is too large an image"
            )));
        }
    };
    let pixels = resize_rgb8(image.pixels(), src_w, src_h, width, height);
    Image::from_raw(w32, h32, pixels).map_err(|e| QwenError::Invalid(e.to_string()))
}

/// An image cut into patches for the vision tower.
#[derive(Clone, Debug, PartialEq)]
pub struct Patches {
    /// `rows` × `cols` values, row-major. The rows run over the merged blocks (row-major), and
    /// within a block over its `merge_size` × `merge_size` patches (row-major); a row holds the
    /// channels, then the `temporal_patch_size` frames (copies of the image), then the patch's
    /// pixels (row-major).
    pub values: Vec<f32>,
    /// Patches: `grid[1] · grid[2]`.
    pub rows: usize,
    /// Values a patch: `3 · temporal_patch_size · patch_size²`.
    pub cols: usize,
    /// The grid (temporal, height, width) in patches; the temporal side is 1 for an image.
    pub grid: [usize; 3],
    /// The size (height, width) the image was processed at.
    pub resized: (usize, usize),
}

/// The processed value of each byte, per channel: rescaled in `f64` and rounded to `f32`
/// (transformers' `rescale`), then normalised in `f32` (its `normalize`).
fn value_table(config: &ProcessorConfig) -> [[f32; 256]; 3] {
    let mut table = [[0f32; 256]; 3];
    for (c, t) in table.iter_mut().enumerate() {
        let mean = config.image_mean[c] as f32;
        let std = config.image_std[c] as f32;
        for (b, v) in t.iter_mut().enumerate() {
            let mut x = if config.do_rescale {
                (b as f64 * config.rescale_factor) as f32
            } else {
                b as f32
            };
            if config.do_normalize {
                x = (x - mean) / std;
            }
            *v = x;
        }
    }
    table
}

/// Processes an RGB image as transformers' `Qwen2VLImageProcessorPil` does with this
/// configuration: resize to [`smart_resize`]'s size with Pillow's bicubic filter, rescale,
/// normalise, repeat over `temporal_patch_size` frames and cut into patches in the vision
/// tower's order (`pixel_values` and `image_grid_thw`).
pub fn preprocess(config: &ProcessorConfig, image: &Image) -> Result<Patches, QwenError> {
    let (src_w, src_h) = (image.width() as usize, image.height() as usize);
    let (h, w) = config.target_size(src_h, src_w)?;
    let resized;
    let pixels = if (h, w) == (src_h, src_w) {
        image.pixels()
    } else {
        resized = resize_rgb8(image.pixels(), src_w, src_h, w, h);
        &resized[..]
    };
    let table = value_table(config);
    let p = config.patch_size;
    let m = config.merge_size;
    let t = config.temporal_patch_size;
    let (gh, gw) = (h / p, w / p);
    let frame = p * p;
    let cols = 3 * t * frame;
    let rows = gh * gw;
    let blocks_w = gw / m;
    let mut values = vec![0f32; rows * cols];
    for (row, out) in values.chunks_exact_mut(cols).enumerate() {
        // Rows run over merged blocks, then over the patches inside a block.
        let (block, inner) = (row / (m * m), row % (m * m));
        let y0 = (block / blocks_w * m + inner / m) * p;
        let x0 = (block % blocks_w * m + inner % m) * p;
        for (c, (chan, lut)) in out.chunks_exact_mut(t * frame).zip(&table).enumerate() {
            let (first, rest) = chan.split_at_mut(frame);
            for (ph, dst) in first.chunks_exact_mut(p).enumerate() {
                let start = ((y0 + ph) * w + x0) * 3 + c;
                let src = pixels[start..=start + 3 * (p - 1)].iter().step_by(3);
                for (d, &b) in dst.iter_mut().zip(src) {
                    *d = lut[usize::from(b)];
                }
            }
            for copy in rest.chunks_exact_mut(frame) {
                copy.copy_from_slice(first);
            }
        }
    }
    Ok(Patches {
        values,
        rows,
        cols,
        grid: [1, gh, gw],
        resized: (h, w),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test pattern also used to make the expected values in Python:
    /// byte `i` is `((i · 2654435761) mod 2³²) >> 24`.
    fn synth(width: u32, height: u32) -> Image {
        let n = width as usize * height as usize * 3;
        let pixels = (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        Image::from_raw(width, height, pixels).expect("size matches")
    }

    #[test]
    fn smart_resize_matches_transformers() {
        // ((height, width, factor, min_pixels, max_pixels), (height, width)) from transformers
        // 5.24's `smart_resize` (models/qwen2_vl/image_processing_pil_qwen2_vl.py).
        let cases = [
            ((90, 120, 28, 3136, 1003520), (84, 112)),
            ((120, 90, 28, 3136, 1003520), (112, 84)),
            ((42, 70, 28, 3136, 1003520), (56, 56)),
            ((70, 42, 28, 3136, 1003520), (56, 56)),
            ((98, 154, 28, 3136, 1003520), (112, 168)),
            ((14, 14, 28, 3136, 1003520), (56, 56)),
            ((1, 1, 28, 3136, 1003520), (56, 56)),
            ((28, 28, 28, 3136, 1003520), (56, 56)),
            ((224, 224, 28, 3136, 1003520), (224, 224)),
            ((1080, 1920, 28, 3136, 1003520), (728, 1316)),
            ((4032, 3024, 28, 3136, 12845056), (4032, 3024)),
            ((5000, 5000, 28, 3136, 1003520), (980, 980)),
            ((10, 2000, 28, 3136, 1003520), (28, 812)),
            ((300, 20, 28, 3136, 1003520), (308, 28)),
            ((20, 300, 28, 3136, 1003520), (28, 308)),
            ((61, 37, 28, 3136, 1003520), (84, 56)),
            ((37, 61, 28, 3136, 1003520), (56, 84)),
            ((150, 200, 28, 3136, 1003520), (140, 196)),
            ((500, 700, 28, 200704, 1003520), (504, 700)),
            ((480, 640, 32, 3136, 16777216), (480, 640)),
            ((28, 5000, 28, 3136, 3136), (28, 728)),
            ((1, 200, 28, 3136, 1003520), (28, 812)),
            ((333, 777, 28, 3136, 1003520), (336, 784)),
            ((1000, 1000, 28, 3136, 1003520), (980, 980)),
            ((999, 1001, 28, 3136, 1003520), (980, 980)),
            ((57, 4000, 28, 3136, 1003520), (56, 4004)),
        ];
        for ((h, w, f, min, max), want) in cases {
            let got = smart_resize(h, w, f, min, max).expect("valid sizes");
            assert_eq!(got, want, "smart_resize({h}, {w}, {f}, {min}, {max})");
        }
        // transformers refuses these (aspect ratio 8000 and 200.5); zero sizes divide by zero.
        assert!(smart_resize(8000, 1, 28, 3136, 1003520).is_err());
        assert!(smart_resize(2, 401, 28, 3136, 1003520).is_err());
        assert!(smart_resize(0, 10, 28, 3136, 1003520).is_err());
        assert!(smart_resize(10, 10, 0, 3136, 1003520).is_err());
    }

    #[test]
    fn same_size_resize_is_identity() {
        let image = synth(13, 7);
        assert_eq!(resize_bicubic(&image, 13, 7).expect("resizes"), image);
        assert!(resize_bicubic(&image, 0, 7).is_err());
    }

    #[test]
    fn bicubic_matches_pillow() {
        // Pillow 13.0.0's `Image.fromarray(synth, "RGB").resize((w, h), Image.BICUBIC)`.
        let down: [u8; 36] = [
            156, 141, 41, 181, 72, 193, 107, 48, 174, 44, 205, 105, 235, 132, 32, 166, 60, 184, 98,
            156, 165, 36, 202, 96, 221, 123, 23, 158, 50, 175, 89, 181, 156, 27, 195, 87,
        ];
        let up: [u8; 297] = [
            0, 161, 63, 80, 144, 33, 225, 117, 34, 199, 93, 193, 167, 70, 246, 143, 46, 204, 119,
            3, 182, 96, 56, 157, 72, 216, 132, 45, 217, 105, 28, 187, 89, 70, 160, 62, 132, 143,
            32, 220, 116, 33, 195, 92, 192, 165, 69, 245, 142, 45, 203, 118, 0, 179, 95, 48, 156,
            71, 214, 131, 44, 216, 104, 27, 186, 88, 234, 156, 58, 226, 140, 28, 211, 113, 29, 186,
            89, 189, 162, 65, 242, 139, 41, 199, 116, 0, 175, 92, 42, 152, 67, 211, 128, 40, 212,
            101, 24, 182, 84, 255, 153, 55, 245, 136, 25, 207, 109, 26, 182, 85, 185, 159, 57, 238,
            136, 38, 196, 112, 79, 172, 88, 139, 149, 64, 215, 124, 37, 203, 97, 21, 179, 81, 248,
            150, 52, 231, 133, 22, 204, 106, 23, 180, 82, 182, 157, 48, 235, 133, 35, 193, 109,
            182, 170, 85, 255, 146, 61, 220, 121, 34, 192, 94, 18, 176, 78, 245, 147, 49, 228, 130,
            19, 201, 103, 20, 177, 79, 179, 153, 44, 232, 130, 32, 190, 106, 189, 167, 82, 255,
            143, 58, 218, 118, 31, 189, 91, 15, 173, 75, 241, 143, 46, 225, 127, 16, 198, 100, 16,
            173, 76, 176, 149, 41, 229, 126, 28, 187, 103, 175, 163, 79, 255, 139, 54, 214, 115,
            27, 186, 88, 11, 169, 71, 238, 140, 42, 221, 124, 12, 194, 97, 13, 170, 72, 172, 147,
            38, 225, 123, 25, 183, 99, 173, 160, 75, 252, 136, 51, 210, 111, 24, 182, 84, 8, 166,
            68, 237, 139, 41, 220, 123, 11, 193, 96, 12, 169, 71, 171, 146, 37, 224, 122, 24, 182,
            98, 172, 159, 74, 251, 135, 50, 209, 110, 23, 181, 83, 7, 165, 67,
        ];
        // Width up, height down by more than twice as much: Pillow 13 runs the vertical pass
        // first (17 bytes differ from the horizontal-first order).
        let vertical_first: [u8; 84] = [
            15, 189, 83, 168, 153, 47, 220, 118, 81, 197, 87, 151, 157, 50, 198, 118, 39, 193, 90,
            97, 158, 90, 189, 153, 62, 213, 122, 81, 198, 82, 140, 160, 51, 191, 123, 54, 198, 87,
            103, 167, 52, 164, 166, 60, 219, 136, 77, 203, 96, 136, 168, 59, 189, 131, 50, 202, 95,
            88, 172, 57, 149, 135, 32, 234, 136, 73, 204, 101, 136, 171, 59, 204, 140, 48, 206,
            105, 86, 168, 66, 157, 135, 34, 206, 105,
        ];
        // ((source width, height, target width, height), Pillow's bytes)
        type Case<'a> = ((u32, u32, usize, usize), &'a [u8]);
        let cases: [Case; 3] = [
            ((7, 5, 4, 3), &down),
            ((7, 5, 11, 9), &up),
            ((6, 9, 7, 4), &vertical_first),
        ];
        for ((sw, sh, dw, dh), want) in cases {
            let got = resize_bicubic(&synth(sw, sh), dw, dh).expect("resizes");
            assert_eq!((got.width() as usize, got.height() as usize), (dw, dh));
            assert_eq!(got.pixels(), want, "{sw}x{sh} -> {dw}x{dh}");
        }
    }

    /// The sum of the values' bit patterns: an order-free checksum of exact `f32`s.
    fn bits_sum(values: &[f32]) -> u64 {
        values.iter().map(|v| u64::from(v.to_bits())).sum()
    }

    #[test]
    fn patches_match_transformers() {
        // `Qwen2VLImageProcessorPil()(Image.fromarray(synth, "RGB"))["pixel_values"]` in
        // transformers 5.24 with Pillow 13.0.0: (row, column, value), and the sum of the bit
        // patterns of all values.
        let config = ProcessorConfig::default();
        // ((width, height), grid, bits_sum, [(row, column, value)])
        type Case<'a> = ((u32, u32), [usize; 3], u64, &'a [(usize, usize, f32)]);
        let cases: [Case; 2] = [
            (
                // Not resized (smart_resize keeps 56 x 84).
                (84, 56),
                [1, 4, 6],
                57_155_262_448_108,
                &[
                    (0, 0, -1.7922626),
                    (0, 1, 1.3901944),
                    (0, 14, 0.9814385),
                    (0, 196, -1.7922626),
                    (0, 392, 0.6191303),
                    (0, 784, -0.6270158),
                    (1, 0, 1.7843518),
                    (2, 0, -0.21563247),
                    (3, 0, -0.37621516),
                    (4, 0, 1.6237692),
                    (5, 200, -0.72657734),
                    (23, 1175, -1.2100385),
                ],
            ),
            (
                // Resized to 112 x 84.
                (120, 90),
                [1, 6, 8],
                106_020_803_940_352,
                &[
                    (0, 0, -1.5440893),
                    (0, 1, 1.2588086),
                    (0, 14, 0.26611567),
                    (0, 196, -1.5440893),
                    (0, 392, 0.4840604),
                    (0, 784, -0.57013553),
                    (1, 0, 1.1128243),
                    (2, 0, -0.24482933),
                    (3, 0, -0.9747507),
                    (4, 0, 0.3975015),
                    (5, 200, 1.0836275),
                    (23, 1175, 0.823431),
                    (47, 1175, 0.90875137),
                ],
            ),
        ];
        for ((w, h), grid, sum, probes) in cases {
            let p = preprocess(&config, &synth(w, h)).expect("processes");
            assert_eq!(p.grid, grid);
            assert_eq!(p.resized, (grid[1] * 14, grid[2] * 14));
            assert_eq!((p.rows, p.cols), (grid[1] * grid[2], 1176));
            assert_eq!(p.values.len(), p.rows * p.cols);
            assert_eq!(config.grid(h as usize, w as usize).expect("grid"), grid);
            for &(r, c, v) in probes {
                assert_eq!(
                    p.values[r * p.cols + c].to_bits(),
                    v.to_bits(),
                    "({r}, {c})"
                );
            }
            assert_eq!(bits_sum(&p.values), sum, "{w}x{h}");
        }
        assert_eq!(config.image_tokens([1, 6, 8]), 12);
    }

    #[test]
    fn patch_layout_is_the_processor_permutation() {
        // The frames (temporal, C, H, W) reshaped to (t, temporal, C, h/m, m, p, w/m, m, p) and
        // permuted (0, 3, 6, 4, 7, 2, 1, 5, 8), written out index by index.
        for (p, m, t) in [(14, 2, 2), (4, 1, 3), (2, 3, 1)] {
            let config = ProcessorConfig {
                patch_size: p,
                merge_size: m,
                temporal_patch_size: t,
                do_resize: false,
                ..ProcessorConfig::default()
            };
            let (w, h) = (3 * p * m, 2 * p * m);
            let image = synth(w as u32, h as u32);
            let out = preprocess(&config, &image).expect("processes");
            let table = value_table(&config);
            let (gh, gw) = (h / p, w / p);
            assert_eq!(out.grid, [1, gh, gw]);
            let mut i = 0;
            for bh in 0..gh / m {
                for bw in 0..gw / m {
                    for mh in 0..m {
                        for mw in 0..m {
                            for (c, lut) in table.iter().enumerate() {
                                for _ in 0..t {
                                    for ph in 0..p {
                                        for pw in 0..p {
                                            let y = (bh * m + mh) * p + ph;
                                            let x = (bw * m + mw) * p + pw;
                                            let b = image.pixels()[(y * w + x) * 3 + c];
                                            assert_eq!(out.values[i], lut[usize::from(b)]);
                                            i += 1;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            assert_eq!(i, out.values.len());
        }
    }

    #[test]
    fn without_resizing_the_size_must_be_whole_merged_patches() {
        let config = ProcessorConfig {
            do_resize: false,
            ..ProcessorConfig::default()
        };
        assert!(preprocess(&config, &synth(56, 30)).is_err());
        assert!(preprocess(&config, &synth(56, 28)).is_ok());
    }

    fn parse(json: &str) -> Result<ProcessorConfig, QwenError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("preprocessor_config.json");
        std::fs::write(&path, json).expect("writes");
        ProcessorConfig::from_file(&path)
    }

    fn message(json: &str) -> String {
        match parse(json) {
            Err(QwenError::File(HfError::Config { message, .. })) => message,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn reads_both_size_forms() {
        let d = ProcessorConfig::default();
        assert_eq!(parse("{}").expect("parses"), d);
        // As Qwen2.5-VL's checkpoints ship it.
        let published = parse(
            r#"{"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14,
                "temporal_patch_size": 2, "merge_size": 2,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "image_processor_type": "Qwen2VLImageProcessor",
                "processor_class": "Qwen2_5_VLProcessor"}"#,
        )
        .expect("parses");
        assert_eq!(
            (published.min_pixels, published.max_pixels),
            (3136, 12845056)
        );
        // As transformers 5.24's `save_pretrained` writes it.
        let saved = parse(
            r#"{"do_convert_rgb": true, "do_normalize": true, "do_rescale": true,
                "do_resize": true, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_processor_type": "Qwen2VLImageProcessor",
                "image_std": [0.26862954, 0.26130258, 0.27577711], "merge_size": 2,
                "patch_size": 14, "resample": 3, "rescale_factor": 0.00392156862745098,
                "size": {"longest_edge": 1003520, "shortest_edge": 3136},
                "temporal_patch_size": 2}"#,
        )
        .expect("parses");
        assert_eq!(saved, d);
        // The top-level keys override `size`, as in transformers.
        let both = parse(
            r#"{"size": {"shortest_edge": 100, "longest_edge": 2000},
                "min_pixels": 300, "max_pixels": 5000}"#,
        )
        .expect("parses");
        assert_eq!((both.min_pixels, both.max_pixels), (300, 5000));
        let legacy = parse(r#"{"size": {"min_pixels": 100, "max_pixels": 2000}}"#).expect("parses");
        assert_eq!((legacy.min_pixels, legacy.max_pixels), (100, 2000));
        let neutral = parse(
            r#"{"do_center_crop": null, "crop_size": null, "data_format": "channels_first",
                "default_to_square": true, "disable_grouping": null, "device": null}"#,
        )
        .expect("parses");
        assert_eq!(neutral, d);
        let scalar = parse(r#"{"image_mean": 0.5, "image_std": [0.5, 0.5, 0.5]}"#).expect("parses");
        assert_eq!(scalar.image_mean, [0.5; 3]);
    }

    #[test]
    fn refuses_unknown_keys_and_unsupported_values_by_name() {
        assert!(message(r#"{"foo": 1}"#).contains("foo"));
        assert!(message(r#"{"size": {"height": 224, "width": 224}}"#).contains("height"));
        assert!(message(r#"{"resample": 2}"#).contains("resample"));
        assert!(message(r#"{"size": {"shortest_edge": 100}}"#).contains("size"));
        assert!(message(r#"{"patch_size": 0}"#).contains("patch_size"));
        assert!(message(r#"{"do_center_crop": true}"#).contains("do_center_crop"));
        assert!(message(r#"{"image_std": [1, 0, 1]}"#).contains("image_std"));
        assert!(message(r#"{"do_resize": null}"#).contains("do_resize"));
    }
}
