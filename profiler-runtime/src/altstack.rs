//! `SignalStack`: the alternate signal stack the SIGPROF handler runs on, and the scratch
//! window its fault-proof memory reads copy into.
//!
//! One sample needs 16–20 KiB of stack (framehop and gimli keep unwind rows of several KiB on
//! it). Run on the interrupted thread's own stack, that aborts a thread that is near the end of
//! its stack; run on std's alternate stack (8 KiB per thread), it overflows that. So each
//! registered thread gets [`STACK_BYTES`] of its own, mapped with its slot (reused with it;
//! only the pages a handler touched are resident), below a `PROT_NONE` guard page so an
//! overflow faults instead of writing over other memory.
//!
//! Two ways onto it, so that a host's own alternate stack is left alone:
//! - A thread without an alternate stack gets this one ([`install`]); the handler is installed
//!   with `SA_ONSTACK` (sampler.rs), so the kernel's signal frame (2–3 KiB with AVX-512 state)
//!   lands here too, not on the interrupted stack. At unregistration it is disabled again
//!   ([`AltStackSwap::restore`]) if it is still the one installed.
//! - A thread that has one (std gives every thread it spawns an 8 KiB one for its stack
//!   overflow message; a host may install its own) keeps it, if it holds a signal frame with
//!   room to spare ([`min_host_stack`]): the kernel's frame lands there, and the handler,
//!   finding itself off this stack, moves onto it before it does any work (`handler.rs`,
//!   `call_on_stack`). One too small for that (a host's `MINSIGSTKSZ` stack on a machine whose
//!   signal frames are larger) is replaced by ours while the thread is registered, and put back
//!   at unregistration.
//!
//! Owns: the mapping. Touches: `sigaltstack` for the calling thread only.

use std::ffi::c_void;
use std::io;

/// Bytes of stack for the handler. Measured use: see `cargo bench --bench overhead`.
pub const STACK_BYTES: usize = 128 * 1024;
/// Bytes of scratch for copies of foreign stack memory (`stackread.rs`).
pub const WINDOW_BYTES: usize = 32 * 1024;

/// Byte written over a stack before measuring how deep a handler went.
const PAINT: u8 = 0xa5;

/// A mapping: one guard page, then the handler's stack, then the read window, then `extra`
/// bytes for the owner (the slot's sample ring: one mapping per thread, not two, so that ten
/// thousand registered threads stay well under `vm.max_map_count`).
pub(crate) struct SignalStack {
    base: *mut u8,
    page: usize,
    extra: usize,
}

// SAFETY: the mapping is owned by this value; the stack is used only by the signal handler of
// the one thread it is installed on, and the window only by that handler.
unsafe impl Send for SignalStack {}
// SAFETY: as above; shared references expose only addresses, never the bytes.
unsafe impl Sync for SignalStack {}

impl SignalStack {
    /// Maps a new stack and window, and `extra` zeroed bytes after them (rounded up to whole
    /// pages; see [`Self::extra`]). Nothing is resident yet: the kernel backs pages on first
    /// touch.
    pub(crate) fn new(extra: usize) -> io::Result<SignalStack> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|&p| p > 0)
            .unwrap_or(4096);
        let extra = extra.div_ceil(page) * page;
        let len = page + STACK_BYTES + WINDOW_BYTES + extra;
        // SAFETY: an anonymous private mapping at an address the kernel picks; no existing
        // memory is affected. The result is checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the first page of the mapping we just made; nothing else uses it.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            let e = io::Error::last_os_error();
            // SAFETY: the mapping made above, unmapped once, here, on the error path.
            unsafe { libc::munmap(base, len) };
            return Err(e);
        }
        Ok(SignalStack {
            base: base.cast(),
            page,
            extra,
        })
    }

    fn len(&self) -> usize {
        self.page + STACK_BYTES + WINDOW_BYTES + self.extra
    }

    /// The extra region asked for in [`Self::new`]: 8-byte aligned (page-aligned with 4 KiB
    /// pages), zero-filled when mapped,
    /// readable and writable, and valid until this value drops. Nothing here uses it.
    pub(crate) fn extra(&self) -> (*mut u8, usize) {
        (
            self.base
                .wrapping_add(self.page + STACK_BYTES + WINDOW_BYTES),
            self.extra,
        )
    }

    /// Whether `addr` lies on the usable stack.
    pub(crate) fn contains(&self, addr: usize) -> bool {
        let base = self.stack_base() as usize;
        addr >= base && addr < base + STACK_BYTES
    }

    /// The stack's top (highest address, exclusive; 16-byte aligned): where a handler that is
    /// not on it starts.
    pub(crate) fn top(&self) -> *mut u8 {
        self.stack_base().wrapping_add(STACK_BYTES)
    }

    /// Lowest address of the usable stack (just above the guard page).
    pub(crate) fn stack_base(&self) -> *mut u8 {
        self.base.wrapping_add(self.page)
    }

    /// The read window: [`WINDOW_BYTES`] bytes the owning thread's handler may write.
    pub(crate) fn window(&self) -> *mut u8 {
        self.base.wrapping_add(self.page + STACK_BYTES)
    }

    /// Runs `f` on this stack and returns its result. Registration builds the slot's unwind
    /// cache this way: framehop assembles it by value (tens of KiB in a debug build), which a
    /// thread with a small stack could not hold.
    ///
    /// # Safety
    /// Nothing may be using this stack: call it before it is installed or handed to a handler.
    /// `f` must not unwind (a panic in it aborts).
    pub(crate) unsafe fn run_on<F: FnOnce() -> R, R>(&self, f: F) -> R {
        struct Call<F, R> {
            f: Option<F>,
            out: Option<R>,
        }
        extern "C" fn trampoline<F: FnOnce() -> R, R>(arg: *mut c_void) {
            // SAFETY: `run_on` passes a pointer to its live `Call<F, R>`.
            let call = unsafe { &mut *arg.cast::<Call<F, R>>() };
            if let Some(f) = call.f.take() {
                call.out = Some(f());
            }
        }
        let mut call = Call {
            f: Some(f),
            out: None,
        };
        // SAFETY: the top of this mapping, not in use (caller's contract); `call` outlives
        // the call; a panic in `f` cannot unwind out of the `extern "C"` trampoline (it
        // aborts), so the stack pointer is always restored.
        unsafe {
            call_on_stack(
                self.top(),
                std::ptr::addr_of_mut!(call).cast(),
                trampoline::<F, R>,
            )
        };
        match call.out {
            Some(out) => out,
            // The trampoline always fills `out`; without it there is no value to return.
            None => unreachable!("run_on: the function did not run"),
        }
    }

    /// Writes [`PAINT`] over the whole stack, so that [`Self::deepest_use`] can tell how far
    /// down a handler wrote afterwards. For measurements (the overhead bench); it makes the
    /// whole stack resident.
    ///
    /// # Safety
    /// Must be called on the thread this stack is installed on, outside a signal handler.
    pub(crate) unsafe fn paint(&self) {
        // SAFETY: the stack region is mapped read-write and owned by self; the handler that
        // could use it runs on this thread, so not while this runs (it would interrupt us and
        // return before we continue, leaving only its own marks).
        unsafe { std::ptr::write_bytes(self.stack_base(), PAINT, STACK_BYTES) };
    }

    /// Bytes of the stack written since [`Self::paint`]: the distance from the stack's top
    /// down to the lowest byte that no longer holds the paint.
    ///
    /// # Safety
    /// As for [`Self::paint`].
    pub(crate) unsafe fn deepest_use(&self) -> usize {
        // SAFETY: as in `paint`: mapped, owned, and no handler runs while we read.
        let stack = unsafe { std::slice::from_raw_parts(self.stack_base(), STACK_BYTES) };
        let untouched = stack.iter().take_while(|&&b| b == PAINT).count();
        STACK_BYTES - untouched
    }
}

impl Drop for SignalStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped exactly once. A stack is dropped only
        // with its slot, after its thread restored its previous alternate stack (or ended).
        unsafe { libc::munmap(self.base.cast(), self.len()) };
    }
}

/// Calls `f(arg)` with the stack pointer at `top`, and returns to the current stack after.
///
/// # Safety
/// `top` must be the 16-byte aligned top of writable memory large enough for `f`, not in use;
/// `f` must not unwind.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn call_on_stack(top: *mut u8, arg: *mut c_void, f: extern "C" fn(*mut c_void)) {
    // SAFETY: r12 is callee-saved, so it still holds the old stack pointer when `f` returns;
    // `top` is aligned so that `call` leaves the callee's stack as the ABI requires;
    // clobber_abi("C") tells the compiler `f` may change every caller-saved register.
    unsafe {
        std::arch::asm!(
            "mov r12, rsp",
            "mov rsp, {top}",
            "call {f}",
            "mov rsp, r12",
            top = in(reg) top,
            f = in(reg) f,
            in("rdi") arg,
            out("r12") _,
            clobber_abi("C"),
        );
    }
}

/// Calls `f(arg)` with the stack pointer at `top`, and returns to the current stack after.
///
/// # Safety
/// As for the x86_64 version.
#[cfg(target_arch = "aarch64")]
pub(crate) unsafe fn call_on_stack(top: *mut u8, arg: *mut c_void, f: extern "C" fn(*mut c_void)) {
    // SAFETY: x20 is callee-saved, so it still holds the old stack pointer when `f` returns;
    // `top` is 16-byte aligned as AAPCS64 requires of sp; clobber_abi("C") covers x30 (lr)
    // and every other register `f` may change.
    unsafe {
        std::arch::asm!(
            "mov x20, sp",
            "mov sp, {top}",
            "blr {f}",
            "mov sp, x20",
            top = in(reg) top,
            f = in(reg) f,
            in("x0") arg,
            out("x20") _,
            clobber_abi("C"),
        );
    }
}

/// Proof that [`install`] made our stack the calling thread's alternate stack.
pub(crate) struct AltStackSwap {
    /// The alternate stack installed before ours (possibly disabled): put back at the end.
    previous: libc::stack_t,
    /// Our stack's lowest address, to recognise it.
    ours: *mut c_void,
}

/// Why the thread keeps the alternate stack it has.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Kept {
    /// It has one of its own (std's, or the host's) with room for a signal frame: left alone.
    HostStack,
    /// The thread is running on its alternate stack now (inside a signal handler).
    OnAlternateStack,
}

/// `getauxval` key of the kernel's minimum signal stack size (Linux ABI; not in the `libc`
/// crate for every target).
const AT_MINSIGSTKSZ: libc::c_ulong = 51;

/// The smallest host alternate stack the handler is started on: the kernel's signal frame on
/// this machine (`AT_MINSIGSTKSZ`, which grows with the CPU's register state: about 3.5 KiB
/// with AVX-512) plus 4 KiB for the handler's first frame and any frame nested below it.
pub(crate) fn min_host_stack() -> usize {
    // SAFETY: getauxval has no preconditions; 0 means "not provided".
    let kernel = unsafe { libc::getauxval(AT_MINSIGSTKSZ) } as usize;
    kernel.max(libc::MINSIGSTKSZ) + 4096
}

/// Makes `stack` the calling thread's alternate signal stack, unless the thread has one with
/// room for a signal frame ([`min_host_stack`]) or is running on its alternate stack now.
pub(crate) fn install(stack: &SignalStack) -> io::Result<Result<AltStackSwap, Kept>> {
    let mut previous = disabled();
    // SAFETY: a null new stack only queries; `previous` is ours to write.
    if unsafe { libc::sigaltstack(std::ptr::null(), &mut previous) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if previous.ss_flags & libc::SS_ONSTACK != 0 {
        return Ok(Err(Kept::OnAlternateStack));
    }
    if previous.ss_flags & libc::SS_DISABLE == 0 && previous.ss_size >= min_host_stack() {
        return Ok(Err(Kept::HostStack));
    }
    let ours = libc::stack_t {
        ss_sp: stack.stack_base().cast(),
        ss_flags: 0,
        ss_size: STACK_BYTES,
    };
    // SAFETY: `ours` describes memory mapped read-write for STACK_BYTES that outlives its use
    // as this thread's alternate stack (see `AltStackSwap::restore`).
    if unsafe { libc::sigaltstack(&ours, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Ok(AltStackSwap {
        previous,
        ours: ours.ss_sp,
    }))
}

impl AltStackSwap {
    /// Puts back the alternate stack the thread had before [`install`] (or none), if ours is
    /// still the one installed. Call on the same thread, after its slot pointer was cleared (so
    /// that a late SIGPROF returns at once). Returns false if the thread may still run on our
    /// stack (it is on it now, or the kernel would not say): then its memory must never be
    /// freed or reused.
    #[must_use]
    pub(crate) fn restore(self) -> bool {
        let mut now = disabled();
        // SAFETY: query only.
        if unsafe { libc::sigaltstack(std::ptr::null(), &mut now) } != 0 {
            return false;
        }
        if now.ss_sp != self.ours || now.ss_flags & libc::SS_DISABLE != 0 {
            return true; // replaced or disabled since (std does so at thread exit): not in use
        }
        if now.ss_flags & libc::SS_ONSTACK != 0 {
            return false; // cannot change it while running on it
        }
        let previous = if self.previous.ss_flags & libc::SS_DISABLE != 0 {
            disabled()
        } else {
            self.previous
        };
        // SAFETY: `previous` is what the kernel reported before we installed ours: disabled, or
        // the host's stack, which the host keeps mapped while the thread runs (std unmaps its
        // own only at thread exit, after disabling whatever is installed).
        if unsafe { libc::sigaltstack(&previous, std::ptr::null_mut()) } == 0 {
            return true;
        }
        let off = disabled();
        // SAFETY: disabling the alternate stack has no memory preconditions.
        unsafe { libc::sigaltstack(&off, std::ptr::null_mut()) == 0 }
    }
}

fn disabled() -> libc::stack_t {
    libc::stack_t {
        ss_sp: std::ptr::null_mut(),
        ss_flags: libc::SS_DISABLE,
        ss_size: 0,
    }
}

/// Measures the SIGPROF handler's stack use on the calling thread, for the overhead bench.
/// With `paint`, fills the thread's signal stack with a pattern and returns `Some(0)`; without,
/// returns how many bytes of it handlers have written since. `None` if the calling thread is
/// not registered or has no signal stack. Not public API.
#[doc(hidden)]
pub fn __signal_stack_use(paint: bool) -> Option<usize> {
    let slot = crate::slot::CURRENT_SLOT
        .try_with(std::cell::Cell::get)
        .ok()?;
    // SAFETY: a non-null CURRENT_SLOT points to this thread's live slot (see slot.rs).
    let slot = unsafe { slot.as_ref() }?;
    let stack = slot.signal_stack.as_ref()?;
    if paint {
        // SAFETY: on the thread whose alternate stack this is, outside the handler.
        unsafe { stack.paint() };
        Some(0)
    } else {
        // SAFETY: as above.
        Some(unsafe { stack.deepest_use() })
    }
}
