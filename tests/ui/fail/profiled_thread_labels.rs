#[threadprof::profiled_thread(tag = "x", labels(region = "eu"))]
fn f() {}

fn main() {}
