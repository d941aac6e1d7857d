#[threadprof::profiled_thread(tag = "x", crate = "not a path")]
fn f() {}

fn main() {}
