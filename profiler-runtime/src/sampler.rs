//! Timers and the signal disposition: who gets sampled, and how often.
//!
//! Two timer kinds, one signal (SIGPROF) and one handler:
//! - **CPU:** each registered thread gets its own POSIX timer on its CPU-time clock
//!   (`CLOCK_THREAD_CPUTIME_ID`), created by that thread, delivering to it alone
//!   (`SIGEV_THREAD_ID`, `sigev_value` = `TIMER_CPU`). It only advances while the thread runs.
//! - **Wall** (when on): one `WallTicker` thread wakes at the start of each wall period
//!   (periods are read off `CLOCK_MONOTONIC`, idle.rs). A thread's periods are owed to it
//!   until someone accounts them: its signal handler (any run takes the periods owed since the
//!   last), or the ticker, which *credits* a thread that has stayed blocked where its last
//!   wall sample found it (`IdleCredit`, without waking it). The ticker looks every tick at
//!   the threads that are running or that it has just signalled: one it finds owed something
//!   gets its one-shot wall timer fired (a POSIX timer on `CLOCK_MONOTONIC`,
//!   `SIGEV_THREAD_ID`, value `TIMER_WALL`, created unarmed at registration, armed 1 ns
//!   ahead), once per handler run; one found blocked is *parked*. Parked threads are looked at
//!   round robin, [`VISITS_PER_SECOND`] in all, each look crediting every period since the
//!   last (those that wait and work in turn, on a small warm list, every tick); a parked
//!   thread that runs is sampled by its CPU timer, whose handler flags it back to the
//!   every-tick list. So idle threads cost a bounded number of looks per second, not one
//!   per thread per period. A timer's signal, not a `tgkill`:
//!   the kernel deletes timers and drops their pending signals at `execve`, while a `tgkill`
//!   that lands during one stays pending across it, and the new program, whose SIGPROF action
//!   is the default, dies of it.
//!   Per-thread kernel timers on `CLOCK_MONOTONIC` did this job before; they woke every blocked
//!   thread every period, which cost 0.12–0.63% of a core per idle thread at 99 Hz on a 2-core
//!   VM (README, Performance).
//!
//! Threads that are not registered have no timer, are not in the ticker's list, and receive
//! nothing.

/// Why sampling cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    /// Another SIGPROF handler is installed (another profiler, e.g. pprof-rs, started first).
    #[error(
        "another SIGPROF handler is installed (another profiler such as pprof-rs is running); \
         refusing to replace it because that would break both profilers"
    )]
    InUse,
    /// `sigaction` failed.
    #[error("sigaction(SIGPROF) failed: {0}")]
    Os(String),
    /// This platform has no sampler.
    #[error("sampling is only supported on Linux (x86_64, aarch64); threads are registered but not sampled")]
    Unsupported,
}

#[cfg(threadprof_sampling)]
mod imp {
    use super::SignalError;
    pub(crate) use crate::altstack::AltStackSwap;
    use crate::altstack::{self, Kept};
    use crate::handler::{on_sigprof, TIMER_CPU, TIMER_WALL};
    use crate::slot::ThreadSlot;
    use std::io;
    use std::mem::MaybeUninit;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Condvar, Mutex, MutexGuard};
    use std::time::Duration;

    /// `getauxval` key of the vDSO's address (Linux ABI; not in the `libc` crate for every
    /// target).
    const AT_SYSINFO_EHDR: libc::c_ulong = 33;
    /// `getauxval` key of 16 random bytes on the initial stack.
    const AT_RANDOM: libc::c_ulong = 25;
    /// `getauxval` key of the program's path, on the initial stack.
    const AT_EXECFN: libc::c_ulong = 31;

    /// CPU time a thread may use after its handler opened its idle credit, and still count as
    /// not having run: returning from the handler and re-entering its system call
    /// (`sigreturn`, the restart, libc's `EINTR` loop): 2 µs median, 8 µs at most over 110
    /// blocked threads here (release build). Allowed from the handler's mark at the first two
    /// looks, not only the first: on a busy machine the thread may not have been scheduled to
    /// finish that return when the ticker first looked, and then every later look would see
    /// the clock move and wake it again.
    const BLOCKED_SLACK_NS: u64 = 50_000;

    fn current_action() -> Result<libc::sigaction, SignalError> {
        let mut old = MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: a null new action only queries; `old` is valid for writes.
        if unsafe { libc::sigaction(libc::SIGPROF, std::ptr::null(), old.as_mut_ptr()) } != 0 {
            return Err(SignalError::Os(io::Error::last_os_error().to_string()));
        }
        // SAFETY: sigaction succeeded and filled `old`.
        Ok(unsafe { old.assume_init() })
    }

    fn ours() -> libc::sighandler_t {
        on_sigprof as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize
    }

    /// Installs the handler, unless a foreign SIGPROF handler is already there.
    pub fn install() -> Result<(), SignalError> {
        let old = current_action()?;
        if old.sa_sigaction == ours() {
            return Ok(());
        }
        if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
            return Err(SignalError::InUse);
        }
        // SAFETY: all-zero is a valid sigaction (empty mask, no flags) that we fill below.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = ours();
        // SA_RESTART: interrupted blocking calls resume instead of failing with EINTR.
        // SA_ONSTACK: run on the registered thread's alternate stack (altstack.rs), not on the
        // interrupted stack, which may be nearly full.
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
        // Every asynchronous signal is blocked while the handler runs (the kernel restores the
        // mask at sigreturn). Above all the host's: when the handler has moved from the host's
        // alternate stack onto its own, a host signal with SA_ONSTACK would be delivered at the
        // top of the host's stack, over this handler's signal frame. No host handler can run
        // inside ours (nor jump out of it) either. Synchronous ones stay open: a fault in the
        // handler is fatal either way, but then the host's crash reporter (and std's stack
        // overflow message) still runs, and a trapping seccomp filter still reaches the host's
        // SIGSYS handler.
        // SAFETY: sa_mask is owned; sigfillset initialises it, sigdelset edits it.
        unsafe {
            libc::sigfillset(&mut act.sa_mask);
            for sync in [
                libc::SIGSEGV,
                libc::SIGBUS,
                libc::SIGILL,
                libc::SIGFPE,
                libc::SIGTRAP,
                libc::SIGSYS,
            ] {
                libc::sigdelset(&mut act.sa_mask, sync);
            }
        }
        // SAFETY: `act` is fully initialised and `on_sigprof` has the SA_SIGINFO signature.
        if unsafe { libc::sigaction(libc::SIGPROF, &act, std::ptr::null_mut()) } != 0 {
            return Err(SignalError::Os(io::Error::last_os_error().to_string()));
        }
        // The vDSO and the initial stack (where AT_RANDOM and AT_EXECFN point) sit near the top
        // of user space; with `ulimit -s unlimited` (the legacy layout) a PIE executable may
        // sit higher than the vDSO, but not higher than the initial stack.
        // SAFETY: getauxval has no preconditions; 0 means "not provided".
        let highest = [AT_SYSINFO_EHDR, AT_RANDOM, AT_EXECFN]
            .iter()
            .map(|&key| unsafe { libc::getauxval(key) } as u64)
            .fold(stack_bounds().1, u64::max);
        crate::unwind::note_highest_user_address(highest);
        #[cfg(target_arch = "x86_64")]
        if let Ok(now) = current_action() {
            if let Some(restorer) = now.sa_restorer {
                crate::unwind::note_sigreturn(restorer as usize as u64);
            }
        }
        Ok(())
    }

    /// Whether our handler is still the SIGPROF handler.
    pub fn still_installed() -> bool {
        current_action().is_ok_and(|a| a.sa_sigaction == ours())
    }

    /// A POSIX timer id; timer ids are process-wide handles, usable from any thread.
    pub struct Timer(libc::timer_t);
    // SAFETY: a timer_t is an opaque process-wide id, not tied to the creating thread.
    unsafe impl Send for Timer {}

    impl Timer {
        /// A periodic timer at `hz` on `clock` for the calling thread, first expiring at a point
        /// in the first period taken from `phase`.
        fn create(clock: libc::clockid_t, kind: usize, hz: u32, phase: u64) -> io::Result<Timer> {
            let timer = Timer::unarmed(clock, kind)?;
            let period = 1_000_000_000 / u64::from(hz.max(1));
            // First expiry somewhere in (0, period]: a fixed one would make every thread's
            // count of periods err the same way (by half a period on average).
            let first = 1 + phase % period;
            let ts = |ns: u64| libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            };
            let spec = libc::itimerspec {
                it_interval: ts(period),
                it_value: ts(first),
            };
            // SAFETY: `timer.0` is the timer just created; `spec` is valid.
            if unsafe { libc::timer_settime(timer.0, 0, &spec, std::ptr::null_mut()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(timer)
        }

        /// A timer on `clock` for the calling thread, not armed.
        fn unarmed(clock: libc::clockid_t, kind: usize) -> io::Result<Timer> {
            // SAFETY: all-zero is a valid sigevent, completed below.
            let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = libc::SIGPROF;
            sev.sigev_value = libc::sigval {
                sival_ptr: kind as *mut libc::c_void,
            };
            // SAFETY: gettid has no preconditions.
            sev.sigev_notify_thread_id = unsafe { libc::gettid() };
            let mut id: libc::timer_t = std::ptr::null_mut();
            // SAFETY: `sev` and `id` are valid; the thread id is the calling thread's.
            if unsafe { libc::timer_create(clock, &mut sev, &mut id) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Timer(id))
        }

        /// Arms the timer to expire once, now (1 ns ahead): its thread gets one SIGPROF.
        fn fire_once(&self) {
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 1,
                },
            };
            // SAFETY: the id is live (deleted only when this value drops); `spec` is valid.
            unsafe { libc::timer_settime(self.0, 0, &spec, std::ptr::null_mut()) };
        }
    }

    impl Drop for Timer {
        fn drop(&mut self) {
            if crate::registry::in_forked_child() {
                return; // a forked child has no such timer: the id may name one of its own
            }
            // SAFETY: the id came from timer_create in this process and is deleted exactly
            // once, here.
            unsafe { libc::timer_delete(self.0) };
        }
    }

    /// The timers of one thread; dropping them stops its sampling.
    pub struct ThreadTimers {
        _cpu: Timer,
        _wall: Option<WallMembership>,
    }

    impl ThreadTimers {
        /// Creates the calling thread's CPU timer and, given a ticker, joins it with `slot`.
        pub fn start(
            cpu_hz: u32,
            wall: Option<&WallTicker>,
            slot: &Arc<ThreadSlot>,
        ) -> io::Result<ThreadTimers> {
            let phase = (thread_id() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16;
            let cpu = Timer::create(libc::CLOCK_THREAD_CPUTIME_ID, TIMER_CPU, cpu_hz, phase)?;
            // Without the wall clock the thread still gets its CPU profile.
            let wall = wall.and_then(|ticker| match ticker.join(slot) {
                Ok(member) => Some(member),
                Err(e) => {
                    crate::diagnostics::warn(
                        "wall-ticker",
                        &format!("wall-clock sampling unavailable for this thread: {e}"),
                    );
                    None
                }
            });
            Ok(ThreadTimers {
                _cpu: cpu,
                _wall: wall,
            })
        }
    }

    /// Makes sure the wall periods owed to `slot` are recorded before the caller reads the
    /// slot's counters: if some are (the ticker's signal is in flight, or its timer was deleted
    /// with it pending, or periods went by since the last sample), the calling thread, which
    /// owns `slot`, signals itself; a signal a thread sends itself is handled before `tgkill`
    /// returns. Call after leaving the ticker.
    pub fn settle_wall(slot: &ThreadSlot) {
        if slot.wall_period_ns == 0 || !slot.idle.joined() {
            return;
        }
        let now = crate::idle::ticks_now();
        let credit = slot.idle.load();
        if credit.count() == 0 && crate::idle::behind(credit.until(), now) == 0 {
            return;
        }
        if sigprof_blocked() {
            // A signal would stay pending (and kill a program this thread execs next): record
            // the periods here instead, as a repeat of the thread's last wall stack. The
            // handler cannot run on this thread while SIGPROF is blocked, so this thread is the
            // ring's only writer now.
            let closed = slot.idle.close(now);
            let periods = closed.credited + closed.owed;
            if periods > 0 {
                match slot.buffer.begin() {
                    Some(record) => record.commit_repeat(slot.context(), periods),
                    None => slot.buffer.count_dropped(periods),
                }
            }
            return;
        }
        // Never send a signal another component's handler did not ask for.
        if still_installed() {
            // SAFETY: getpid/gettid have no preconditions; tgkill targets the calling thread,
            // and SIGPROF's handler is ours (checked just above).
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    libc::gettid(),
                    libc::SIGPROF,
                );
            }
        }
    }

    /// Whether SIGPROF is blocked on the calling thread.
    fn sigprof_blocked() -> bool {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: a null new set only queries the mask into `set`, which we then read.
        unsafe {
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), set.as_mut_ptr()) == 0
                && libc::sigismember(set.as_ptr(), libc::SIGPROF) == 1
        }
    }

    extern "C" {
        // In glibc and musl alike; the `libc` crate does not declare it for Linux.
        fn pthread_getcpuclockid(
            thread: libc::pthread_t,
            clock: *mut libc::clockid_t,
        ) -> libc::c_int;
    }

    /// Threads the ticker looks at, per second, among those parked long (cold: blocked where
    /// their last wall sample found them, and credited without being signalled): about 0.3% of
    /// a core at the 1–2 µs a look costs on a 2-core VM (a CPU-clock read: the kernel looks the
    /// thread up; the credit; cache misses on its slot). A cold thread is looked at every
    /// `cold / (VISITS_PER_SECOND / hz)` ticks and credited every period since; one that wakes
    /// and runs is back on the every-tick list as soon as a sample lands on it (its handler
    /// flags it in `idle::WOKEN`). Threads parked again after waking (warm) are looked at every
    /// tick for a second, at most `VISITS_PER_SECOND / hz` of them; while every thread is cold
    /// the ticker wakes every 100 ms and makes the looks in batches.
    pub(crate) const VISITS_PER_SECOND: u64 = 2_000;

    /// Credited periods from which a thread's ring is flagged for the next drain: half of what
    /// a credit holds (profiles about to be read take every thread's credits anyway).
    const TAKE_AT: u64 = crate::idle::CREDIT_CAPACITY / 2;

    /// One registered thread as the ticker sees it (identified by its slot).
    struct Member {
        slot: Arc<ThreadSlot>,
        /// The thread's one-shot wall timer; deleted when the member leaves the table.
        timer: Timer,
        /// The thread's CPU-time clock, readable from any thread of the process.
        clock: libc::clockid_t,
        /// The thread's count of handler runs when the ticker last signalled it: until it
        /// changes, the signal is still on its way.
        fired_at: Option<u32>,
        /// The open credit's epoch the looks below belong to, how many credited it, and the
        /// thread's CPU time at the last.
        seen_epoch: Option<u64>,
        looks: u8,
        seen_cpu_ns: u64,
        /// The list the thread is on, and where; when it went warm.
        list: List,
        pos: usize,
        warm_since: u32,
        /// Whether it has come back from parked at least once.
        woke_before: bool,
        /// Whether the handler can flag it as woken (its index fits `idle::WOKEN`).
        can_park: bool,
    }

    impl Member {
        /// Accounts this thread's wall periods up to tick `now`: credited if it has stayed
        /// blocked where its last wall sample found it (returns true: it may be parked), else
        /// signalled, once per handler run, if any are owed.
        fn visit(&mut self, now: u32) -> bool {
            let slot = &*self.slot;
            let seen = slot.idle.load();
            if seen.is_open() {
                if self.seen_epoch != Some(seen.epoch()) {
                    (self.seen_epoch, self.looks) = (Some(seen.epoch()), 0);
                }
                let cpu = crate::idle::clock_now_ns(self.clock);
                // The first two looks after the handler parked the thread allow it the CPU of
                // its way back into the call (it may not have been scheduled to finish that at
                // the first); later ones, none.
                let blocked = cpu.is_some_and(|cpu| {
                    if self.looks < 2 {
                        cpu.saturating_sub(slot.idle.mark_ns()) <= BLOCKED_SLACK_NS
                    } else {
                        cpu == self.seen_cpu_ns
                    }
                });
                if blocked {
                    if let Some(count) = slot.idle.credit(seen, now) {
                        // A look counts once a tick has passed since the last (a thread
                        // moved between lists can be looked at twice in one tick).
                        if crate::idle::behind(seen.until(), now) > 0 {
                            self.seen_cpu_ns = cpu.unwrap_or(0);
                            self.looks = self.looks.saturating_add(1);
                        }
                        if count >= TAKE_AT {
                            // The dump thread takes credits when it drains this ring (and from
                            // every thread before it writes a profile).
                            slot.buffer.mark_pending();
                        }
                        return true;
                    }
                }
            }
            let owed = crate::idle::behind(seen.until(), now) > 0 || seen.count() > 0;
            let runs = slot.idle.runs();
            if owed && self.fired_at != Some(runs) {
                self.fired_at = Some(runs);
                // The timer is live: it is deleted with this member, which leaves the table
                // under the lock we hold, before its thread unregisters and exits.
                self.timer.fire_once();
            }
            false
        }
    }

    /// Which of the ticker's lists a member is on.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum List {
        /// Running, or signalled and not yet found blocked: looked at every tick.
        EveryTick,
        /// Parked within the last second after running: looked at every tick too, so that a
        /// thread that alternates short waits and work has its periods counted where they
        /// fall (a bounded number of them: `warm_cap`).
        Warm,
        /// Parked for longer: looked at round robin within the budget.
        Cold,
    }

    /// The ticker's members: a table indexed by member index (stable while the thread is a
    /// member; the handler flags woken threads by it), and three lists of indices (see
    /// [`List`]).
    #[derive(Default)]
    struct Members {
        table: Vec<Option<Member>>,
        free: Vec<u32>,
        every_tick: Vec<u32>,
        warm: Vec<u32>,
        cold: Vec<u32>,
        /// Next position in `cold` for the round robin.
        cursor: usize,
        started: bool,
        stopped: bool,
    }

    impl Members {
        fn member(&mut self, index: u32) -> Option<&mut Member> {
            self.table.get_mut(index as usize).and_then(Option::as_mut)
        }

        fn list(&mut self, list: List) -> &mut Vec<u32> {
            match list {
                List::EveryTick => &mut self.every_tick,
                List::Warm => &mut self.warm,
                List::Cold => &mut self.cold,
            }
        }

        fn push(&mut self, index: u32, to: List, now: u32) {
            let list = self.list(to);
            list.push(index);
            let pos = list.len() - 1;
            if let Some(m) = self.member(index) {
                // A parked thread that comes back has woken at least once: one that waits and
                // works in turn, which the warm list is for (not a thread parked since it
                // registered).
                m.woke_before |= to == List::EveryTick && m.list != List::EveryTick;
                (m.list, m.pos) = (to, pos);
                if to == List::Warm {
                    m.warm_since = now;
                }
            }
        }

        /// Takes the member at `pos` of a list out of it (the last one moves into its place).
        fn remove_at(&mut self, from: List, pos: usize) {
            let list = self.list(from);
            if pos >= list.len() {
                return;
            }
            list.swap_remove(pos);
            if let Some(&moved) = list.get(pos) {
                if let Some(m) = self.member(moved) {
                    m.pos = pos;
                }
            }
        }

        /// Moves the member at `pos` of `from` to `to`.
        fn shift(&mut self, from: List, pos: usize, to: List, now: u32) {
            if let Some(&index) = self.list(from).get(pos) {
                self.remove_at(from, pos);
                self.push(index, to, now);
            }
        }

        /// Looks at every member of `list` (every tick, warm, or, to settle, cold), moving
        /// those that ran to the every-tick list, and (from the every-tick list) those found
        /// blocked to the warm one, or the cold one when the warm one is full.
        fn look_at_all(&mut self, list: List, now: u32, warm_cap: usize) {
            let mut pos = 0;
            while let Some(&index) = self.list(list).get(pos) {
                let (blocked, can_park, woke_before) = match self.member(index) {
                    Some(m) => (m.visit(now), m.can_park, m.woke_before),
                    None => (false, false, false),
                };
                let to = match (list, blocked && can_park) {
                    (List::EveryTick, false) => None,
                    (List::EveryTick, true) if woke_before && self.warm.len() < warm_cap => {
                        Some(List::Warm)
                    }
                    (List::EveryTick, true) => Some(List::Cold),
                    (_, false) => Some(List::EveryTick),
                    (_, true) => None,
                };
                match to {
                    Some(to) => self.shift(list, pos, to, now),
                    None => pos += 1,
                }
            }
        }

        /// Credits every parked thread up to `now` (or signals it if it ran), so that profiles
        /// about to be read hold all their periods, not only those up to each one's last look.
        fn settle_parked(&mut self, now: u32) {
            self.look_at_all(List::Warm, now, 0);
            self.look_at_all(List::Cold, now, 0);
        }

        fn insert(&mut self, mut member: Member, now: u32) -> u32 {
            let index = match self.free.pop() {
                Some(i) => i,
                None => {
                    self.table.push(None);
                    (self.table.len() - 1) as u32
                }
            };
            member.can_park = (index as usize) < crate::idle::WOKEN_WORDS * 64;
            member.slot.idle.set_member(if member.can_park {
                index
            } else {
                crate::idle::NO_MEMBER
            });
            member.slot.idle.set_joined();
            self.table[index as usize] = Some(member);
            self.push(index, List::EveryTick, now);
            index
        }

        fn remove(&mut self, index: u32) {
            let Some(m) = self.member(index) else { return };
            let (list, pos) = (m.list, m.pos);
            m.slot.idle.set_member(crate::idle::NO_MEMBER);
            self.remove_at(list, pos);
            self.table[index as usize] = None;
            self.free.push(index);
        }

        fn clear(&mut self) {
            self.table.clear();
            self.free.clear();
            self.every_tick.clear();
            self.warm.clear();
            self.cold.clear();
        }

        fn is_empty(&self) -> bool {
            self.every_tick.is_empty() && self.warm.is_empty() && self.cold.is_empty()
        }

        /// Accounts tick `now`: threads flagged as woken go back to the every-tick list; every
        /// thread on it and on the warm list is looked at (warm ones parked for a second go
        /// cold); then up to `budget` cold threads, round robin.
        fn tick(&mut self, now: u32, budget: usize, warm_cap: usize, warm_ticks: u32) {
            let words = self.table.len().div_ceil(64).min(crate::idle::WOKEN_WORDS);
            for (w, word) in crate::idle::WOKEN[..words].iter().enumerate() {
                if word.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                let mut bits = word.swap(0, Ordering::Acquire);
                while bits != 0 {
                    let index = (w * 64) as u32 + bits.trailing_zeros();
                    bits &= bits - 1;
                    if let Some(&mut Member { list, pos, .. }) = self.member(index) {
                        if list != List::EveryTick {
                            self.shift(list, pos, List::EveryTick, now);
                        }
                    }
                }
            }
            self.look_at_all(List::EveryTick, now, warm_cap);
            let mut pos = 0;
            while let Some(&index) = self.warm.get(pos) {
                let since = self.member(index).map_or(now, |m| m.warm_since);
                if now.wrapping_sub(since) > warm_ticks {
                    self.shift(List::Warm, pos, List::Cold, now);
                } else {
                    pos += 1;
                }
            }
            self.look_at_all(List::Warm, now, warm_cap);
            for _ in 0..budget.min(self.cold.len()) {
                if self.cursor >= self.cold.len() {
                    self.cursor = 0;
                }
                let index = self.cold[self.cursor];
                let still = self.member(index).is_some_and(|m| m.visit(now));
                if still {
                    self.cursor += 1;
                } else {
                    self.shift(List::Cold, self.cursor, List::EveryTick, now);
                }
            }
        }
    }

    struct TickerShared {
        period_ns: u64,
        /// Start of tick 0 (ns on `CLOCK_MONOTONIC`).
        base_ns: u64,
        /// Cold threads looked at per tick.
        budget: usize,
        /// At most this many warm threads (looked at every tick), each for `warm_ticks`.
        warm_cap: usize,
        warm_ticks: u32,
        /// Periods between wake-ups while every member is cold (about 100 ms).
        lazy_periods: u64,
        members: Mutex<Members>,
        wake: Condvar,
    }

    impl TickerShared {
        fn lock(&self) -> MutexGuard<'_, Members> {
            self.members.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    /// The wall clock of every registered thread: one thread ticking at the wall frequency
    /// (started at the first registration, parked while no thread is registered).
    pub struct WallTicker {
        shared: Arc<TickerShared>,
    }

    impl WallTicker {
        /// A ticker at `hz` (> 0); its thread starts with the first member.
        pub fn new(hz: u32) -> WallTicker {
            let hz = u64::from(hz.max(1));
            let period_ns = 1_000_000_000 / hz;
            WallTicker {
                shared: Arc::new(TickerShared {
                    period_ns,
                    base_ns: crate::idle::start_ticks(period_ns),
                    budget: (VISITS_PER_SECOND / hz).max(1) as usize,
                    warm_cap: (VISITS_PER_SECOND / hz).max(1) as usize,
                    warm_ticks: hz as u32,
                    lazy_periods: (hz / 10).max(1),
                    members: Mutex::new(Members::default()),
                    wake: Condvar::new(),
                }),
            }
        }

        /// Adds the calling thread, which owns `slot`.
        fn join(&self, slot: &Arc<ThreadSlot>) -> io::Result<WallMembership> {
            let mut clock: libc::clockid_t = 0;
            // SAFETY: pthread_self is the calling thread; `clock` is valid for writes.
            let rc = unsafe { pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            let timer = Timer::unarmed(libc::CLOCK_MONOTONIC, TIMER_WALL)?;
            let mut m = self.shared.lock();
            if m.stopped {
                return Err(io::Error::other("sampling has stopped"));
            }
            if !m.started {
                let shared = self.shared.clone();
                std::thread::Builder::new()
                    .name("threadprof-wall".into())
                    .spawn(move || run(&shared))?;
                m.started = true;
            }
            let index = m.insert(
                Member {
                    slot: slot.clone(),
                    timer,
                    clock,
                    fired_at: None,
                    seen_epoch: None,
                    looks: 0,
                    seen_cpu_ns: 0,
                    list: List::EveryTick,
                    pos: 0,
                    warm_since: 0,
                    woke_before: false,
                    can_park: false,
                },
                crate::idle::ticks_now(),
            );
            self.shared.wake.notify_one();
            Ok(WallMembership {
                shared: self.shared.clone(),
                index,
            })
        }

        /// Brings every parked thread's credit up to now (before profiles are read).
        pub fn settle_parked(&self) {
            self.shared.lock().settle_parked(crate::idle::ticks_now());
        }

        /// Drops every member and ends the ticker thread (shutdown).
        pub fn stop(&self) {
            let mut m = self.shared.lock();
            m.stopped = true;
            m.clear();
            self.shared.wake.notify_one();
        }
    }

    /// A thread's place in the ticker's table; dropping it removes the thread (under the
    /// ticker's lock, so no tick is sent to it afterwards).
    struct WallMembership {
        shared: Arc<TickerShared>,
        index: u32,
    }

    impl Drop for WallMembership {
        fn drop(&mut self) {
            self.shared.lock().remove(self.index);
        }
    }

    /// The ticker thread: sleeps to the start of the next tick (read off the clock, so a late
    /// wake-up skips the ticks it missed), then accounts the current tick for its members:
    /// their periods since the last look are owed and counted by whoever looks next.
    fn run(shared: &TickerShared) {
        #[cfg(feature = "heap")]
        crate::heap::exclude_current_thread();
        let (base, period) = (shared.base_ns, shared.period_ns);
        let tick_at = |ns: u64| ns.saturating_sub(base) / period;
        let mut last: Option<u64> = None;
        let mut ahead = 1;
        let mut m = shared.lock();
        loop {
            while m.is_empty() && !m.stopped {
                m = shared.wake.wait(m).unwrap_or_else(|e| e.into_inner());
                (last, ahead) = (None, 1);
            }
            if m.stopped {
                return;
            }
            let now = crate::idle::monotonic_ns();
            let wake_at =
                base.saturating_add(tick_at(now).saturating_add(ahead).saturating_mul(period));
            let wait = Duration::from_nanos(wake_at.saturating_sub(now));
            m = match shared.wake.wait_timeout(m, wait) {
                Ok((m, _)) => m,
                Err(e) => e.into_inner().0,
            };
            if m.stopped {
                return;
            }
            let tick = tick_at(crate::idle::monotonic_ns());
            if last == Some(tick) {
                ahead = 1;
                continue; // woken early (a thread joined): the tick is not over
            }
            let periods = last.map_or(1, |l| tick.saturating_sub(l).max(1));
            last = Some(tick);
            m.tick(
                tick as u32,
                shared.budget.saturating_mul(periods as usize),
                shared.warm_cap,
                shared.warm_ticks,
            );
            // Every thread parked long: nothing to signal each period, and the looks can be
            // made in batches. A thread that wakes meanwhile is sampled by its CPU timer (whose
            // samples take its wall periods) and looked at every period from the next wake-up.
            ahead = if m.every_tick.is_empty() && m.warm.is_empty() {
                shared.lazy_periods
            } else {
                1
            };
        }
    }

    /// The calling thread's stack, `(lowest, highest)` address (highest exclusive), or `(0, 0)`
    /// if unknown.
    pub fn stack_bounds() -> (u64, u64) {
        let mut attr = MaybeUninit::<libc::pthread_attr_t>::uninit();
        // SAFETY: pthread_getattr_np initialises `attr` on success; we destroy it after use.
        unsafe {
            if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
                return (0, 0);
            }
            let (mut addr, mut size) = (std::ptr::null_mut(), 0usize);
            let ok = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) == 0;
            libc::pthread_attr_destroy(attr.as_mut_ptr());
            if ok {
                (addr as u64, addr as u64 + size as u64)
            } else {
                (0, 0)
            }
        }
    }

    /// Decides whether the calling thread's handler may copy memory with `process_vm_readv`
    /// (see `stackread::copies_allowed_here`); warns once per process when it may not.
    pub fn allow_copies(slot: &ThreadSlot) {
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let ok = crate::stackread::copies_allowed_here();
        slot.copies.store(ok, Ordering::Relaxed);
        if !ok && !WARNED.swap(true, Ordering::Relaxed) {
            crate::diagnostics::warn(
                "process_vm_readv",
                "process_vm_readv is not permitted on a registered thread (seccomp?); its \
                 stacks outside its own stack (fibers, stacker segments, signal handlers on an \
                 alternate stack) are cut short at their first frame, and its wall samples \
                 cannot tell waiting from running",
            );
        }
    }

    /// Makes the slot's signal stack the calling thread's alternate stack if it has none (see
    /// altstack.rs); `None` if the thread keeps its own or it failed (warned). Either way the
    /// handler does its work on the slot's stack.
    pub fn use_signal_stack(slot: &ThreadSlot) -> Option<AltStackSwap> {
        let stack = slot.signal_stack.as_ref()?;
        match altstack::install(stack) {
            Ok(Ok(swap)) => Some(swap),
            Ok(Err(Kept::HostStack)) => None,
            Ok(Err(Kept::OnAlternateStack)) => {
                crate::diagnostics::debug(format_args!(
                    "registered while on the alternate signal stack; keeping it"
                ));
                None
            }
            Err(e) => {
                crate::diagnostics::warn(
                    "sigaltstack",
                    &format!(
                        "cannot give a registered thread its signal stack ({e}); its samples \
                         run on its own stack"
                    ),
                );
                None
            }
        }
    }

    /// The calling thread's OS id.
    pub fn thread_id() -> i64 {
        // SAFETY: gettid has no preconditions.
        i64::from(unsafe { libc::gettid() })
    }

    /// The calling thread's CPU time in ns.
    pub fn thread_cpu_ns() -> u64 {
        crate::idle::clock_now_ns(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or(0)
    }
}

#[cfg(not(threadprof_sampling))]
mod imp {
    use super::SignalError;

    pub fn install() -> Result<(), SignalError> {
        Err(SignalError::Unsupported)
    }
    pub fn still_installed() -> bool {
        true
    }
    pub struct ThreadTimers;
    impl ThreadTimers {
        pub fn start(
            _cpu_hz: u32,
            _wall: Option<&WallTicker>,
            _slot: &std::sync::Arc<crate::slot::ThreadSlot>,
        ) -> std::io::Result<ThreadTimers> {
            Ok(ThreadTimers)
        }
    }
    pub struct WallTicker;
    impl WallTicker {
        pub fn new(_hz: u32) -> WallTicker {
            WallTicker
        }
        pub fn stop(&self) {}
        pub fn settle_parked(&self) {}
    }
    pub fn settle_wall(_slot: &crate::slot::ThreadSlot) {}
    pub fn stack_bounds() -> (u64, u64) {
        (0, 0)
    }
    /// Stand-in: no alternate stack where nothing samples.
    pub struct AltStackSwap;
    impl AltStackSwap {
        #[must_use]
        pub fn restore(self) -> bool {
            true
        }
    }
    pub fn use_signal_stack(_slot: &crate::slot::ThreadSlot) -> Option<AltStackSwap> {
        None
    }
    pub fn allow_copies(_slot: &crate::slot::ThreadSlot) {}
    pub fn thread_id() -> i64 {
        0
    }
    pub fn thread_cpu_ns() -> u64 {
        0
    }
}

pub(crate) use imp::{
    allow_copies, install, settle_wall, stack_bounds, still_installed, thread_cpu_ns, thread_id,
    use_signal_stack, AltStackSwap, ThreadTimers, WallTicker,
};
