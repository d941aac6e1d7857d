//! Sets `threadprof_sampling` where the sampler is implemented: 64-bit Linux on x86_64 and
//! aarch64. Elsewhere the crate compiles and says once, at run time, that sampling is
//! unsupported.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(threadprof_sampling)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let enabled = std::env::var_os("CARGO_FEATURE_ENABLED").is_some();
    // Lets CI compile the path other platforms take, on Linux.
    println!("cargo::rerun-if-env-changed=THREADPROF_NO_SAMPLING");
    let forced_off = std::env::var_os("THREADPROF_NO_SAMPLING").is_some();
    if enabled && !forced_off && os == "linux" && (arch == "x86_64" || arch == "aarch64") {
        println!("cargo::rustc-cfg=threadprof_sampling");
    }
}
