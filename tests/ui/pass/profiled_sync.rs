//! Plain-fn shapes `#[profiled]` must leave working: a scope guard at the top of the body and
//! nothing else changed.
use threadprof::profiled;

#[profiled]
fn default_tag() -> u32 {
    7
}

#[profiled(tag = "early", labels(region = "eu", r#type = "parse"))]
fn early(x: i32) -> Result<i32, std::num::ParseIntError> {
    let parsed: i32 = "41".parse()?;
    if x < 0 {
        return Ok(-1);
    }
    Ok(parsed + x)
}

#[profiled(tag = "generic", crate = "::threadprof")]
fn generic<T, U>(items: &[T], f: impl Fn(&T) -> U) -> Vec<U>
where
    T: Clone,
{
    items.iter().map(f).collect()
}

#[profiled(tag = "iter")]
fn evens(limit: u32) -> impl Iterator<Item = u32> {
    (0..limit).filter(|n| n % 2 == 0)
}

struct Monitor {
    rounds: u32,
}

impl Monitor {
    #[profiled(tag = "run", labels(kind = "exclusive"))]
    fn run(&mut self, extra: u32) -> u32 {
        self.rounds += extra;
        self.rounds
    }

    #[profiled]
    fn r#new() -> Self {
        Monitor { rounds: 0 }
    }
}

fn main() {
    assert_eq!(default_tag(), 7);
    assert_eq!(early(1), Ok(42));
    assert_eq!(early(-5), Ok(-1));
    assert_eq!(generic(&[1, 2], |x| x * 2), vec![2, 4]);
    assert_eq!(evens(5).collect::<Vec<_>>(), vec![0, 2, 4]);
    let mut m = Monitor::r#new();
    assert_eq!(m.run(3), 3);
    let __threadprof_scope = 1; // the generated guard's name does not clash
    assert_eq!(__threadprof_scope, 1);
}
