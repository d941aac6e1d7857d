//! The stack of a sampled allocation, walked from the allocation path itself.
//!
//! [`capture`] reads its own program counter, stack pointer and frame pointer (a few
//! instructions of inline assembly), and walks outwards from there with the unwinder the signal
//! handler uses (`unwind::walk`, through an `UnwinderUse`). Every memory read goes through a
//! `StackReader` limited to the calling thread's own stack above that stack pointer, which is
//! mapped for as long as the thread runs; a read anywhere else is refused and ends the walk
//! (the sample is marked cut short). No copies (`process_vm_readv`) are made here: a thread
//! allocating on another stack (a `stacker` segment, a fiber, an alternate signal stack) gets
//! the frames up to where the walk leaves that stack.
//!
//! Owns a pool of framehop caches, made at start on a thread of its own (building one takes
//! tens of KiB of stack) and never freed. A sample takes a free one with an atomic swap and
//! puts it back when done; if every cache is taken at once, the sample is discarded (counted
//! as dropped). The caches are not the signal handler's (its is per thread, in its slot), so a
//! SIGPROF arriving during a walk uses its own.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use super::events::{CUT_SHORT, DISCARD, MAX_FRAMES, TRUNCATED};
use crate::stackread::StackReader;
use crate::unwind::{Cache, UnwinderUse};

/// Most caches in the pool.
const MAX_CACHES: usize = 32;

struct Pooled {
    busy: AtomicBool,
    cache: AtomicPtr<Cache>,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Pooled = Pooled {
    busy: AtomicBool::new(false),
    cache: AtomicPtr::new(std::ptr::null_mut()),
};
static POOL: [Pooled; MAX_CACHES] = [EMPTY; MAX_CACHES];
static POOL_LEN: AtomicUsize = AtomicUsize::new(0);

/// Bytes one cache takes (for the tracking-memory figure).
pub(crate) fn cache_bytes() -> usize {
    std::mem::size_of::<Cache>() + CONTEXT_BYTES
}

/// framehop's boxed unwind context (rule rows), inside each cache; an estimate of its size.
const CONTEXT_BYTES: usize = 32 * 1024;

/// Fills the pool with `n` caches (at most [`MAX_CACHES`]); returns how many it holds.
pub(crate) fn fill_pool(n: usize) -> usize {
    let want = n.clamp(1, MAX_CACHES);
    let have = POOL_LEN.load(Ordering::Acquire);
    if have >= want {
        return have;
    }
    // Built on a thread with a known stack: framehop builds a cache by value.
    let built = std::thread::Builder::new()
        .name("threadprof-heap-init".into())
        .stack_size(4 << 20)
        .spawn(move || {
            super::exclude_current_thread();
            (have..want)
                .map(|_| Box::into_raw(Box::<Cache>::default()) as usize)
                .collect::<Vec<usize>>()
        })
        .ok()
        .and_then(|t| t.join().ok())
        .unwrap_or_default();
    for (slot, cache) in POOL.iter().skip(have).zip(built) {
        slot.cache.store(cache as *mut Cache, Ordering::Release);
    }
    let len = POOL
        .iter()
        .take_while(|p| !p.cache.load(Ordering::Acquire).is_null())
        .count();
    POOL_LEN.store(len, Ordering::Release);
    len
}

/// A cache taken from the pool; given back on drop.
struct Lease(&'static Pooled, *mut Cache);

impl Lease {
    /// A free cache, trying from `start` on; `None` if every one is taken.
    fn take(start: usize) -> Option<Lease> {
        let len = POOL_LEN.load(Ordering::Acquire);
        (0..len).find_map(|i| {
            let p = POOL.get(start.wrapping_add(i) % len.max(1))?;
            let cache = p.cache.load(Ordering::Acquire);
            if cache.is_null() || p.busy.swap(true, Ordering::Acquire) {
                return None;
            }
            Some(Lease(p, cache))
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

/// Walks the calling thread's stack from this function outwards into `frames` (lookup
/// addresses, leaf first); returns the number of frames written and the event flags
/// (`TRUNCATED`, `CUT_SHORT`, or `DISCARD` when no cache was free). `stack` is the thread's
/// stack range `(lo, top)`, `(0, 0)` if unknown (then only this function's frame is recorded).
/// `hint` spreads threads over the pool.
#[inline(never)]
pub(crate) fn capture(
    stack: (u64, u64),
    frames: &mut [u64; MAX_FRAMES],
    hint: usize,
) -> (u32, u32) {
    let (pc, regs, sp) = registers_here();
    let Some(lease) = Lease::take(hint) else {
        return (0, DISCARD);
    };
    let code = UnwinderUse::begin();
    let Some(map) = code.get() else {
        frames[0] = pc;
        return (1, 0);
    };
    // Direct reads only, inside [sp, top) of this thread's own stack: no window, no copies.
    let mut reader = StackReader::new(sp, stack, std::ptr::null_mut(), false);
    // SAFETY: the lease holds the cache exclusively (its busy flag was swapped from false),
    // and the pointer came from `Box::into_raw` in `fill_pool` and is never freed.
    let cache = unsafe { &mut *lease.1 };
    let mut n = 0usize;
    let truncated = crate::unwind::walk(
        map,
        pc,
        regs,
        &mut |addr| reader.read_u64(addr),
        cache,
        &mut |addr| match frames.get_mut(n) {
            Some(f) => {
                *f = addr;
                n += 1;
                true
            }
            None => false,
        },
    );
    let mut flags = 0;
    if truncated {
        flags |= TRUNCATED;
    } else if reader.cut_short {
        flags |= CUT_SHORT;
    }
    (n as u32, flags)
}

/// Program counter, framehop registers and stack pointer at this point of the caller (always
/// inlined, so they describe the caller's frame, whose unwind rules framehop then applies).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn registers_here() -> (u64, framehop::UnwindRegsNative, u64) {
    let (pc, sp, bp): (u64, u64, u64);
    // SAFETY: reads rip (by `lea`), rsp and rbp into registers; touches no memory, no stack,
    // no flags.
    unsafe {
        std::arch::asm!(
            "lea {pc}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            pc = out(reg) pc,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags),
        );
    }
    (pc, framehop::UnwindRegsNative::new(pc, sp, bp), sp)
}

/// Program counter, framehop registers and stack pointer at this point of the caller (always
/// inlined). Return addresses are stripped of pointer-authentication bits as in the handler.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn registers_here() -> (u64, framehop::UnwindRegsNative, u64) {
    let (pc, sp, fp, lr): (u64, u64, u64, u64);
    // SAFETY: reads the pc (by `adr`), sp, x29 and x30 into registers; touches no memory, no
    // stack, no flags.
    unsafe {
        std::arch::asm!(
            "adr {pc}, .",
            "mov {sp}, sp",
            "mov {fp}, x29",
            "mov {lr}, x30",
            pc = out(reg) pc,
            sp = out(reg) sp,
            fp = out(reg) fp,
            lr = out(reg) lr,
            options(nomem, nostack, preserves_flags),
        );
    }
    (pc, crate::unwind::aarch64_regs(lr, sp, fp), sp)
}

/// aarch64: return addresses signed with pointer authentication are stripped in every frame,
/// also in a frame whose unwind rule framehop evaluates in full instead of caching it: there
/// framehop 0.16 returns the return address as read from the stack, signature included
/// (`unwind::walk` strips it).
#[cfg(all(test, target_arch = "aarch64"))]
mod tests {
    use std::sync::Mutex;

    use super::{capture, fill_pool, MAX_FRAMES};

    // A function that signs its return address (`paciasp`, a no-op on a CPU without pointer
    // authentication) and keeps a 320 KiB frame: the saved `lr` is then too far from `sp` for
    // framehop's compact rules, so it evaluates the CFI in full. Calls `x0`. Its CFI leaves out
    // `.cfi_negate_ra_state`, which a compiler emits: framehop 0.16 reads `.eh_frame` without
    // gimli's AArch64 vendor setting, so that instruction makes the whole entry unreadable and
    // the frame is walked by its frame pointer instead (which strips); without it the CFI is
    // evaluated, as it will be once framehop reads the instruction.
    std::arch::global_asm!(
        ".text",
        ".p2align 2",
        ".globl threadprof_test_signed_big_frame",
        ".type threadprof_test_signed_big_frame, %function",
        "threadprof_test_signed_big_frame:",
        ".cfi_startproc",
        "hint #25", // paciasp
        "stp x29, x30, [sp, #-16]!",
        ".cfi_def_cfa_offset 16",
        ".cfi_offset x29, -16",
        ".cfi_offset x30, -8",
        "mov x29, sp",
        "sub sp, sp, #0x50, lsl #12",
        ".cfi_def_cfa_offset 0x50010",
        "blr x0",
        "add sp, sp, #0x50, lsl #12",
        ".cfi_def_cfa_offset 16",
        "ldp x29, x30, [sp], #16",
        ".cfi_def_cfa_offset 0",
        ".cfi_restore x29",
        ".cfi_restore x30",
        "hint #29", // autiasp
        "ret",
        ".cfi_endproc",
        ".size threadprof_test_signed_big_frame, . - threadprof_test_signed_big_frame",
    );

    extern "C" {
        fn threadprof_test_signed_big_frame(f: extern "C" fn());
    }

    static FRAMES: Mutex<Vec<u64>> = Mutex::new(Vec::new());

    extern "C" fn capture_here() {
        let mut frames = [0u64; MAX_FRAMES];
        let (n, _) = capture(crate::sampler::stack_bounds(), &mut frames, 0);
        let mut kept = FRAMES.lock().unwrap();
        kept.clear();
        kept.extend_from_slice(&frames[..n as usize]);
    }

    #[test]
    fn signed_return_addresses_are_stripped_in_frames_framehop_does_not_cache() {
        // As at start (sampler.rs): the initial stack is near the top of user space.
        // SAFETY: getauxval has no preconditions (AT_RANDOM = 25).
        let top = unsafe { libc::getauxval(25) } as u64;
        crate::unwind::note_highest_user_address(top.max(crate::sampler::stack_bounds().1));
        crate::unwind::refresh();
        assert!(fill_pool(1) >= 1);
        // SAFETY: the function above moves the stack pointer down 320 KiB (the test thread's
        // 2 MiB stack has room), calls `capture_here` and returns; `capture_here` panics only
        // on a poisoned lock (a panic across `extern "C"` aborts the test binary: a failure
        // all the same).
        unsafe { threadprof_test_signed_big_frame(capture_here) };
        let frames = FRAMES.lock().unwrap().clone();
        let mask = crate::unwind::return_address_mask_now();
        assert!(
            frames.iter().all(|&f| f & !mask == 0),
            "signature bits left in {frames:#x?} (mask {mask:#x})"
        );
        // capture, capture_here, the signed frame, then at least this test and its caller.
        assert!(frames.len() >= 5, "{frames:#x?}");
    }
}
