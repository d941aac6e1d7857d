const TAG: &str = "x";

#[threadprof::profiled(tag = TAG)]
async fn f() {}

fn main() {}
