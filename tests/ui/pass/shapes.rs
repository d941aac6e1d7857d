//! Function shapes the attribute must leave working: generics, where-clauses, `self`,
//! `impl Trait` returns, `?`, early `return`, labelled breaks, attributes, default tags.
use threadprof::profiled_thread;

#[profiled_thread]
fn default_tag() -> u32 {
    7
}

#[profiled_thread(tag = "generic", crate = "::threadprof")]
pub(crate) fn generic<T, U>(items: &[T], f: impl Fn(&T) -> U) -> Vec<U>
where
    T: Clone,
{
    items.iter().map(f).collect()
}

#[profiled_thread(tag = "early")]
fn early(x: i32) -> Result<i32, std::num::ParseIntError> {
    let parsed: i32 = "41".parse()?;
    if x < 0 {
        return Ok(-1);
    }
    let found = 'outer: loop {
        for i in 0.. {
            if i == 3 {
                break 'outer i;
            }
        }
    };
    Ok(parsed + x + found - 3)
}

#[profiled_thread(tag = "iter")]
fn evens(limit: u32) -> impl Iterator<Item = u32> {
    (0..limit).filter(|n| n % 2 == 0)
}

struct Monitor {
    rounds: u32,
}

impl Monitor {
    #[profiled_thread(tag = "ip_manager")]
    #[allow(clippy::needless_pass_by_value)]
    fn run(&mut self, extra: u32) -> u32 {
        self.rounds += extra;
        self.rounds
    }

    #[profiled_thread(tag = "ctor")]
    fn new() -> Self {
        Monitor { rounds: 0 }
    }
}

#[profiled_thread(tag = "unsafe.fn-1")]
unsafe fn raw(p: *const u8) -> u8 {
    // SAFETY: the caller passes a valid pointer.
    unsafe { *p }
}

fn main() {
    assert_eq!(default_tag(), 7);
    assert_eq!(generic(&[1, 2], |x| x * 2), vec![2, 4]);
    assert_eq!(early(1), Ok(42));
    assert_eq!(early(-5), Ok(-1));
    assert_eq!(evens(5).collect::<Vec<_>>(), vec![0, 2, 4]);
    let mut m = Monitor::new();
    assert_eq!(m.run(3), 3);
    let b = 9u8;
    // SAFETY: &b is valid.
    assert_eq!(unsafe { raw(&b) }, 9);
    let __threadprof_thread_guard = 1; // the generated guard's name does not clash
    assert_eq!(__threadprof_thread_guard, 1);
}
