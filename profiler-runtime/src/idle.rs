//! `IdleCredit`: a thread's wall-clock account, and the periods of a blocked thread counted
//! without signalling it.
//!
//! Wall periods are counted process-wide off `CLOCK_MONOTONIC` ([`ticks_now`]). Each registered
//! thread's credit word records the tick up to which that thread's wall periods are accounted
//! (`until`); whoever moves `until` forward owns the periods it passes over, so every period
//! of every thread is counted exactly once:
//! - the signal handler, at each run, takes the periods owed since `until` (its own sample
//!   stands for them) and moves `until` to the current tick;
//! - the ticker *credits* a thread that has not run since a wall sample found it blocked in a
//!   system call (it is still blocked there, on the same stack): it moves `until` forward and
//!   adds the periods to the word's count, without waking the thread. Waking a blocked thread
//!   to sample it costs far more than the sample (the kernel wakes it, builds a signal frame,
//!   restarts its system call);
//! - the dump thread takes the credited count and repeats the thread's last wall stack for it.
//!
//! So a blocked thread need not be looked at every period: its periods simply wait in the gap
//! between `until` and the current tick, and the ticker looks at such *parked* threads a
//! bounded number per tick (sampler.rs), crediting all the periods since the last look at once
//! (and all of them before profiles are read). The split below is only as exact as that: a
//! thread that woke, ran less than a CPU-timer period and blocked elsewhere between two looks
//! has the periods up to the second look credited to its first stack.
//! If the thread woke in between, the next handler run finds the credit open and splits the
//! owed periods: the ones its CPU time since the credit was opened covers are the current
//! sample's (it ran), the rest were spent blocked and repeat the old stack. The handler also
//! sets the thread's bit in [`WOKEN`], so the ticker moves it back to the threads it looks at
//! every tick.
//!
//! Steps for one blocked thread:
//! 1. The signal handler, after a wall sample that found its thread blocked, *opens* the credit
//!    and notes the thread's CPU time (`mark`).
//! 2. The ticker reads the thread's CPU clock from outside. If it has not advanced since the
//!    mark (beyond the few µs the thread spends returning from the handler and re-entering the
//!    call, at the first two looks; not at all since the previous look, after), it credits the
//!    periods up to now.
//! 3. Any handler run *closes* the credit first and writes what it held (plus the owed periods
//!    spent blocked) as a repeat record ahead of its own; the dump thread takes what an idle
//!    thread still holds at each drain.
//!
//! Closing bumps an epoch, and crediting, taking and closing are compare-and-swaps on the
//! whole word, so a period is never credited across a handler run, nor counted twice. Word
//! layout: `open:1 | epoch:15 | count:16 | until:32` (`until` and the tick counter wrap; they
//! are only ever subtracted).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

const UNTIL_BITS: u32 = 32;
const COUNT_SHIFT: u32 = UNTIL_BITS;
const COUNT_BITS: u32 = 16;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_SHIFT: u32 = COUNT_SHIFT + COUNT_BITS;
const EPOCH_MASK: u64 = (1 << 15) - 1;
const OPEN: u64 = 1 << 63;

/// Periods a credit can hold before the dump thread takes them.
pub(crate) const CREDIT_CAPACITY: u64 = COUNT_MASK;

/// Start (ns on `CLOCK_MONOTONIC`) and length of the wall periods: ticks are read off the
/// clock, so a handler always knows the current one, however late the ticker wakes. Set when a
/// wall ticker is made (`period` 0: none yet).
static TICK_BASE_NS: AtomicU64 = AtomicU64::new(0);
static TICK_PERIOD_NS: AtomicU64 = AtomicU64::new(0);

/// Words of [`WOKEN`]: one bit per ticker member, for up to 65,536 members (8 KiB). Members
/// past that are never parked.
pub(crate) const WOKEN_WORDS: usize = 1024;

/// Bit `i` is set by the handler of ticker member `i` when it closed an open credit (the
/// thread ran since it was parked); the ticker clears it and looks at the thread every tick
/// again.
pub(crate) static WOKEN: [AtomicU64; WOKEN_WORDS] = [const { AtomicU64::new(0) }; WOKEN_WORDS];

/// No ticker member index (not a member, or past [`WOKEN`]'s capacity).
pub(crate) const NO_MEMBER: u32 = u32::MAX;

/// `clock` read in ns, `None` if it cannot be read (async-signal-safe: `clock_gettime` is on
/// POSIX's list). The one clock reader of the handler, the ticks and the ticker.
#[cfg(unix)]
pub(crate) fn clock_now_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec we own.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(
        (ts.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(ts.tv_nsec as u64),
    )
}

/// `CLOCK_MONOTONIC` in ns (async-signal-safe).
pub(crate) fn monotonic_ns() -> u64 {
    #[cfg(unix)]
    {
        clock_now_ns(libc::CLOCK_MONOTONIC).unwrap_or(0)
    }
    #[cfg(not(unix))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }
}

/// Ticker (at its creation): periods of `period_ns` from now on; returns their start (ns on
/// `CLOCK_MONOTONIC`).
pub(crate) fn start_ticks(period_ns: u64) -> u64 {
    let base = monotonic_ns();
    TICK_BASE_NS.store(base, Ordering::Relaxed);
    TICK_PERIOD_NS.store(period_ns.max(1), Ordering::Release);
    base
}

/// The current tick: wall periods since the ticker started (wrapping; only differences of
/// readings are used). 0 before any ticker.
pub(crate) fn ticks_now() -> u32 {
    tick_of(monotonic_ns())
}

/// The tick that `CLOCK_MONOTONIC` reading `ns` falls in (0 before any ticker).
pub(crate) fn tick_of(ns: u64) -> u32 {
    let period = TICK_PERIOD_NS.load(Ordering::Acquire);
    if period == 0 {
        return 0;
    }
    (ns.saturating_sub(TICK_BASE_NS.load(Ordering::Relaxed)) / period) as u32
}

/// Periods from tick `until` to tick `now` (0 if `until` is ahead, which a reader racing the
/// counter can see).
pub(crate) fn behind(until: u32, now: u32) -> u64 {
    let d = now.wrapping_sub(until);
    if d > u32::MAX / 2 {
        0
    } else {
        u64::from(d)
    }
}

/// One reading of the credit word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Credit(u64);

impl Credit {
    /// Whether periods may be credited (the last handler run found the thread blocked).
    pub(crate) fn is_open(self) -> bool {
        self.0 & OPEN != 0
    }

    /// Handler runs since the slot was set up (wrapping; only compared for equality).
    pub(crate) fn epoch(self) -> u64 {
        (self.0 >> EPOCH_SHIFT) & EPOCH_MASK
    }

    /// Periods credited and not yet taken.
    pub(crate) fn count(self) -> u64 {
        (self.0 >> COUNT_SHIFT) & COUNT_MASK
    }

    /// The tick up to which the thread's periods are accounted.
    pub(crate) fn until(self) -> u32 {
        self.0 as u32
    }
}

/// What a handler run found when it closed the credit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Closed {
    /// The credit was open: the thread had been blocked since the previous handler run.
    pub open: bool,
    /// Periods credited and not taken (they repeat the previous record).
    pub credited: u64,
    /// Periods since `until`, not accounted by anyone yet.
    pub owed: u64,
}

/// The wall account of one registered thread (lives in its `ThreadSlot`).
pub(crate) struct IdleCredit {
    word: AtomicU64,
    /// The thread's CPU time (ns) when its handler opened the credit.
    mark_ns: AtomicU64,
    /// The thread's index in the ticker's member table ([`NO_MEMBER`] if none).
    member: AtomicU32,
    /// Handler runs on the thread (wrapping): the ticker signals a thread again only after a
    /// run since its last signal, whatever that run found to do.
    runs: AtomicU32,
    /// Whether the thread joined the wall ticker: only then are wall periods owed to it (a
    /// thread that could not join gets no wall samples, rather than one that stands for its
    /// whole life). Stays set after it leaves, for its last account.
    joined: AtomicBool,
}

impl IdleCredit {
    /// A closed credit whose periods are accounted up to tick `now`.
    pub(crate) fn new(now: u32) -> IdleCredit {
        IdleCredit {
            word: AtomicU64::new(u64::from(now)),
            mark_ns: AtomicU64::new(0),
            member: AtomicU32::new(NO_MEMBER),
            runs: AtomicU32::new(0),
            joined: AtomicBool::new(false),
        }
    }

    /// Reads the word (acquire: a reader that sees it open also sees the mark).
    pub(crate) fn load(&self) -> Credit {
        Credit(self.word.load(Ordering::Acquire))
    }

    /// The thread's CPU time when the credit was opened; meaningful once `load` saw it open.
    pub(crate) fn mark_ns(&self) -> u64 {
        self.mark_ns.load(Ordering::Relaxed)
    }

    /// Handler: counts a run (relaxed: the ticker only compares readings). A load and a store,
    /// not a read-modify-write: only this thread's handler writes the count, and it does not
    /// interrupt itself.
    pub(crate) fn note_run(&self) {
        let runs = self.runs.load(Ordering::Relaxed);
        self.runs.store(runs.wrapping_add(1), Ordering::Relaxed);
    }

    /// Handler runs so far (see [`Self::note_run`]).
    pub(crate) fn runs(&self) -> u32 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Ticker: the thread joined (see `joined`).
    pub(crate) fn set_joined(&self) {
        self.joined.store(true, Ordering::Release);
    }

    /// Whether the thread joined the ticker (its wall periods are owed to it).
    pub(crate) fn joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    /// Ticker: records the thread's index in its member table.
    pub(crate) fn set_member(&self, index: u32) {
        self.member.store(index, Ordering::Relaxed);
    }

    /// Handler: tells the ticker that this parked thread ran (one `fetch_or` on a static
    /// word), so that it looks at the thread every tick again from the next one.
    pub(crate) fn note_woken(&self) {
        let index = self.member.load(Ordering::Relaxed) as usize;
        if let Some(word) = WOKEN.get(index / 64) {
            word.fetch_or(1 << (index % 64), Ordering::Release);
        }
    }

    /// Handler: closes the credit, starts a new epoch and moves `until` to the current tick;
    /// returns what the word held, which the caller must record. A compare-and-swap loop:
    /// lock-free, and it only retries when the ticker or the dump thread changed the word in
    /// between, which they do at most once each per tick or drain.
    /// `now` is the current tick; a stale one only leaves periods owed for the next account
    /// (`until` never moves back).
    pub(crate) fn close(&self, now: u32) -> Closed {
        let mut old = self.load();
        loop {
            let owed = behind(old.until(), now);
            let until = if owed > 0 { now } else { old.until() };
            let epoch = (old.epoch() + 1) & EPOCH_MASK;
            match self.word.compare_exchange_weak(
                old.0,
                epoch << EPOCH_SHIFT | u64::from(until),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Closed {
                        open: old.is_open(),
                        credited: old.count(),
                        owed,
                    }
                }
                Err(current) => old = Credit(current),
            }
        }
    }

    /// Handler: opens the credit (after [`Self::close`] in the same run), noting the thread's
    /// CPU time now.
    pub(crate) fn open(&self, cpu_ns: u64) {
        self.mark_ns.store(cpu_ns, Ordering::Relaxed);
        // Closed words are only changed by the handler (crediting needs it open, taking needs
        // a count), so this cannot race with another writer.
        self.word.fetch_or(OPEN, Ordering::Release);
    }

    /// Ticker: credits the periods up to tick `now` if the word is still open in the epoch of
    /// `seen` (no handler ran since); returns the credited count now (periods not taken yet;
    /// unchanged if none were owed), or `None` if it changed, is closed or is full, and then
    /// the ticker signals the thread.
    pub(crate) fn credit(&self, seen: Credit, now: u32) -> Option<u64> {
        let mut old = seen;
        loop {
            if !old.is_open() || old.epoch() != seen.epoch() {
                return None;
            }
            let periods = behind(old.until(), now);
            if periods == 0 {
                return Some(old.count());
            }
            let count = old.count() + periods;
            if count > COUNT_MASK {
                return None;
            }
            let new = (old.0 & (OPEN | EPOCH_MASK << EPOCH_SHIFT))
                | count << COUNT_SHIFT
                | u64::from(now);
            match self
                .word
                .compare_exchange(old.0, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(count),
                Err(current) => old = Credit(current),
            }
        }
    }

    /// Dump thread: takes the credited periods if the word is still in the state `seen`, read
    /// before the drain: open, and in the same epoch (no handler ran since). Then every record
    /// of the thread up to now has been drained, and the periods repeat the last one. A reading
    /// taken while a handler was between [`Self::close`] and [`Self::open`] is closed, and takes
    /// nothing: the record that handler is writing may not have been drained, and the periods
    /// credited after it reopens belong to that record.
    pub(crate) fn take(&self, seen: Credit) -> u64 {
        if !seen.is_open() {
            return 0;
        }
        let mut old = self.load();
        while old.is_open() && old.epoch() == seen.epoch() && old.count() > 0 {
            match self.word.compare_exchange_weak(
                old.0,
                old.0 & !(COUNT_MASK << COUNT_SHIFT),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return old.count(),
                Err(now) => old = Credit(now),
            }
        }
        0
    }

    /// Resets a credit for a slot's next thread (exclusive access), accounted up to `now`.
    pub(crate) fn reset(&mut self, now: u32) {
        *self.word.get_mut() = u64::from(now);
        *self.mark_ns.get_mut() = 0;
        *self.member.get_mut() = NO_MEMBER;
        *self.joined.get_mut() = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_need_an_open_unchanged_word_and_are_taken_once() {
        let c = IdleCredit::new(10);
        assert_eq!(c.credit(c.load(), 11), None, "closed at start");
        let closed = c.close(12);
        assert_eq!(
            closed,
            Closed {
                open: false,
                credited: 0,
                owed: 2
            }
        );
        c.open(500);
        let seen = c.load();
        assert!(seen.is_open() && seen.count() == 0 && seen.until() == 12);
        assert_eq!(c.mark_ns(), 500);
        assert_eq!(c.credit(seen, 13), Some(1));
        assert_eq!(c.credit(seen, 13), Some(1), "nothing owed twice");
        assert_eq!(c.credit(c.load(), 15), Some(3));
        let other_epoch = Credit(seen.0.wrapping_add(1 << EPOCH_SHIFT));
        assert_eq!(c.credit(other_epoch, 16), None, "other epoch refused");
        assert_eq!(c.take(other_epoch), 0, "other epoch: nothing taken");
        assert_eq!(c.take(seen), 3);
        assert_eq!(c.take(seen), 0, "taken once");
        assert_eq!(c.credit(c.load(), 19), Some(4), "still open after a take");
        // Two more periods pass unaccounted; the handler gets both what was credited and them.
        assert_eq!(
            c.close(21),
            Closed {
                open: true,
                credited: 4,
                owed: 2
            }
        );
        assert!(!c.load().is_open());
        assert_eq!(c.load().until(), 21);
        assert_eq!(c.take(seen), 0);
        assert_eq!(c.load().epoch(), seen.epoch() + 1);
        assert_eq!(c.close(20), Closed::default(), "a stale tick owes nothing");
        assert_eq!(c.load().until(), 21, "until never moves back");
    }

    #[test]
    fn ticks_wrap_and_a_full_count_refuses_credit() {
        let c = IdleCredit::new(u32::MAX - 1);
        c.close(u32::MAX - 1);
        c.open(0);
        assert_eq!(c.credit(c.load(), 3), Some(5), "across the wrap");
        assert_eq!(behind(5, 3), 0, "ahead reads as nothing owed");
        assert_eq!(
            c.credit(c.load(), 3 + COUNT_MASK as u32),
            None,
            "count would overflow"
        );
        assert_eq!(
            c.close(10),
            Closed {
                open: true,
                credited: 5,
                owed: 7
            }
        );
    }

    /// The interleaving of issue 14 item 5, step by step: the dump thread reads the word while
    /// a handler is between closing and reopening it, the handler then writes its record and
    /// reopens, the ticker credits, and the dump thread (whose drain did not see that record)
    /// tries to take. Before the fix the take matched the epoch and moved the periods onto the
    /// previous wall stack.
    #[test]
    fn a_reading_between_close_and_open_takes_nothing() {
        let c = IdleCredit::new(0);
        c.close(0);
        c.open(0);
        assert_eq!(
            c.credit(c.load(), 2),
            Some(2),
            "blocked: two periods credited"
        );
        // Handler run: close returns what was credited (recorded as a repeat of the old stack).
        assert_eq!(c.close(2).credited, 2);
        // Dump thread reads the word now, then drains the ring (without the record below).
        let seen_by_dump = c.load();
        // Handler commits its new record, finds the thread blocked again and reopens.
        c.open(10);
        // Ticker: the thread stays blocked on the new stack.
        assert_eq!(c.credit(c.load(), 5), Some(3));
        // Dump thread: these three periods belong to the record it has not drained yet.
        assert_eq!(c.take(seen_by_dump), 0);
        // The next drain reads the open word after the record and takes them.
        assert_eq!(c.take(c.load()), 3);
    }

    /// A ticker crediting, a dump thread taking and a handler closing and reopening, all at
    /// once, with ticks advancing: every period up to the last tick is counted exactly once.
    #[test]
    fn concurrent_credit_take_and_close_count_each_period_once() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let c = Arc::new(IdleCredit::new(0));
        c.close(0);
        c.open(0);
        let ticks = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (c, stop, ticks) = (c.clone(), stop.clone(), ticks.clone());
            std::thread::spawn(move || {
                let mut credited = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let now = ticks.fetch_add(1, Ordering::AcqRel) + 1;
                    let seen = c.load();
                    let before = if seen.is_open() { seen.until() } else { now };
                    if c.credit(seen, now).is_some() {
                        credited += behind(before, now);
                    }
                }
                credited
            })
        };
        let taker = {
            let (c, stop) = (c.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut taken = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    taken += c.take(c.load());
                }
                taken
            })
        };
        let (mut handled, mut credited_seen) = (0u64, 0u64);
        let mut rounds = 0u64;
        while rounds < 20_000 || ticks.load(Ordering::Relaxed) < 20_000 {
            let closed = c.close(ticks.load(Ordering::Acquire));
            handled += closed.owed;
            credited_seen += closed.credited;
            c.open(0);
            // Blocked for a varying while: the ticker credits some periods, the handler
            // finds others owed.
            for _ in 0..rounds % 512 {
                std::hint::spin_loop();
            }
            rounds += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let (credited, taken) = (ticker.join().unwrap(), taker.join().unwrap());
        let last = c.close(ticks.load(Ordering::Acquire));
        handled += last.owed;
        credited_seen += last.credited;
        assert!(
            credited > 0 && handled > 0,
            "credited {credited} handled {handled}"
        );
        assert_eq!(credited, credited_seen + taken, "credits leave once");
        assert_eq!(
            credited + handled,
            u64::from(ticks.load(Ordering::Acquire)),
            "every period accounted once"
        );
    }
}
