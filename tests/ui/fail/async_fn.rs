#[threadprof::profiled_thread(tag = "x")]
async fn later() {}

fn main() {}
