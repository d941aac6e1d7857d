//! Timers and the signal disposition: who gets sampled, and how often.
//!
//! Each registered thread gets its own POSIX timers, created by that thread: one on its CPU-time
//! clock (`CLOCK_THREAD_CPUTIME_ID`) and, when wall sampling is on, one on `CLOCK_MONOTONIC`.
//! Both deliver SIGPROF to that thread alone (`SIGEV_THREAD_ID`) and say which clock fired in
//! `sigev_value`. Threads that are not registered have no timer and receive nothing.

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

#[cfg(profiler_sampling)]
mod imp {
    use super::SignalError;
    use crate::handler::{on_sigprof, TIMER_CPU, TIMER_WALL};
    use std::io;
    use std::mem::MaybeUninit;

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
        act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        // SAFETY: sa_mask is owned; sigemptyset initialises it. SIGPROF itself stays blocked
        // during the handler because SA_NODEFER is not set.
        unsafe { libc::sigemptyset(&mut act.sa_mask) };
        // SAFETY: `act` is fully initialised and `on_sigprof` has the SA_SIGINFO signature.
        if unsafe { libc::sigaction(libc::SIGPROF, &act, std::ptr::null_mut()) } != 0 {
            return Err(SignalError::Os(io::Error::last_os_error().to_string()));
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
        fn create(clock: libc::clockid_t, kind: usize, hz: u32, phase: u64) -> io::Result<Timer> {
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
            let timer = Timer(id);
            let period = 1_000_000_000 / u64::from(hz.max(1));
            let first = 1 + phase % period;
            let ts = |ns: u64| libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            };
            let spec = libc::itimerspec {
                it_interval: ts(period),
                it_value: ts(first),
            };
            // SAFETY: `id` is the timer just created; `spec` is valid.
            if unsafe { libc::timer_settime(id, 0, &spec, std::ptr::null_mut()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(timer)
        }
    }

    impl Drop for Timer {
        fn drop(&mut self) {
            // SAFETY: the id came from timer_create and is deleted exactly once, here.
            unsafe { libc::timer_delete(self.0) };
        }
    }

    /// The timers of one thread; dropping them stops its sampling.
    pub struct ThreadTimers {
        _cpu: Timer,
        _wall: Option<Timer>,
    }

    impl ThreadTimers {
        /// Creates the calling thread's timers.
        pub fn start(cpu_hz: u32, wall_hz: u32) -> io::Result<ThreadTimers> {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() } as u64;
            let cpu = Timer::create(libc::CLOCK_THREAD_CPUTIME_ID, TIMER_CPU, cpu_hz, 0)?;
            let wall = if wall_hz > 0 {
                // Spread wall timers of different threads over the period.
                let phase = tid.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                Some(Timer::create(
                    libc::CLOCK_MONOTONIC,
                    TIMER_WALL,
                    wall_hz,
                    phase,
                )?)
            } else {
                None
            };
            Ok(ThreadTimers {
                _cpu: cpu,
                _wall: wall,
            })
        }
    }

    /// The calling thread's stack top (highest address, exclusive), or 0 if unknown.
    pub fn stack_top() -> u64 {
        let mut attr = MaybeUninit::<libc::pthread_attr_t>::uninit();
        // SAFETY: pthread_getattr_np initialises `attr` on success; we destroy it after use.
        unsafe {
            if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
                return 0;
            }
            let (mut addr, mut size) = (std::ptr::null_mut(), 0usize);
            let ok = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) == 0;
            libc::pthread_attr_destroy(attr.as_mut_ptr());
            if ok {
                addr as u64 + size as u64
            } else {
                0
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
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes only the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

#[cfg(not(profiler_sampling))]
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
        pub fn start(_cpu_hz: u32, _wall_hz: u32) -> std::io::Result<ThreadTimers> {
            Ok(ThreadTimers)
        }
    }
    pub fn stack_top() -> u64 {
        0
    }
    pub fn thread_id() -> i64 {
        0
    }
    pub fn thread_cpu_ns() -> u64 {
        0
    }
}

pub(crate) use imp::{install, stack_top, still_installed, thread_cpu_ns, thread_id, ThreadTimers};
