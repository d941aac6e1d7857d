const TAG: &str = "x";

#[threadprof::profiled_thread(tag = TAG)]
fn f() {}

fn main() {}
