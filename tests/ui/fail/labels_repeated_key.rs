// `r#type` and `type` are the same key.
#[threadprof::profiled(labels(r#type = "a", region = "eu", type = "b"))]
async fn f() {}

fn main() {}
