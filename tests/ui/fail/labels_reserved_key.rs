#[threadprof::profiled(labels(region = "eu", tag = "a", r#thread_id = "7"))]
async fn f() {}

fn main() {}
