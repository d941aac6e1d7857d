//! The SIGPROF handler: the only code that runs inside a signal.
//!
//! Every call it makes, and why each is async-signal-safe:
//! - `__errno_location` (read and restore errno): a pointer into this thread's TLS.
//! - `call_on_stack`: four instructions of inline assembly that move the stack pointer to the
//!   top of this thread's signal stack (memory mapped at registration), call the sampler, and
//!   move it back; taken when the kernel delivered the signal on another stack (the host's
//!   alternate stack).
//! - `CURRENT_SLOT.try_with`: a const-initialised `thread_local!` without destructor, i.e. a
//!   plain TLS load; `try_with` cannot panic.
//! - `clock_gettime(CLOCK_THREAD_CPUTIME_ID)` (samples that carry wall periods, and the first
//!   sample of a thread that was parked): listed async-signal-safe by POSIX.
//! - `idle::monotonic_ns`/`tick_of`: `clock_gettime(CLOCK_MONOTONIC)` (listed
//!   async-signal-safe by POSIX) and two atomic loads of static words, then a division by a
//!   period checked to be non-zero.
//! - `IdleCredit::joined`/`note_run`/`load`/`close`/`open`/`mark_ns`/`note_woken`: atomic
//!   loads and stores of the slot's own
//!   words, a compare-and-swap loop (it retries only while another thread changes the word,
//!   lock-free), `fetch_or` on the slot's word and on one word of a static bitmap (the index
//!   is checked with `get`).
//! - `UnwinderUse::begin`/drop: `SeqCst` atomic operations on static counters (a retry loop
//!   that repeats only if the dump thread swapped the unwinder in between, once per object
//!   load or unload); the unwinder it yields is never freed while a handler holds it.
//! - framehop `iter_frames` with `MustNotAllocateDuringUnwind`: evaluates DWARF CFI with
//!   fixed-size storage in the thread's preallocated cache; no allocation, no locks. Every
//!   memory read it asks for goes through `StackReader` (stackread.rs): a direct load only
//!   inside `[interrupted sp, thread stack top)` when sp is on the thread's own stack, else a
//!   copy by `process_vm_readv` (a system call that fails with EFAULT instead of faulting).
//!   So no unwind rule, register value or foreign stack can make it fault.
//! - `ThreadSlot::context`: two relaxed atomic loads of the slot's own words (the tag, label
//!   set and span ids in force; their strings are never touched here).
//! - `cut_short.fetch_add` (relaxed) on the slot's own counter when a read was refused.
//! - `SampleBuffer::begin`/`push`/`commit`/`commit_repeat`/`count_dropped`: relaxed/acquire/
//!   release atomic loads, stores and one `fetch_add`, into memory allocated at registration;
//!   then `mark_pending`: a swap of the ring's flag and, when it was clear, a `fetch_or` on one
//!   word of the static `PENDING` bitmap (index checked with `get`).
//! - Wall samples read the instruction at (or just before) the interrupted pc, 2 or 4 bytes,
//!   only when `CodeMap::contains_code` (a binary search) says they lie in one readable and
//!   executable segment of a loaded object, and then by `process_vm_readv` (`read_bytes`), so
//!   a segment unloaded since the map was built cannot make it fault; and the return register
//!   from the ucontext.
//!
//! All its work runs on the thread's own signal stack (altstack.rs): the kernel puts the signal
//! frame there (`SA_ONSTACK`) when the thread had no alternate stack of its own, and otherwise
//! the handler moves onto it first. So a thread near the end of its own stack is not pushed
//! past it; the deepest use is printed by `cargo bench --bench overhead`.
//!
//! Nothing here allocates, locks, formats, does I/O, or can panic (no indexing that can fail, no
//! unwrap). Every asynchronous signal, SIGPROF included, is blocked while it runs (sampler.rs),
//! so it never re-enters itself and no host handler runs inside it.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use libc::{c_int, c_void, siginfo_t};

use crate::altstack::call_on_stack;
use crate::buffer::{RecordWriter, SampleKind, StackEnd};
use crate::slot::{ThreadSlot, CURRENT_SLOT};
use crate::stackread::StackReader;
use crate::unwind::{Cache, UnwinderUse};

/// `sigev_value` of CPU-time timers.
pub(crate) const TIMER_CPU: usize = 1;
/// `sigev_value` of the one-shot wall timers the ticker fires; the periods owed are read from
/// the thread's wall account (`ThreadSlot::idle`, see idle.rs).
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

/// `tid`, `overrun`, `sigval` of the `_timer` member.
#[repr(C)]
struct TimerFields {
    tid: c_int,
    overrun: c_int,
    value: *mut c_void,
}

/// Installed with `SA_SIGINFO | SA_RESTART | SA_ONSTACK` for SIGPROF. One run can serve both
/// clocks: the CPU timer's expiries (from `siginfo`) and the wall periods owed to the thread's
/// wall account.
pub(crate) extern "C" fn on_sigprof(_signal: c_int, info: *mut siginfo_t, context: *mut c_void) {
    // SAFETY: __errno_location returns this thread's errno slot, valid for the thread's life.
    let errno = unsafe { *libc::__errno_location() };
    if let Some(slot) = current_slot() {
        let mut args = SampleArgs {
            slot,
            info,
            context,
        };
        let here = std::ptr::addr_of!(args) as usize;
        match &slot.signal_stack {
            // Delivered on the host's alternate stack (or with none): move onto ours first.
            Some(stack) if !stack.contains(here) => {
                // SAFETY: `stack.top()` is the 16-byte aligned top of this thread's signal
                // stack, which nothing on this thread is using (we are not on it, and only this
                // thread's handler uses it; SIGPROF is blocked while the handler runs).
                // `sample_on_stack` takes `args`, which outlives the call.
                unsafe {
                    call_on_stack(
                        stack.top(),
                        std::ptr::addr_of_mut!(args).cast(),
                        sample_on_stack,
                    )
                };
            }
            // SAFETY: the kernel passes a valid siginfo and ucontext for an SA_SIGINFO handler.
            _ => unsafe { take_sample(slot, info, context) },
        }
    }
    // SAFETY: as above; restoring errno hides the handler from the interrupted code.
    unsafe { *libc::__errno_location() = errno };
}

/// What `on_sigprof` hands to the sample taken on the signal stack.
struct SampleArgs {
    slot: &'static ThreadSlot,
    info: *mut siginfo_t,
    context: *mut c_void,
}

/// The slot of the calling thread, if it is registered.
fn current_slot() -> Option<&'static ThreadSlot> {
    let slot = CURRENT_SLOT.try_with(Cell::get).ok()?;
    // SAFETY: a non-null CURRENT_SLOT points to this thread's live slot: the thread clears it
    // before releasing the slot, and this handler runs on that same thread, so the slot
    // outlives this handler run ('static stands for "this run").
    unsafe { slot.as_ref() }
}

/// `take_sample` with its arguments packed, as `call_on_stack` calls it. Never inlined, so
/// that its frame is on the signal stack.
#[inline(never)]
extern "C" fn sample_on_stack(args: *mut c_void) {
    // SAFETY: `on_sigprof` passes a pointer to its live `SampleArgs`.
    let args = unsafe { &*(args as *const SampleArgs) };
    // SAFETY: `info` and `context` are the kernel's, passed through unchanged.
    unsafe { take_sample(args.slot, args.info, args.context) };
}

/// Never inlined into `on_sigprof`: its frame (about 14 KiB in a release build) must not be
/// allocated before the switch to the signal stack.
///
/// # Safety
/// `info` and `context` must be the arguments the kernel passed to an SA_SIGINFO handler on
/// the thread that owns `slot`.
#[inline(never)]
unsafe fn take_sample(slot: &ThreadSlot, info: *mut siginfo_t, context: *mut c_void) {
    // SAFETY: for SI_TIMER signals the kernel fills the `_timer` union member, whose layout
    // TimerSigInfo mirrors; we check si_code before using those fields.
    let info = unsafe { &*(info as *const TimerSigInfo) };
    let cpu = if info.code == libc::SI_TIMER && info.timer.value as usize == TIMER_CPU {
        1 + info.timer.overrun.max(0) as u64
    } else {
        0
    };
    // SAFETY: we are the signal handler on the slot's owning thread (see above).
    let state = unsafe { slot.handler_state() };
    let attributed = slot.context();
    // Whatever sent this signal, take the wall periods owed since the thread's account was
    // last moved (idle.rs): this sample stands for them. A ticker signal that arrived while a
    // timer signal was pending was merged into it by the kernel; one that finds nothing owed
    // (a CPU sample took the periods just before) does nothing.
    let mut wall = 0;
    if slot.wall_period_ns > 0 && slot.idle.joined() {
        slot.idle.note_run();
        let clock = crate::idle::monotonic_ns();
        let now = crate::idle::tick_of(clock);
        let credit = slot.idle.load();
        if cpu == 0 && credit.count() == 0 && crate::idle::behind(credit.until(), now) == 0 {
            return;
        }
        // The thread is running now: stop crediting. If the credit was open, the thread was
        // blocked where its previous record was taken until it woke, and has run since (about
        // as long as its CPU time since then): that many periods are this sample's, the others
        // repeat that record (waiting), ahead of this one, with what the ticker credited.
        let closed = slot.idle.close(now);
        let mut repeat = closed.credited;
        wall = closed.owed;
        if closed.open {
            slot.idle.note_woken();
            if wall > 0 {
                let ran = thread_cpu_ns().saturating_sub(slot.idle.mark_ns());
                // The ticks since it woke are this sample's: about `ran` ago if it has run
                // since without a break; and at least the tick that just began, if the ticker
                // signalled it (it found the thread had woken when the tick began).
                let woke = crate::idle::tick_of(clock.saturating_sub(ran));
                let since = crate::idle::behind(woke, now).max(u64::from(cpu == 0));
                let current = since.min(wall);
                repeat += wall - current;
                wall = current;
            }
        }
        if repeat > 0 {
            match slot.buffer.begin() {
                Some(record) => record.commit_repeat(attributed, repeat),
                None => slot.buffer.count_dropped(repeat),
            }
        }
    }
    if cpu == 0 && wall == 0 {
        return;
    }
    let Some(mut record) = slot.buffer.begin() else {
        slot.buffer.count_dropped(cpu + wall);
        return;
    };
    // SAFETY: `context` is the ucontext_t of the interrupted code.
    let (pc, regs, sp) = unsafe { registers(context) };
    let copies = slot.copies.load(Ordering::Relaxed);
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
        // and used no CPU before waking: it is running. So is one whose CPU timer fired (this
        // sample takes the wall periods owed along with its CPU period). Otherwise at least
        // half a wall period of CPU since the previous wall sample means running.
        // SAFETY: `context` is the ucontext_t of the interrupted code.
        let ret = unsafe { syscall_return(context) };
        blocked = code
            .get()
            .is_some_and(|map| in_syscall(map, pc, ret, copies));
        let woke = std::mem::replace(&mut state.last_wall_blocked, blocked);
        let running = !blocked
            && (woke
                || cpu > 0
                || ran.saturating_mul(2) >= slot.wall_period_ns.saturating_mul(wall));
        if !running {
            wall_kind = SampleKind::WallWaiting;
        }
    }
    let window = slot
        .signal_stack
        .as_ref()
        .map_or(std::ptr::null_mut(), |s| s.window());
    let stack = (
        slot.stack_lo.load(Ordering::Relaxed),
        slot.stack_top.load(Ordering::Relaxed),
    );
    let mut reader = StackReader::new(sp, stack, window, copies);
    let truncated = unwind(
        &code,
        pc,
        regs,
        &mut reader,
        &mut state.unwind_cache,
        &mut record,
    );
    let end = if truncated {
        StackEnd::Truncated
    } else if reader.cut_short {
        slot.cut_short.fetch_add(1, Ordering::Relaxed);
        StackEnd::CutShort
    } else {
        StackEnd::Complete
    };
    record.commit(attributed, cpu, wall, wall_kind, end);
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
fn in_syscall(map: &crate::unwind::CodeMap, pc: u64, ret: i64, copies: bool) -> bool {
    let len = SYSCALL_INSN.len() as u64;
    if maybe_restart(ret) && is_insn(map, pc, SYSCALL_INSN, copies) {
        return true;
    }
    ret == -i64::from(libc::EINTR)
        && pc
            .checked_sub(len)
            .is_some_and(|at| is_insn(map, at, SYSCALL_INSN, copies))
}

/// Whether the bytes at `addr` are `insn`: they must lie in one readable, executable segment
/// of a loaded object, and are copied by a read that cannot fault (the map may predate a
/// `dlclose`).
fn is_insn(map: &crate::unwind::CodeMap, addr: u64, insn: &[u8], copies: bool) -> bool {
    if !map.contains_code(addr, insn.len() as u64) {
        return false;
    }
    let mut bytes = [0u8; 4];
    let Some(bytes) = bytes.get_mut(..insn.len()) else {
        return false;
    };
    crate::stackread::read_bytes(addr, bytes, copies) && bytes == insn
}

/// Whether the return register can belong to a system call the kernel rewound for restart. On
/// x86_64 it then holds the call's number again (`rax = orig_rax`), which saves the read for
/// most running code; on aarch64 `x0` holds the first argument, which says nothing.
#[inline]
fn maybe_restart(ret: i64) -> bool {
    if cfg!(target_arch = "x86_64") {
        (0..1024).contains(&ret)
    } else {
        true
    }
}

fn thread_cpu_ns() -> u64 {
    crate::idle::clock_now_ns(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or(0)
}

/// Writes frame lookup addresses (leaf first) into `record`; returns true if the stack was
/// deeper than the record holds. Memory reads go through `reader`, which cannot fault; the
/// walk itself (signal frames included) is `unwind::walk`, shared with the heap sampler.
fn unwind(
    code: &UnwinderUse,
    pc: u64,
    regs: framehop::UnwindRegsNative,
    reader: &mut StackReader,
    cache: &mut Cache,
    record: &mut RecordWriter<'_>,
) -> bool {
    let Some(map) = code.get() else {
        record.push(pc);
        return false;
    };
    crate::unwind::walk(
        map,
        pc,
        regs,
        &mut |addr| reader.read_u64(addr),
        cache,
        &mut |addr| record.push(addr),
    )
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
/// Return addresses (`lr` and those read from the stack) are stripped of pointer-authentication
/// bits with the mask set at start (`unwind::aarch64_regs`).
///
/// # Safety
/// `context` must point to the `ucontext_t` the kernel passed to the handler.
#[cfg(target_arch = "aarch64")]
unsafe fn registers(context: *mut c_void) -> (u64, framehop::UnwindRegsNative, u64) {
    // SAFETY: the caller passes the kernel's ucontext_t.
    let mc = unsafe { &(*(context as *const libc::ucontext_t)).uc_mcontext };
    let (pc, sp, fp, lr) = (mc.pc, mc.sp, mc.regs[29], mc.regs[30]);
    (pc, crate::unwind::aarch64_regs(lr, sp, fp), sp)
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
