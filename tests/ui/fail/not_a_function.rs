#[profiler::profiled_thread(tag = "x")]
struct NotAFunction;

fn main() {}
