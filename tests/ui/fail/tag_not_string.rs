const TAG: &str = "x";

#[profiler::profiled_thread(tag = TAG)]
fn f() {}

fn main() {}
