//! The `#[profiled_thread]` attribute of the [`threadprof`](https://docs.rs/threadprof) crate.
//!
//! Use it through `threadprof::profiled_thread`; see that crate for documentation. The work is
//! split by job: `attr.rs` parses the arguments, `valid.rs` checks them against the function,
//! `expand.rs` writes the guard. With the `enabled` feature off the input is returned untouched
//! and none of that (nor syn) is compiled.

use proc_macro::TokenStream;

#[cfg(feature = "enabled")]
mod attr;
#[cfg(feature = "enabled")]
mod expand;
#[cfg(feature = "enabled")]
mod valid;

/// Registers the current thread under a tag while the annotated function runs.
///
/// `#[profiled_thread(tag = "ip_manager")]`, `#[profiled_thread]` (the function's name is the
/// tag), and `#[profiled_thread(tag = "x", crate = "my_profiler")]` for a renamed dependency.
#[proc_macro_attribute]
pub fn profiled_thread(args: TokenStream, item: TokenStream) -> TokenStream {
    #[cfg(feature = "enabled")]
    {
        expand::profiled_thread(args.into(), item.into()).into()
    }
    #[cfg(not(feature = "enabled"))]
    {
        let _ = args;
        item
    }
}
