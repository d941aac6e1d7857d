struct Monitor;

#[threadprof::profiled(tag = "x")]
impl Monitor {
    fn run(&self) {}
}

fn main() {}
