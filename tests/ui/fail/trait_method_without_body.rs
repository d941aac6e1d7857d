trait Service {
    #[profiler::profiled_thread(tag = "x")]
    fn run(&self);
}

fn main() {}
