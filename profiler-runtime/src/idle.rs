//! `IdleCredit`: wall periods of a blocked thread, counted without signalling it.
//!
//! Waking a blocked thread to sample it costs far more than the sample (the kernel wakes it,
//! builds a signal frame, restarts its system call): 12–22 µs a period on a 2-core VM, 0.12–0.22%
//! of a core per idle thread at 99 Hz. But a thread that has not run since a wall sample found
//! it blocked in a system call is still blocked there, on the same stack. So:
//!
//! 1. The signal handler, after a wall sample that found its thread blocked, *opens* the credit
//!    and notes the thread's CPU time (`mark`).
//! 2. The wall ticker (sampler.rs), at each tick, reads the thread's CPU clock from outside. If
//!    it has not advanced since the mark (beyond the few µs the thread spends returning from the
//!    handler and re-entering the call, on the first tick only), it adds the period to the
//!    credit instead of signalling.
//! 3. Credited periods repeat the stack of the thread's last record, labelled waiting. Any
//!    handler run *closes* the credit first and writes what it held as a repeat record ahead of
//!    its own; the dump thread takes what an idle thread still holds at each drain.
//!
//! Closing bumps an epoch, and crediting and taking are compare-and-swaps on the whole word, so
//! a period is never credited across a handler run, nor counted twice. Word layout:
//! `open:1 | epoch:39 | count:24`.

use std::sync::atomic::{AtomicU64, Ordering};

const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_MASK: u64 = (1 << 39) - 1;
const OPEN: u64 = 1 << 63;

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
        (self.0 >> COUNT_BITS) & EPOCH_MASK
    }

    /// Periods credited and not yet taken.
    pub(crate) fn count(self) -> u64 {
        self.0 & COUNT_MASK
    }
}

/// The credit of one registered thread (lives in its `ThreadSlot`).
#[derive(Default)]
pub(crate) struct IdleCredit {
    word: AtomicU64,
    /// The thread's CPU time (ns) when its handler opened the credit.
    mark_ns: AtomicU64,
}

impl IdleCredit {
    /// Reads the word (acquire: a reader that sees it open also sees the mark).
    pub(crate) fn load(&self) -> Credit {
        Credit(self.word.load(Ordering::Acquire))
    }

    /// The thread's CPU time when the credit was opened; meaningful once `load` saw it open.
    pub(crate) fn mark_ns(&self) -> u64 {
        self.mark_ns.load(Ordering::Relaxed)
    }

    /// Handler: closes the credit and starts a new epoch; returns the periods it held, which the
    /// caller must record. A compare-and-swap loop: lock-free, and it only retries when the
    /// ticker or the dump thread changed the word in between, which they do at most once each
    /// per tick or drain.
    pub(crate) fn close(&self) -> u64 {
        let mut old = self.word.load(Ordering::Relaxed);
        loop {
            let epoch = ((old >> COUNT_BITS) + 1) & EPOCH_MASK;
            match self.word.compare_exchange_weak(
                old,
                epoch << COUNT_BITS,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return old & COUNT_MASK,
                Err(now) => old = now,
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

    /// Ticker: adds `periods` if the word is still `seen` (no handler ran, nothing taken);
    /// false if it changed or is closed or full, and then the ticker signals the thread.
    pub(crate) fn credit(&self, seen: Credit, periods: u64) -> bool {
        if !seen.is_open() || seen.count() + periods > COUNT_MASK {
            return false;
        }
        self.word
            .compare_exchange(
                seen.0,
                seen.0 + periods,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
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
                old.0 & !COUNT_MASK,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return old.count(),
                Err(now) => old = Credit(now),
            }
        }
        0
    }

    /// Resets a credit for a slot's next thread (exclusive access).
    pub(crate) fn reset(&mut self) {
        *self.word.get_mut() = 0;
        *self.mark_ns.get_mut() = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_need_an_open_unchanged_word_and_are_taken_once() {
        let c = IdleCredit::default();
        assert!(!c.credit(c.load(), 1), "closed at start");
        assert_eq!(c.close(), 0);
        c.open(500);
        let seen = c.load();
        assert!(seen.is_open() && seen.count() == 0);
        assert_eq!(c.mark_ns(), 500);
        assert!(c.credit(seen, 1));
        assert!(!c.credit(seen, 1), "stale reading refused");
        assert!(c.credit(c.load(), 2));
        let other_epoch = Credit(seen.0.wrapping_add(1 << COUNT_BITS));
        assert_eq!(c.take(other_epoch), 0, "other epoch: nothing taken");
        assert_eq!(c.take(seen), 3);
        assert_eq!(c.take(seen), 0, "taken once");
        assert!(c.credit(c.load(), 4), "still open after a take");
        assert_eq!(c.close(), 4, "the handler gets what was left");
        assert!(!c.load().is_open());
        assert_eq!(c.take(seen), 0);
        assert_eq!(c.load().epoch(), seen.epoch() + 1);
    }

    /// The interleaving of issue 14 item 5, step by step: the dump thread reads the word while
    /// a handler is between closing and reopening it, the handler then writes its record and
    /// reopens, the ticker credits, and the dump thread (whose drain did not see that record)
    /// tries to take. Before the fix the take matched the epoch and moved the periods onto the
    /// previous wall stack.
    #[test]
    fn a_reading_between_close_and_open_takes_nothing() {
        let c = IdleCredit::default();
        c.close();
        c.open(0);
        assert!(c.credit(c.load(), 2), "blocked: two periods credited");
        // Handler run: close returns what was credited (recorded as a repeat of the old stack).
        assert_eq!(c.close(), 2);
        // Dump thread reads the word now, then drains the ring (without the record below).
        let seen_by_dump = c.load();
        // Handler commits its new record, finds the thread blocked again and reopens.
        c.open(10);
        // Ticker: the thread stays blocked on the new stack.
        assert!(c.credit(c.load(), 3));
        // Dump thread: these three periods belong to the record it has not drained yet.
        assert_eq!(c.take(seen_by_dump), 0);
        // The next drain reads the open word after the record and takes them.
        assert_eq!(c.take(c.load()), 3);
    }

    #[test]
    fn concurrent_credit_take_and_close_count_each_period_once() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let c = Arc::new(IdleCredit::default());
        c.close();
        c.open(0);
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let ticker = {
            let (c, stop, progress) = (c.clone(), stop.clone(), progress.clone());
            std::thread::spawn(move || {
                let mut credited = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if c.credit(c.load(), 1) {
                        credited += 1;
                        progress.store(credited, Ordering::Relaxed);
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
        let mut closed = 0u64;
        // Run until the other threads have had a fair share of turns (they may start late).
        let mut rounds = 0u64;
        while rounds < 20_000 || progress.load(Ordering::Relaxed) < 10_000 {
            closed += c.close();
            c.open(0);
            std::hint::spin_loop();
            rounds += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let (credited, taken) = (ticker.join().unwrap(), taker.join().unwrap());
        closed += c.close();
        assert!(credited > 0);
        assert_eq!(credited, closed + taken);
    }
}
