trait Service {
    #[threadprof::profiled(tag = "x")]
    async fn call(&self);
}

fn main() {}
