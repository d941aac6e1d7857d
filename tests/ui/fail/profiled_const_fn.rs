#[threadprof::profiled(tag = "x")]
const fn compile_time() -> u32 {
    1
}

fn main() {}
