//! Compile-time behaviour of `#[profiled_thread]`: every error it emits, and the function
//! shapes it must accept unchanged.
#![cfg(feature = "enabled")]

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
