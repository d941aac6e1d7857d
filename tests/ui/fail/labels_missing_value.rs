#[threadprof::profiled(labels(region, tier = "gold"))]
async fn f() {}

fn main() {}
