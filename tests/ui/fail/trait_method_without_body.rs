trait Service {
    #[threadprof::profiled_thread(tag = "x")]
    fn run(&self);
}

fn main() {}
