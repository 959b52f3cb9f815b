//! Generated inputs for the PNG reader: thousands of damaged PNGs, each decoded or refused
//! with an error, never a panic; and PNGs that declare huge images are refused before their
//! pixels are allocated.

use proptest::prelude::*;
use rlrig_contract::Image;
use rlrig_fuzz::{largest_allocation, mutated};

#[global_allocator]
static METER: rlrig_fuzz::Meter = rlrig_fuzz::Meter;

/// The decoder's budget for pixels plus the RGB copy and the decoder's own buffers.
const MAX_ALLOCATION: usize = 2 * Image::MAX_PNG_DECODED_BYTES as usize;

fn gradient(width: u32, height: u32) -> Image {
    let mut img = Image::filled(width, height, [0, 0, 0]);
    for (i, p) in img.pixels_mut().chunks_mut(3).enumerate() {
        let (x, y) = (i as u32 % width, i as u32 / width);
        p.copy_from_slice(&[(x * 7) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8]);
    }
    img
}

fn seeds() -> Vec<Vec<u8>> {
    vec![
        gradient(16, 16).to_png().unwrap(),
        gradient(3, 40).to_png().unwrap(),
        Image::filled(64, 64, [200, 10, 10]).to_png().unwrap(),
    ]
}

/// CRC-32 (ISO-HDLC), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid PNG whose header then declares `width` × `height` (its CRC fixed up).
fn declaring(width: u32, height: u32) -> Vec<u8> {
    let mut png = gradient(4, 4).to_png().unwrap();
    // Signature (8 bytes), then IHDR: length (4), type (4), width (4), height (4), ...
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

proptest! {
    #![proptest_config(rlrig_fuzz::config(2000))]

    #[test]
    fn damaged_pngs_decode_or_are_refused(png in mutated(seeds(), &["IHDR", "IDAT", "IEND"])) {
        let (decoded, largest) = largest_allocation(|| Image::from_png(&png));
        if let Ok(img) = decoded {
            prop_assert_eq!(img.pixels().len(), img.width() as usize * img.height() as usize * 3);
        }
        prop_assert!(largest <= MAX_ALLOCATION, "allocated {largest} bytes at once");
    }
}

#[test]
fn pngs_declaring_huge_images_are_refused_without_allocating_them() {
    // The header fix-up is right: the same PNG declaring its true size decodes.
    assert_eq!(Image::from_png(&declaring(4, 4)).unwrap(), gradient(4, 4));
    for (w, h) in [
        (100_000, 100_000),
        (8192, 8192),
        (Image::MAX_PNG_SIDE + 1, 4096),
        (1, 1 << 30),
    ] {
        let (decoded, largest) = largest_allocation(|| Image::from_png(&declaring(w, h)));
        assert!(decoded.is_err(), "{w}x{h} was accepted");
        assert!(
            largest < 1 << 20,
            "{w}x{h}: allocated {largest} bytes at once"
        );
    }
}
