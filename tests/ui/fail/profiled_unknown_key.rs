#[threadprof::profiled(tag = "x", label(region = "eu"))]
async fn f() {}

fn main() {}
