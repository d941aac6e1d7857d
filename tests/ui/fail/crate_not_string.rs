#[threadprof::profiled(crate = threadprof)]
fn f() {}

fn main() {}
