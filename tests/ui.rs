//! Compile-time behaviour of `#[profiled_thread]` and `#[profiled]`: every error they emit, and
//! the function shapes they must accept unchanged.
#![cfg(feature = "enabled")]

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
