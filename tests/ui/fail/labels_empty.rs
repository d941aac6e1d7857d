#[threadprof::profiled(tag = "x", labels())]
async fn f() {}

fn main() {}
