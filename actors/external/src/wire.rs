//! The lines of protocol `rlrig-actor/1` as Rust types (see `docs/external-protocol.md`).
//!
//! Messages are the JSON forms of the contract's messages, except that every image is a
//! [`WireImage`] (`{"width", "height", "png_base64"}`) instead of raw bytes. A
//! [`GenerateRequest`] has no image and travels in its contract form; results that carry no
//! image ([`CheckReport`], [`EditProposal`](rlrig_contract::EditProposal)) do too.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rlrig_contract::{
    CheckReport, CheckRequest, EditRequest, GenerateRequest, Image, PngError, ProposeRequest, Role,
    SceneGraph,
};
use serde::{Deserialize, Serialize};

/// The protocol name a process must give in its hello.
pub const PROTOCOL: &str = "rlrig-actor/1";

/// The first line a process writes: `{"protocol": "rlrig-actor/1", "role": "checker"}`.
/// Other keys are allowed and ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must be [`PROTOCOL`].
    pub protocol: String,
    /// `diffuser`, `checker`, `policy` or `editor`.
    pub role: String,
}

/// One batch, as rlrig writes it: `{"id": 1, "role": "checker", "batch": [...]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request<T> {
    /// The batch's id; the reply must carry the same. Ids count up from 1.
    pub id: u64,
    /// The role asked for, the one the hello declared.
    pub role: Role,
    /// The requests; the reply has one result per request, in order.
    pub batch: Vec<T>,
}

/// An image on the wire: its size and its PNG, base64 with the standard alphabet and padding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The PNG file, base64-encoded.
    pub png_base64: String,
}

/// A [`WireImage`] that does not hold the image it claims.
#[derive(Debug, thiserror::Error)]
pub enum WireImageError {
    /// `png_base64` is not base64.
    #[error("png_base64 is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The bytes are not a readable PNG.
    #[error("png_base64 does not hold a readable PNG ({0})")]
    Png(#[from] PngError),
    /// The PNG's size differs from the declared one.
    #[error("declares {declared_width}x{declared_height}, but its PNG is {width}x{height}")]
    Size {
        /// The declared width.
        declared_width: u32,
        /// The declared height.
        declared_height: u32,
        /// The PNG's width.
        width: u32,
        /// The PNG's height.
        height: u32,
    },
}

impl WireImage {
    /// Encodes an image as PNG and base64.
    pub fn encode(image: &Image) -> Result<WireImage, PngError> {
        Ok(WireImage {
            width: image.width(),
            height: image.height(),
            png_base64: STANDARD.encode(image.to_png()?),
        })
    }

    /// Decodes the image, checking that the PNG has the declared size.
    pub fn decode(&self) -> Result<Image, WireImageError> {
        let image = Image::from_png(&STANDARD.decode(&self.png_base64)?)?;
        if (image.width(), image.height()) != (self.width, self.height) {
            return Err(WireImageError::Size {
                declared_width: self.width,
                declared_height: self.height,
                width: image.width(),
                height: image.height(),
            });
        }
        Ok(image)
    }
}

/// A [`GenerateRequest`] on the wire: it has no image, so it is its contract form
/// `{"prompt", "seed"}`.
pub type WireGenerateRequest = GenerateRequest;

/// A [`CheckRequest`] on the wire: `{"prompt", "image"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireCheckRequest {
    /// The prompt's scene graph (a LAION-SG record).
    pub prompt: SceneGraph,
    /// The image to judge.
    pub image: WireImage,
}

/// A [`ProposeRequest`] on the wire: `{"prompt", "image", "report", "seed"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireProposeRequest {
    /// The prompt's scene graph (a LAION-SG record).
    pub prompt: SceneGraph,
    /// The current image.
    pub image: WireImage,
    /// The checker's reflection on it.
    pub report: CheckReport,
    /// Seed for sampling the edit prompt.
    pub seed: u64,
}

/// An [`EditRequest`] on the wire: `{"image", "edit_prompt", "seed"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireEditRequest {
    /// The image to edit.
    pub image: WireImage,
    /// The edit prompt.
    pub edit_prompt: String,
    /// Seed of the sampling noise.
    pub seed: u64,
}

impl WireCheckRequest {
    /// The wire form of a request.
    pub fn encode(r: &CheckRequest) -> Result<Self, PngError> {
        Ok(WireCheckRequest {
            prompt: r.prompt.clone(),
            image: WireImage::encode(&r.image)?,
        })
    }
}

impl WireProposeRequest {
    /// The wire form of a request.
    pub fn encode(r: &ProposeRequest) -> Result<Self, PngError> {
        Ok(WireProposeRequest {
            prompt: r.prompt.clone(),
            image: WireImage::encode(&r.image)?,
            report: r.report.clone(),
            seed: r.seed,
        })
    }
}

impl WireEditRequest {
    /// The wire form of a request.
    pub fn encode(r: &EditRequest) -> Result<Self, PngError> {
        Ok(WireEditRequest {
            image: WireImage::encode(&r.image)?,
            edit_prompt: r.edit_prompt.clone(),
            seed: r.seed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_round_trip_and_sizes_are_checked() {
        let mut image = Image::filled(5, 3, [255, 255, 255]);
        image.put(4, 2, [220, 40, 40]);
        let wire = WireImage::encode(&image).unwrap();
        assert_eq!((wire.width, wire.height), (5, 3));
        assert_eq!(wire.decode().unwrap(), image);

        let lying = WireImage {
            width: 6,
            ..wire.clone()
        };
        assert_eq!(
            lying.decode().unwrap_err().to_string(),
            "declares 6x3, but its PNG is 5x3"
        );
        let not_base64 = WireImage {
            png_base64: "###".into(),
            ..wire.clone()
        };
        assert!(matches!(
            not_base64.decode(),
            Err(WireImageError::Base64(_))
        ));
        let not_png = WireImage {
            png_base64: STANDARD.encode(b"GIF89a"),
            ..wire
        };
        assert!(matches!(not_png.decode(), Err(WireImageError::Png(_))));
    }

    #[test]
    fn request_lines_have_the_documented_shape() {
        let prompt = rlrig_contract::sg::read_jsonl(
            r#"{"items":[{"item_id":0,"label":"circle","attributes":["red"]}]}"#,
            "t",
        )
        .unwrap()
        .remove(0);
        let req = CheckRequest {
            prompt,
            image: Image::filled(2, 2, [0, 0, 0]),
        };
        let line = Request {
            id: 7,
            role: Role::Checker,
            batch: vec![WireCheckRequest::encode(&req).unwrap()],
        };
        let v = serde_json::to_value(&line).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["role"], "checker");
        assert_eq!(v["batch"][0]["prompt"]["items"][0]["label"], "circle");
        let image = &v["batch"][0]["image"];
        assert_eq!(
            (image["width"].as_u64(), image["height"].as_u64()),
            (Some(2), Some(2))
        );
        assert!(
            image["png_base64"]
                .as_str()
                .unwrap()
                .starts_with("iVBORw0KGgo")
        );
    }
}
