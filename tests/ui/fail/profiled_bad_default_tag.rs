#[threadprof::profiled]
async fn _load_user() {}

fn main() {}
