//! An 8-bit RGB image, the unit of exchange between roles.

use serde::{Deserialize, Serialize};

/// An 8-bit RGB image, row-major, 3 bytes a pixel.
///
/// Serialised compactly: the pixels are one byte string, not an array of numbers.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawImage")]
pub struct Image {
    width: u32,
    height: u32,
    #[serde(with = "serde_bytes")]
    pixels: Vec<u8>,
}

#[derive(Deserialize)]
struct RawImage {
    width: u32,
    height: u32,
    #[serde(with = "serde_bytes")]
    pixels: Vec<u8>,
}

impl TryFrom<RawImage> for Image {
    type Error = ImageError;
    fn try_from(r: RawImage) -> Result<Self, ImageError> {
        Image::from_raw(r.width, r.height, r.pixels)
    }
}

/// Pixel data that does not fit the stated size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image of {width}x{height} needs {expected} bytes of RGB, got {got}")]
pub struct ImageError {
    width: u32,
    height: u32,
    expected: usize,
    got: usize,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image({}x{})", self.width, self.height)
    }
}

impl Image {
    /// An image of one colour.
    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Self {
        let pixels = rgb
            .iter()
            .copied()
            .cycle()
            .take(width as usize * height as usize * 3)
            .collect();
        Image {
            width,
            height,
            pixels,
        }
    }

    /// Wraps row-major RGB bytes; their length must be `width * height * 3`.
    pub fn from_raw(width: u32, height: u32, pixels: Vec<u8>) -> Result<Self, ImageError> {
        let expected = width as usize * height as usize * 3;
        if pixels.len() != expected {
            return Err(ImageError {
                width,
                height,
                expected,
                got: pixels.len(),
            });
        }
        Ok(Image {
            width,
            height,
            pixels,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The row-major RGB bytes.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The row-major RGB bytes, mutable.
    pub fn pixels_mut(&mut self) -> &mut [u8] {
        &mut self.pixels
    }

    /// Consumes the image, returning its bytes.
    pub fn into_raw(self) -> Vec<u8> {
        self.pixels
    }

    /// The pixel at `(x, y)`. Panics when out of bounds, like slice indexing.
    pub fn get(&self, x: u32, y: u32) -> [u8; 3] {
        let i = self.index(x, y);
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    /// Sets the pixel at `(x, y)`. Panics when out of bounds, like slice indexing.
    pub fn put(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        let i = self.index(x, y);
        self.pixels[i..i + 3].copy_from_slice(&rgb);
    }

    fn index(&self, x: u32, y: u32) -> usize {
        assert!(
            x < self.width && y < self.height,
            "pixel ({x}, {y}) outside {}x{}",
            self.width,
            self.height
        );
        (y as usize * self.width as usize + x as usize) * 3
    }
}

/// A PNG that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("PNG: {0}")]
pub struct PngError(#[from] ::image::ImageError);

impl Image {
    /// Encodes the image as PNG.
    pub fn to_png(&self) -> Result<Vec<u8>, PngError> {
        let mut out = std::io::Cursor::new(Vec::new());
        ::image::write_buffer_with_format(
            &mut out,
            &self.pixels,
            self.width,
            self.height,
            ::image::ExtendedColorType::Rgb8,
            ::image::ImageFormat::Png,
        )?;
        Ok(out.into_inner())
    }

    /// The largest width or height [`Image::from_png`] reads.
    pub const MAX_PNG_SIDE: u32 = 4096;
    /// The most memory [`Image::from_png`] lets the decoder take for the decoded pixels (64 MiB).
    pub const MAX_PNG_DECODED_BYTES: u64 = 64 << 20;

    /// Decodes a PNG (any colour type; converted to 8-bit RGB, alpha dropped). A PNG wider or
    /// taller than [`Image::MAX_PNG_SIDE`], or whose pixels would take more than
    /// [`Image::MAX_PNG_DECODED_BYTES`], is refused before its pixels are allocated: PNGs come
    /// from other processes and nodes, and a few bytes can declare a gigapixel image.
    pub fn from_png(bytes: &[u8]) -> Result<Self, PngError> {
        let mut reader = ::image::ImageReader::with_format(
            std::io::Cursor::new(bytes),
            ::image::ImageFormat::Png,
        );
        let mut limits = ::image::Limits::default();
        limits.max_image_width = Some(Self::MAX_PNG_SIDE);
        limits.max_image_height = Some(Self::MAX_PNG_SIDE);
        limits.max_alloc = Some(Self::MAX_PNG_DECODED_BYTES);
        reader.limits(limits);
        let img = reader.decode()?.into_rgb8();
        let (width, height) = img.dimensions();
        Ok(Image {
            width,
            height,
            pixels: img.into_raw(),
        })
    }
}
