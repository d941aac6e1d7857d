//! The `#[profiled_thread]` and `#[profiled]` attributes of the
//! [`threadprof`](https://docs.rs/threadprof) crate.
//!
//! Use them through `threadprof::profiled_thread` and `threadprof::profiled`; see that crate
//! for documentation. `#[profiled_thread]` registers the thread running a function;
//! `#[profiled]` profiles a function under a tag and labels, as a task on an `async fn` (the
//! body moves into an `async move` block wrapped by the `task` of a per-function
//! `threadprof::__private::CallSite`) and as a scope on a plain fn (a guard from that call
//! site's `scope` at the top of the body).
//!
//! The work is split by job: `attr.rs` parses the arguments, `valid.rs` checks them against the
//! function, `expand.rs` writes the guard or the task. Every error points at the token at fault
//! and is emitted beside the untouched function. With the `enabled` feature off the input is
//! returned untouched and none of that (nor syn) is compiled.

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

/// Profiles the function under a tag and labels: a task on an `async fn`, a scope on a plain fn.
///
/// `#[profiled(tag = "load_user", labels(region = "eu"))]`, `#[profiled]` (the function's name
/// is the tag), and `crate = "my_profiler"` for a renamed dependency. On an `async fn` the
/// body runs inside `CallSite::task` (a `static` per function, `threadprof::__private`), which
/// enters the tag and labels on every poll, whichever thread polls; on a plain fn a guard from
/// `CallSite::scope` is held until the function returns or panics.
#[proc_macro_attribute]
pub fn profiled(args: TokenStream, item: TokenStream) -> TokenStream {
    #[cfg(feature = "enabled")]
    {
        expand::profiled(args.into(), item.into()).into()
    }
    #[cfg(not(feature = "enabled"))]
    {
        let _ = args;
        item
    }
}
