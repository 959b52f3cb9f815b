//! The device a flow names (`device = "cpu"`, `"wgpu"`, `"wgpu:N"`) as a burn [`Device`].
//!
//! `cpu` is burn's `flex` backend and is always available. `wgpu` (the adapter wgpu prefers,
//! overridable by `CUBECL_WGPU_DEFAULT_DEVICE`) and `wgpu:N` (the N-th discrete GPU) need the
//! `wgpu` cargo feature; `cuda:N` (the N-th CUDA GPU) needs the `cuda` feature (burn-cuda, whose
//! build downloads an LLVM bundle, so it cannot be built on a machine without internet).
//! Naming a device this build lacks is an error that says which feature to enable.

use burn::tensor::Device;

/// A device name that this build cannot provide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device {name:?}: {why}")]
pub struct DeviceError {
    /// The name as the flow gave it.
    pub name: String,
    /// What is wrong with it.
    pub why: String,
}

/// Whether `name` is a device name at all (`cpu`, `wgpu`, `wgpu:N`, `cuda:N`), whatever this
/// build supports.
pub fn is_device_name(name: &str) -> bool {
    name == "cpu"
        || name == "wgpu"
        || ["cuda:", "wgpu:"].iter().any(|p| {
            name.strip_prefix(p)
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
}

/// The burn device for a flow's device name (not yet prepared for autodiff).
pub fn select(name: &str) -> Result<Device, DeviceError> {
    let err = |why: &str| DeviceError {
        name: name.to_string(),
        why: why.to_string(),
    };
    if !is_device_name(name) {
        return Err(err("expected `cpu`, `wgpu`, `wgpu:N` or `cuda:N`"));
    }
    if name == "cpu" {
        return Ok(Device::flex());
    }
    if name.starts_with("wgpu") {
        #[cfg(feature = "wgpu")]
        {
            use burn::tensor::DeviceKind;
            let kind = match name.strip_prefix("wgpu:") {
                Some(n) => DeviceKind::DiscreteGpu(n.parse().map_err(|_| err("bad index"))?),
                None => DeviceKind::DefaultDevice,
            };
            return Ok(Device::wgpu(kind));
        }
        #[cfg(not(feature = "wgpu"))]
        return Err(err(
            "this build has no GPU backend: rebuild with `cargo build --release --features wgpu`",
        ));
    }
    #[cfg(feature = "cuda")]
    {
        let n: usize = name["cuda:".len()..]
            .parse()
            .map_err(|_| err("bad index"))?;
        Ok(Device::cuda(n))
    }
    #[cfg(not(feature = "cuda"))]
    Err(err(
        "this build has no CUDA backend: rebuild with `--features cuda` (burn-cuda downloads an LLVM bundle at build time), or use `wgpu:N`",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["cpu", "wgpu", "wgpu:0", "cuda:12"] {
            assert!(is_device_name(ok), "{ok}");
        }
        for bad in ["", "gpu", "cuda", "cuda:", "wgpu:x", "cpu:0", "CPU"] {
            assert!(!is_device_name(bad), "{bad}");
        }
    }

    #[test]
    fn cpu_is_flex_and_unknown_names_fail() {
        assert!(select("cpu").is_ok());
        let e = select("tpu:0").unwrap_err();
        assert!(e.to_string().contains("expected `cpu`"), "{e}");
        #[cfg(not(feature = "cuda"))]
        {
            let e = select("cuda:0").unwrap_err();
            assert!(e.to_string().contains("--features cuda"), "{e}");
        }
        #[cfg(not(feature = "wgpu"))]
        assert!(
            select("wgpu:0")
                .unwrap_err()
                .to_string()
                .contains("--features wgpu")
        );
    }
}
