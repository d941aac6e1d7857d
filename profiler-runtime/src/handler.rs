//! The SIGPROF handler: the only code that runs inside a signal.
//!
//! Every call it makes, and why each is async-signal-safe:
//! - `__errno_location` (read and restore errno): a pointer into this thread's TLS.
//! - `CURRENT_SLOT.try_with`: a const-initialised `thread_local!` without destructor, i.e. a
//!   plain TLS load; `try_with` cannot panic.
//! - `clock_gettime(CLOCK_THREAD_CPUTIME_ID)` (wall samples only): listed async-signal-safe by
//!   POSIX.
//! - `wall_due.swap` and `IdleCredit::close`/`open`: atomic swap, compare-and-swap loop (it
//!   retries only while another thread changes the word, lock-free) and `fetch_or` on the
//!   slot's own words.
//! - `UnwinderUse::begin`/drop: two `SeqCst` atomic operations; the unwinder it yields is never
//!   freed while a handler holds it.
//! - framehop `iter_frames` with `MustNotAllocateDuringUnwind`: evaluates DWARF CFI with
//!   fixed-size storage in the thread's preallocated cache; no allocation, no locks. Stack
//!   memory is read only inside `[interrupted sp, thread stack top)`, so a corrupt unwind rule
//!   cannot make it fault.
//! - `SampleBuffer::begin`/`push`/`commit`/`commit_repeat`/`count_dropped`: relaxed/acquire/
//!   release atomic loads, stores and one `fetch_add`, into memory allocated at registration.
//! - Wall samples read the instruction at (or just before) the interrupted pc, 2 or 4 bytes,
//!   only after `CodeMap::contains_code` (a binary search) confirmed they lie in a loaded
//!   object's executable segment, and the return register from the ucontext.
//!
//! Nothing here allocates, locks, formats, does I/O, or can panic (no indexing that can fail, no
//! unwrap); SIGPROF is blocked while the handler runs, so it never re-enters itself.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use libc::{c_int, c_void, siginfo_t};

use crate::buffer::{RecordWriter, SampleKind};
use crate::slot::{ThreadSlot, CURRENT_SLOT};
use crate::unwind::{Cache, UnwinderUse};
use framehop::Unwinder as _;

/// `sigev_value` of CPU-time timers. Wall periods arrive through `ThreadSlot::wall_due`, with a
/// plain `tgkill` from the wall ticker.
pub(crate) const TIMER_CPU: usize = 1;

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

/// Installed with `SA_SIGINFO | SA_RESTART` for SIGPROF. One run can serve both clocks: the
/// CPU timer's expiries (from `siginfo`) and the wall periods the ticker left in `wall_due`.
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
    let cpu = if info.code == libc::SI_TIMER && info.timer.value as usize == TIMER_CPU {
        1 + info.timer.overrun.max(0) as u64
    } else {
        0
    };
    // Whatever sent this signal, take the wall periods owed: a ticker signal that arrived
    // while a timer signal was pending was merged into it by the kernel.
    let wall = slot.wall_due.swap(0, Ordering::Acquire);
    if cpu == 0 && wall == 0 {
        return;
    }
    // SAFETY: we are the signal handler on the slot's owning thread (see above).
    let state = unsafe { slot.handler_state() };
    // The thread is running now: stop crediting, and record the periods credited while it was
    // blocked, as a repeat of its previous record, ahead of this one. Without wall sampling
    // nothing is ever credited, and CPU samples skip the compare-and-swap.
    let credited = if slot.wall_period_ns > 0 {
        slot.idle.close()
    } else {
        0
    };
    if credited > 0 {
        match slot.buffer.begin() {
            Some(record) => record.commit_repeat(slot.tag(), credited),
            None => slot.buffer.count_dropped(credited),
        }
    }
    let Some(mut record) = slot.buffer.begin() else {
        slot.buffer.count_dropped(cpu + wall);
        return;
    };
    // SAFETY: `context` is the ucontext_t of the interrupted code.
    let (pc, regs, sp) = unsafe { registers(context) };
    let code = UnwinderUse::begin();
    let mut blocked = false;
    let mut wall_kind = SampleKind::WallRunning;
    if wall > 0 {
        let now = thread_cpu_ns();
        let ran = now.saturating_sub(state.last_wall_cpu_ns);
        state.last_wall_cpu_ns = now;
        // A thread interrupted in a blocking system call is waiting, whatever CPU it used
        // since the last wall sample (it may have just gone to sleep after a burst). One that
        // was blocked at the previous wall sample and is now in user code has woken since,
        // and used no CPU before waking: it is running. Otherwise at least half a wall period
        // of CPU since the previous wall sample means running.
        // SAFETY: `context` is the ucontext_t of the interrupted code.
        let ret = unsafe { syscall_return(context) };
        blocked = code.get().is_some_and(|map| in_syscall(map, pc, ret));
        let woke = std::mem::replace(&mut state.last_wall_blocked, blocked);
        let running =
            !blocked && (woke || ran.saturating_mul(2) >= slot.wall_period_ns.saturating_mul(wall));
        if !running {
            wall_kind = SampleKind::WallWaiting;
        }
    }
    let truncated = unwind(
        &code,
        slot,
        pc,
        regs,
        sp,
        &mut state.unwind_cache,
        &mut record,
    );
    record.commit(slot.tag(), cpu, wall, wall_kind, truncated);
    if blocked {
        // Until this thread runs again it stays blocked on this stack: let the ticker credit
        // its next periods without waking it. The CPU time is read last, so the little the
        // thread spends returning into its system call is all that separates it from a
        // reading made while the thread is still blocked.
        slot.idle.open(thread_cpu_ns());
    }
}

#[cfg(target_arch = "x86_64")]
const SYSCALL_INSN: &[u8] = &[0x0f, 0x05]; // syscall
#[cfg(target_arch = "aarch64")]
const SYSCALL_INSN: &[u8] = &[0x01, 0x00, 0x00, 0xd4]; // svc #0

/// Whether the signal interrupted a blocking system call. Two shapes, both set up by the
/// kernel before it runs a handler: a call that will be restarted (`SA_RESTART` on futex,
/// read, ...) has pc rewound onto the syscall instruction; a call that returns `EINTR`
/// whatever the flags (nanosleep, epoll_wait, poll, ...) has pc just after it and `-EINTR` in
/// the return register.
fn in_syscall(map: &crate::unwind::CodeMap, pc: u64, ret: i64) -> bool {
    let len = SYSCALL_INSN.len() as u64;
    if is_insn(map, pc, SYSCALL_INSN) {
        return true;
    }
    ret == -i64::from(libc::EINTR)
        && pc
            .checked_sub(len)
            .is_some_and(|at| is_insn(map, at, SYSCALL_INSN))
}

/// Whether the bytes at `addr` are `insn`, reading only inside a loaded object's code.
fn is_insn(map: &crate::unwind::CodeMap, addr: u64, insn: &[u8]) -> bool {
    if !map.contains_code(addr, insn.len() as u64) {
        return false;
    }
    // SAFETY: addr..addr+len lies inside an executable segment of a loaded object, which stays
    // mapped readable while the object is loaded; the code map that says so is kept alive by
    // the caller's `UnwinderUse`, and objects are not unloaded while their code runs.
    let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, insn.len()) };
    bytes == insn
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
    code: &UnwinderUse,
    slot: &ThreadSlot,
    pc: u64,
    regs: framehop::UnwindRegsNative,
    sp: u64,
    cache: &mut Cache,
    record: &mut RecordWriter<'_>,
) -> bool {
    let top = slot.stack_top.load(std::sync::atomic::Ordering::Relaxed);
    let Some(map) = code.get() else {
        record.push(pc);
        return false;
    };
    let unwinder = &map.unwinder;
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

/// The system call return register of the interrupted code (`rax`).
///
/// # Safety
/// `context` must point to the `ucontext_t` the kernel passed to the handler.
#[cfg(target_arch = "x86_64")]
unsafe fn syscall_return(context: *mut c_void) -> i64 {
    // SAFETY: the caller passes the kernel's ucontext_t.
    let gregs = unsafe { &(*(context as *const libc::ucontext_t)).uc_mcontext.gregs };
    gregs[libc::REG_RAX as usize]
}

/// The system call return register of the interrupted code (`x0`).
///
/// # Safety
/// `context` must point to the `ucontext_t` the kernel passed to the handler.
#[cfg(target_arch = "aarch64")]
unsafe fn syscall_return(context: *mut c_void) -> i64 {
    // SAFETY: the caller passes the kernel's ucontext_t.
    let mc = unsafe { &(*(context as *const libc::ucontext_t)).uc_mcontext };
    mc.regs[0] as i64
}
