const REGION: &str = "eu";

#[threadprof::profiled(labels(region = REGION, shard = 3))]
async fn f() {}

fn main() {}
