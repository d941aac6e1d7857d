//! The SIGPROF handler: the only code that runs inside a signal.
//!
//! Every call it makes, and why each is async-signal-safe:
//! - `__errno_location` (read and restore errno): a pointer into this thread's TLS.
//! - `CURRENT_SLOT.try_with`: a const-initialised `thread_local!` without destructor, i.e. a
//!   plain TLS load; `try_with` cannot panic.
//! - `clock_gettime(CLOCK_THREAD_CPUTIME_ID)` (wall samples only): listed async-signal-safe by
//!   POSIX.
//! - `UnwinderUse::begin`/drop: two `SeqCst` atomic operations; the unwinder it yields is never
//!   freed while a handler holds it.
//! - framehop `iter_frames` with `MustNotAllocateDuringUnwind`: evaluates DWARF CFI with
//!   fixed-size storage in the thread's preallocated cache; no allocation, no locks. Stack
//!   memory is read only inside `[interrupted sp, thread stack top)`, so a corrupt unwind rule
//!   cannot make it fault.
//! - `SampleBuffer::begin`/`push`/`commit`: relaxed/acquire/release atomic loads and stores
//!   into memory allocated at registration.
//!
//! Nothing here allocates, locks, formats, does I/O, or can panic (no indexing that can fail, no
//! unwrap); SIGPROF is blocked while the handler runs, so it never re-enters itself.

use std::cell::Cell;

use libc::{c_int, c_void, siginfo_t};

use crate::buffer::{RecordWriter, SampleKind};
use crate::slot::{ThreadSlot, CURRENT_SLOT};
use crate::unwind::{Cache, UnwinderUse};
use framehop::Unwinder as _;

/// `sigev_value` of CPU-time timers.
pub(crate) const TIMER_CPU: usize = 1;
/// `sigev_value` of wall-clock timers.
pub(crate) const TIMER_WALL: usize = 2;

/// The `_timer` member of the kernel's `siginfo_t` union, with the three leading ints. With
/// `repr(C)` the union starts at offset 16 on 64-bit targets, as in the kernel's layout.
#[repr(C)]
struct TimerSigInfo {
    signo: c_int,
    errno: c_int,
    code: c_int,
    timer: TimerFields,
}

#[repr(C)]
struct TimerFields {
    tid: c_int,
    overrun: c_int,
    value: *mut c_void,
}

/// Installed with `SA_SIGINFO | SA_RESTART` for SIGPROF.
pub(crate) extern "C" fn on_sigprof(_signal: c_int, info: *mut siginfo_t, context: *mut c_void) {
    // SAFETY: __errno_location returns this thread's errno slot, valid for the thread's life.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid siginfo and ucontext for an SA_SIGINFO handler.
    unsafe { take_sample(info, context) };
    // SAFETY: as above; restoring errno hides the handler from the interrupted code.
    unsafe { *libc::__errno_location() = errno };
}

/// # Safety
/// `info` and `context` must be the arguments the kernel passed to an SA_SIGINFO handler.
unsafe fn take_sample(info: *mut siginfo_t, context: *mut c_void) {
    let Ok(slot) = CURRENT_SLOT.try_with(Cell::get) else {
        return;
    };
    // SAFETY: a non-null CURRENT_SLOT points to this thread's live slot: the thread clears it
    // before releasing the slot, and this handler runs on that same thread.
    let Some(slot) = (unsafe { slot.as_ref() }) else {
        return;
    };
    // SAFETY: for SI_TIMER signals the kernel fills the `_timer` union member, whose layout
    // TimerSigInfo mirrors; we check si_code before using those fields.
    let info = unsafe { &*(info as *const TimerSigInfo) };
    if info.code != libc::SI_TIMER {
        return;
    }
    let weight = 1 + info.timer.overrun.max(0) as u64;
    // SAFETY: we are the signal handler on the slot's owning thread (see above).
    let state = unsafe { slot.handler_state() };
    let kind = match info.timer.value as usize {
        TIMER_CPU => SampleKind::Cpu,
        TIMER_WALL => {
            let now = thread_cpu_ns();
            let ran = now.saturating_sub(state.last_wall_cpu_ns);
            state.last_wall_cpu_ns = now;
            if ran.saturating_mul(2) >= slot.wall_period_ns * weight {
                SampleKind::WallRunning
            } else {
                SampleKind::WallWaiting
            }
        }
        _ => return,
    };
    let Some(mut record) = slot.buffer.begin() else {
        return;
    };
    // SAFETY: `context` is the ucontext_t of the interrupted code.
    let (pc, regs, sp) = unsafe { registers(context) };
    let truncated = unwind(slot, pc, regs, sp, &mut state.unwind_cache, &mut record);
    record.commit(kind, slot.tag(), weight, truncated);
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own; async-signal-safe per POSIX.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Writes frame lookup addresses (leaf first) into `record`; returns true if the stack was
/// deeper than the record holds.
fn unwind(
    slot: &ThreadSlot,
    pc: u64,
    regs: framehop::UnwindRegsNative,
    sp: u64,
    cache: &mut Cache,
    record: &mut RecordWriter<'_>,
) -> bool {
    let top = slot.stack_top.load(std::sync::atomic::Ordering::Relaxed);
    let unwinder = UnwinderUse::begin();
    let Some(unwinder) = unwinder.get() else {
        record.push(pc);
        return false;
    };
    let mut read_stack = |addr: u64| {
        if addr >= sp && addr.checked_add(8).is_some_and(|end| end <= top) {
            // SAFETY: [sp, top) is this thread's stack above the interrupted frame: mapped and
            // readable for as long as the thread runs, and we are running on it.
            Ok(unsafe { (addr as *const u64).read_unaligned() })
        } else {
            Err(())
        }
    };
    let mut frames = unwinder.iter_frames(pc, regs, cache, &mut read_stack);
    while let Ok(Some(frame)) = frames.next() {
        if !record.push(frame.address_for_lookup()) {
            return true;
        }
    }
    false
}

/// Program counter, framehop registers and stack pointer of the interrupted code.
///
/// # Safety
/// `context` must point to the `ucontext_t` the kernel passed to the handler.
#[cfg(target_arch = "x86_64")]
unsafe fn registers(context: *mut c_void) -> (u64, framehop::UnwindRegsNative, u64) {
    // SAFETY: the caller passes the kernel's ucontext_t.
    let gregs = unsafe { &(*(context as *const libc::ucontext_t)).uc_mcontext.gregs };
    let (pc, sp, bp) = (
        gregs[libc::REG_RIP as usize] as u64,
        gregs[libc::REG_RSP as usize] as u64,
        gregs[libc::REG_RBP as usize] as u64,
    );
    (pc, framehop::UnwindRegsNative::new(pc, sp, bp), sp)
}

/// Program counter, framehop registers and stack pointer of the interrupted code.
///
/// # Safety
/// `context` must point to the `ucontext_t` the kernel passed to the handler.
#[cfg(target_arch = "aarch64")]
unsafe fn registers(context: *mut c_void) -> (u64, framehop::UnwindRegsNative, u64) {
    // SAFETY: the caller passes the kernel's ucontext_t.
    let mc = unsafe { &(*(context as *const libc::ucontext_t)).uc_mcontext };
    let (pc, sp, fp, lr) = (mc.pc, mc.sp, mc.regs[29], mc.regs[30]);
    (pc, framehop::UnwindRegsNative::new(lr, sp, fp), sp)
}
