#[threadprof::profiled_thread(tag = "x", interval = "5")]
fn f() {}

fn main() {}
