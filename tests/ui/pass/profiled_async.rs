//! `async fn` shapes `#[profiled]` must leave working: methods on `&self`, `&mut self` and
//! `self`, generics, `?` with error conversion, early `return`, `impl Trait` and `dyn` outputs
//! (the declared type still guides coercions inside the moved body), trait impls, labels and a
//! renamed crate.
use std::fmt::Display;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use threadprof as prof;
use threadprof::profiled;

/// Polls to completion on this thread (the futures below only yield, they never wait).
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// Pending once, so the profiled future is polled more than once.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|_| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            Poll::Pending
        }
    })
    .await
}

#[profiled]
async fn default_tag() {
    yield_now().await;
}

#[profiled(tag = "parse", labels(region = "eu", r#type = "int", tier = ""))]
async fn parse_plus(text: &str, x: i32) -> Result<i32, Box<dyn std::error::Error>> {
    yield_now().await;
    let parsed: i32 = text.parse()?;
    if x < 0 {
        return Ok(-1);
    }
    Ok(parsed + x)
}

#[profiled(tag = "generic", crate = "prof")]
pub(crate) async fn generic<T, U>(items: &[T], f: impl Fn(&T) -> U) -> Vec<U>
where
    T: Clone,
{
    yield_now().await;
    items.iter().map(f).collect()
}

#[profiled(tag = "evens")]
async fn evens<'a>(values: &'a [u32]) -> impl Iterator<Item = &'a u32> + 'a {
    values.iter().filter(|n| *n % 2 == 0)
}

#[profiled(tag = "pair")]
async fn pair(flag: bool) -> (impl Display, Option<impl Display>) {
    (1, flag.then_some("two"))
}

// Two return sites of different concrete types: needs the declared type inside the block.
#[profiled(tag = "shown")]
async fn shown(number: bool) -> Box<dyn Display> {
    if number {
        return Box::new(5);
    }
    Box::new("five")
}

// A closure typed by the declared output.
#[profiled(tag = "adder")]
async fn adder(n: u32) -> Result<Box<dyn Fn(u32) -> u32 + Send>, std::num::ParseIntError> {
    let m: u32 = "1".parse()?;
    Ok(Box::new(move |x| x + n + m))
}

#[profiled(tag = "none")]
async fn first_doubled(values: Vec<u32>) -> Option<u32> {
    let first = values.first()?;
    Some(first * 2)
}

#[profiled(tag = "pattern")]
async fn sum((a, b): (u32, u32), _unused: String) -> u32 {
    #![allow(clippy::let_and_return)]
    let __threadprof_output = a + b; // the generated names do not clash
    __threadprof_output
}

#[profiled(tag = "forever")]
#[allow(dead_code)]
async fn forever() -> ! {
    loop {
        yield_now().await;
    }
}

#[profiled(tag = "raw")]
async unsafe fn read(p: *const u8) -> u8 {
    yield_now().await;
    // SAFETY: the caller passes a valid pointer.
    unsafe { *p }
}

#[derive(Clone)]
struct Monitor {
    rounds: u32,
}

impl Monitor {
    #[profiled(tag = "ctor")]
    async fn new() -> Self {
        Monitor { rounds: 0 }
    }

    #[profiled(tag = "read", labels(kind = "shared"))]
    async fn rounds(&self) -> u32 {
        yield_now().await;
        self.rounds
    }

    #[profiled(tag = "write")]
    async fn add(&mut self, extra: u32) -> &mut Self {
        yield_now().await;
        self.rounds += extra;
        self
    }

    #[profiled(tag = "consume")]
    async fn into_total(mut self) -> u32 {
        self.rounds += 1;
        self.rounds
    }
}

trait Service {
    async fn call(&self, n: u32) -> u32;
}

impl Service for Monitor {
    #[profiled(tag = "service")]
    async fn call(&self, n: u32) -> u32 {
        yield_now().await;
        self.rounds * n
    }
}

fn assert_send<F: Future + Send>(fut: F) -> F {
    fut
}

fn main() {
    block_on(default_tag());
    assert_eq!(block_on(parse_plus("41", 1)).unwrap(), 42);
    assert_eq!(block_on(parse_plus("41", -5)).unwrap(), -1);
    assert!(block_on(parse_plus("x", 1)).is_err());
    assert_eq!(block_on(generic(&[1, 2], |x| x * 2)), vec![2, 4]);
    assert_eq!(block_on(evens(&[1, 2, 4])).count(), 2);
    let (one, two) = block_on(pair(true));
    assert_eq!(format!("{one} {}", two.unwrap()), "1 two");
    assert_eq!(block_on(shown(true)).to_string(), "5");
    assert_eq!(block_on(shown(false)).to_string(), "five");
    assert_eq!(block_on(adder(1)).unwrap()(1), 3);
    assert_eq!(block_on(first_doubled(vec![4])), Some(8));
    assert_eq!(block_on(first_doubled(vec![])), None);
    assert_eq!(block_on(sum((1, 2), String::new())), 3);
    let b = 9u8;
    // SAFETY: &b is valid.
    assert_eq!(block_on(unsafe { read(&b) }), 9);

    let mut m = block_on(Monitor::new());
    block_on(m.add(3)).rounds += 1;
    assert_eq!(block_on(assert_send(m.rounds())), 4);
    assert_eq!(block_on(m.call(2)), 8);
    assert_eq!(block_on(m.clone().into_total()), 5);
}
