#[threadprof::profiled_thread(tag = "x")]
struct NotAFunction;

fn main() {}
