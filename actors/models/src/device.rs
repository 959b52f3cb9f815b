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

/// Makes the C allocator keep freed tensor buffers instead of giving them back to the kernel.
///
/// Call once, first thing in a program that trains or samples on the CPU (`rlrig` and the
/// benchmarks do). burn's `flex` backend allocates and frees buffers of a few hundred KiB to
/// a few MiB for every op. glibc's defaults serve most of them with `mmap`, unmap them on
/// free and trim the heap's top, so each step faults the same memory in again as fresh,
/// zeroed pages: measured here, a batch-512 Diffuser step spent two thirds of its CPU time in
/// the kernel (200,000 page faults a second) and took 20–23 s; with these settings 7.7 s
/// (docs/BENCHMARKS.md). Allocations up to 32 MiB come from the heap, and up to 2 GiB of
/// freed heap stays mapped. Does nothing where the C library is not glibc, when
/// `RLRIG_MALLOC=default` (glibc's defaults, for comparison), or when the environment already
/// sets glibc's malloc options (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`,
/// `MALLOC_TOP_PAD_`, `GLIBC_TUNABLES`), which then win. Returns whether it changed anything.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const ENV: [&str; 4] = [
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
            "MALLOC_TOP_PAD_",
            "GLIBC_TUNABLES",
        ];
        if std::env::var("RLRIG_MALLOC").is_ok_and(|v| v == "default")
            || ENV.iter().any(|v| std::env::var_os(v).is_some())
        {
            return false;
        }
        // SAFETY: `mallopt` only sets allocator parameters; glibc serialises it with its
        // own lock, and these values are within the documented ranges (the mmap threshold's
        // maximum is 32 MiB on 64-bit systems).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
                && libc::mallopt(libc::M_TOP_PAD, 256 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// What a program's allocator settings are, for a benchmark's header: `tuned` is what
/// [`keep_freed_memory`] returned.
pub fn malloc_settings(tuned: bool) -> &'static str {
    if tuned {
        "freed memory kept (device::keep_freed_memory)"
    } else {
        "unchanged by rlrig (glibc defaults, or MALLOC_* from the environment)"
    }
}

/// Runs `init` right after seeding `device`'s random generator with `seed`, holding a
/// process-wide lock for both: burn's generator is one per device and process, so two seeded
/// initialisations at once in one process (the test harness's threads, a host running several
/// jobs) would otherwise draw from each other's streams. Draws made outside this function (a
/// model built only to receive loaded weights) are not serialised by it.
pub fn seeded<T>(device: &Device, seed: u64, init: impl FnOnce() -> T) -> T {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    device.seed(seed);
    init()
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

    /// glibc accepts every value `keep_freed_memory` sets (`mallopt` returns 1 for each; one it
    /// refuses fails this). Whether they speed anything up is the benchmarks' question.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_malloc_settings() {
        let overridden = std::env::var_os("RLRIG_MALLOC").is_some()
            || std::env::vars_os()
                .any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_") || k == "GLIBC_TUNABLES");
        if !overridden {
            assert!(keep_freed_memory());
            assert!(malloc_settings(true).contains("kept"));
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
