#[threadprof::profiled(labels("region" = "eu"))]
async fn f() {}

fn main() {}
