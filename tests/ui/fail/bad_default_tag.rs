#[threadprof::profiled_thread]
fn _private_loop() {}

fn main() {}
