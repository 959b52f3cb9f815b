//! Conversion between [`Image`]s (8-bit RGB) and model tensors `(B, 3, H, W)` in `[−1, 1]`.
//!
//! A byte `u` maps to `u/127.5 − 1`; back, a value is clamped to `[−1, 1]` and mapped to
//! `round((x + 1)·127.5)`, so a round trip through a tensor is exact. NaN maps to 0.

use burn::tensor::{Device, Tensor, TensorData};
use rlrig_contract::Image;

/// Images that cannot become a tensor, or a tensor that cannot become images.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageTensorError {
    /// No images.
    #[error("an empty batch of images has no tensor")]
    Empty,
    /// Images of different sizes in one batch.
    #[error("image {index} is {width}x{height}; image 0 is {expected_width}x{expected_height}")]
    SizeMismatch {
        /// Index of the offending image.
        index: usize,
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
        /// The width of image 0.
        expected_width: u32,
        /// The height of image 0.
        expected_height: u32,
    },
    /// A tensor whose channel axis is not RGB.
    #[error("a tensor of {channels} channels is not RGB images (3 channels)")]
    Channels {
        /// The tensor's channel count.
        channels: usize,
    },
}

/// The images as one tensor `(B, 3, H, W)` in `[−1, 1]` on `device`.
pub fn images_to_tensor(images: &[Image], device: &Device) -> Result<Tensor<4>, ImageTensorError> {
    let first = images.first().ok_or(ImageTensorError::Empty)?;
    let (w, h) = (first.width(), first.height());
    if let Some((index, img)) = images
        .iter()
        .enumerate()
        .find(|(_, i)| (i.width(), i.height()) != (w, h))
    {
        return Err(ImageTensorError::SizeMismatch {
            index,
            width: img.width(),
            height: img.height(),
            expected_width: w,
            expected_height: h,
        });
    }
    let plane = w as usize * h as usize;
    let mut values = vec![0f32; images.len() * 3 * plane];
    for (img, out) in images.iter().zip(values.chunks_exact_mut(3 * plane)) {
        for (p, rgb) in img.pixels().chunks_exact(3).enumerate() {
            for (c, &byte) in rgb.iter().enumerate() {
                out[c * plane + p] = f32::from(byte) / 127.5 - 1.0;
            }
        }
    }
    Ok(Tensor::from_data(
        TensorData::new(values, [images.len(), 3, h as usize, w as usize]),
        device,
    ))
}

/// The tensor `(B, 3, H, W)` as images, values clamped to `[−1, 1]`.
pub fn tensor_to_images(tensor: Tensor<4>) -> Result<Vec<Image>, ImageTensorError> {
    let [b, channels, h, w] = tensor.dims();
    if channels != 3 {
        return Err(ImageTensorError::Channels { channels });
    }
    let values: Vec<f32> = tensor.into_data().iter::<f32>().collect();
    let plane = h * w;
    Ok(values
        .chunks_exact(3 * plane)
        .take(b)
        .map(|img| {
            let mut pixels = vec![0u8; 3 * plane];
            for (c, channel) in img.chunks_exact(plane).enumerate() {
                for (p, &v) in channel.iter().enumerate() {
                    // `as u8` saturates and maps NaN to 0.
                    pixels[3 * p + c] = ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
                }
            }
            Image::from_raw(w as u32, h as u32, pixels).expect("3 bytes per pixel")
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_exact_and_values_are_clamped() {
        let device = Device::flex();
        let mut img = Image::filled(4, 3, [0, 128, 255]);
        img.put(1, 2, [7, 200, 31]);
        let t = images_to_tensor(&[img.clone(), img.clone()], &device).unwrap();
        assert_eq!(t.dims(), [2, 3, 3, 4]);
        let v: Vec<f32> = t.clone().into_data().iter::<f32>().collect();
        assert_eq!(v[0], -1.0); // red channel of pixel (0, 0)
        assert_eq!(v[12], 128.0 / 127.5 - 1.0); // green channel of pixel (0, 0)
        assert_eq!(tensor_to_images(t.clone()).unwrap(), vec![img.clone(), img]);

        let out = tensor_to_images(t.mul_scalar(5.0)).unwrap();
        // 0 and 255 are pushed past the ends and clamped; 128 (0.0039) becomes 130.
        assert_eq!(out[0].get(0, 0), [0, 130, 255]);
    }

    #[test]
    fn bad_batches_are_errors() {
        let device = Device::flex();
        assert_eq!(
            images_to_tensor(&[], &device).unwrap_err(),
            ImageTensorError::Empty
        );
        let err = images_to_tensor(
            &[Image::filled(4, 4, [0; 3]), Image::filled(4, 5, [0; 3])],
            &device,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "image 1 is 4x5; image 0 is 4x4");
        let six = Tensor::<4>::zeros([1, 6, 2, 2], &device);
        assert_eq!(
            tensor_to_images(six).unwrap_err(),
            ImageTensorError::Channels { channels: 6 }
        );
    }
}
