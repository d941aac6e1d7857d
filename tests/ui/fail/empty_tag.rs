#[threadprof::profiled_thread(tag = "")]
fn f() {}

fn main() {}
