#[threadprof::profiled_thread(tag = "../etc/passwd")]
fn f() {}

fn main() {}
