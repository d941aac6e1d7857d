#[threadprof::profiled_thread(tag = "x", tag = "y")]
fn f() {}

fn main() {}
