//! The process-wide unwinder the signal handler uses, and its safe replacement.
//!
//! The dump thread builds a framehop unwinder from the loaded objects' `.eh_frame` data (DWARF
//! CFI, which every Rust build with `panic = "unwind"` carries, so release builds need no
//! frame pointers) and publishes it through an atomic pointer. When objects are loaded or
//! unloaded it builds a new one, swaps it in, waits until no handler is still using the old one
//! (a count of handlers in flight), and frees it.
//!
//! [`walk`] is the unwind loop itself, shared by the signal handler (handler.rs) and the heap
//! sampler (heap/capture.rs); both hand it a read function that cannot fault.

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, MustNotAllocateDuringUnwind, Unwinder as _,
};

use crate::objects::{self, Generation};

/// The unwinder: section data owned in `Vec`s, no allocation while unwinding.
pub(crate) type Unwinder = framehop::UnwinderNative<Vec<u8>, MustNotAllocateDuringUnwind>;
/// Per-thread unwind rule cache, allocated at registration.
pub(crate) type Cache = framehop::CacheNative<MustNotAllocateDuringUnwind>;

/// What the handler knows about the loaded code: unwind tables and executable ranges.
pub(crate) struct CodeMap {
    pub unwinder: Unwinder,
    /// Segments of the loaded objects that are executable and readable, one range each (never
    /// merged: the gap between two segments may be unmapped), sorted by start.
    text: Vec<(u64, u64)>,
}

impl CodeMap {
    /// Whether `addr..addr+len` lies inside one readable, executable segment of a loaded
    /// object (as of the last refresh). Async-signal-safe: a binary search over a slice.
    #[inline]
    pub(crate) fn contains_code(&self, addr: u64, len: u64) -> bool {
        let i = self.text.partition_point(|&(start, _)| start <= addr);
        i > 0
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.text[i - 1].1)
    }
}

static CURRENT: AtomicPtr<CodeMap> = AtomicPtr::new(std::ptr::null_mut());

/// Address of the C library's signal return trampoline (`__restore_rt`, the `sa_restorer` it
/// gives every handler it installs), or 0 if unknown. A return address equal to it means the
/// frame above is the kernel's signal frame, which framehop does not step through; the handler
/// reads the interrupted registers from the `ucontext` there instead. x86_64 only.
static SIGRETURN: AtomicU64 = AtomicU64::new(0);

/// The mask that strips pointer-authentication bits from return addresses (aarch64), set once
/// at start from the highest user address known ([`note_highest_user_address`]).
static RETURN_ADDRESS_MASK: AtomicU64 = AtomicU64::new(u64::MAX);

/// Sets the return-address mask from an address known to be near the top of user space.
pub(crate) fn note_highest_user_address(addr: u64) {
    RETURN_ADDRESS_MASK.store(return_address_mask(addr), Ordering::Relaxed);
}

/// The return-address mask. Async-signal-safe: one atomic load.
#[cfg(target_arch = "aarch64")]
#[inline]
pub(crate) fn return_address_mask_now() -> u64 {
    RETURN_ADDRESS_MASK.load(Ordering::Relaxed)
}

/// framehop's registers for a walk from a frame with link register `lr`, stack pointer `sp`
/// and frame pointer `fp`, with return addresses (`lr` and those read from the stack) stripped
/// of pointer-authentication bits by the mask set at start. Async-signal-safe: one atomic
/// load.
#[cfg(target_arch = "aarch64")]
#[inline]
pub(crate) fn aarch64_regs(lr: u64, sp: u64, fp: u64) -> framehop::UnwindRegsNative {
    framehop::UnwindRegsNative::new_with_ptr_auth_mask(
        framehop::aarch64::PtrAuthMask(return_address_mask_now()),
        lr,
        sp,
        fp,
    )
}

/// Records the signal return trampoline (see [`SIGRETURN`]). x86_64 only: on aarch64 the
/// kernel returns through the vDSO's `__kernel_rt_sigreturn`, not an `sa_restorer`, so nothing
/// is recorded and [`sigreturn`] stays 0.
#[cfg(target_arch = "x86_64")]
pub(crate) fn note_sigreturn(addr: u64) {
    SIGRETURN.store(addr, Ordering::Relaxed);
}

/// The signal return trampoline, or 0. Async-signal-safe: one atomic load.
#[inline]
pub(crate) fn sigreturn() -> u64 {
    SIGRETURN.load(Ordering::Relaxed)
}
/// Users of the unwinder in flight, counted by the parity of [`EPOCH`] when they began: a
/// replaced unwinder is freed once the users of the epoch it was current in are gone, so a
/// steady stream of new users (signal handlers, heap samples) cannot hold it forever.
static IN_FLIGHT: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
/// Bumped by `refresh` after each swap of [`CURRENT`].
static EPOCH: AtomicUsize = AtomicUsize::new(0);
static BUILT_FOR: Mutex<Option<Generation>> = Mutex::new(None);

/// Held by the handler (or a heap sample) while it unwinds; keeps the current unwinder alive.
pub(crate) struct UnwinderUse(*const CodeMap, usize);

impl UnwinderUse {
    /// Async-signal-safe: atomic operations only; the loop repeats only if `refresh` swapped
    /// the unwinder in between (once per object load or unload).
    #[inline]
    pub(crate) fn begin() -> UnwinderUse {
        loop {
            let epoch = EPOCH.load(Ordering::SeqCst) & 1;
            IN_FLIGHT[epoch].fetch_add(1, Ordering::SeqCst);
            if EPOCH.load(Ordering::SeqCst) & 1 == epoch {
                return UnwinderUse(CURRENT.load(Ordering::SeqCst), epoch);
            }
            IN_FLIGHT[epoch].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The code map, if one was built.
    #[inline]
    pub(crate) fn get(&self) -> Option<&CodeMap> {
        // SAFETY: a non-null pointer came from `Box::into_raw` in `refresh`. `refresh` frees a
        // replaced unwinder only after the users counted in the epoch it was current in are
        // gone; this one was counted before it loaded the pointer, in an epoch in which that
        // pointer was (or had just been replaced as) current, so it is waited for.
        unsafe { self.0.as_ref() }
    }
}

impl Drop for UnwinderUse {
    #[inline]
    fn drop(&mut self) {
        IN_FLIGHT[self.1].fetch_sub(1, Ordering::SeqCst);
    }
}

fn build() -> (CodeMap, Generation) {
    let (objs, generation) = objects::loaded_objects(true);
    let mut unwinder = Unwinder::new();
    let mut text: Vec<(u64, u64)> = objs
        .iter()
        .flat_map(|o| o.readable_code.iter().map(|r| (r.start, r.end)))
        .collect();
    text.sort_unstable();
    for o in objs {
        let (Some((hdr_addr, hdr)), Some((eh_addr, eh))) = (o.eh_frame_hdr, o.eh_frame) else {
            continue;
        };
        let svma = |avma: u64, len: usize| avma - o.bias..avma - o.bias + len as u64;
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: Some(o.text.start - o.bias..o.text.end - o.bias),
            eh_frame_hdr_svma: Some(svma(hdr_addr, hdr.len())),
            eh_frame_svma: Some(svma(eh_addr, eh.len())),
            eh_frame_hdr: Some(hdr),
            eh_frame: Some(eh),
            ..ExplicitModuleSectionInfo::default()
        };
        unwinder.add_module(framehop::Module::new(o.path, o.text, o.bias, info));
    }
    (CodeMap { unwinder, text }, generation)
}

/// Builds the unwinder if none exists or objects were loaded/unloaded since the last build.
/// Called on the registering thread before its timers start, and by the dump thread.
pub(crate) fn refresh() {
    let mut built = BUILT_FOR.lock().unwrap_or_else(|e| e.into_inner());
    let now = objects::generation();
    if *built == Some(now) && !CURRENT.load(Ordering::SeqCst).is_null() {
        return;
    }
    let (map, generation) = build();
    *built = Some(generation);
    // Users counted under the other parity began before the previous refresh's bump; if that
    // refresh timed out waiting for them, some may hold what is current now. Wait for them
    // before replacing it (new users count under the other parity, so this only drains).
    let previous = wait_drained((EPOCH.load(Ordering::SeqCst) & 1) ^ 1);
    let old = CURRENT.swap(Box::into_raw(Box::new(map)), Ordering::SeqCst);
    if old.is_null() {
        return;
    }
    // Users that may have loaded `old` are counted under the epoch before this bump; users
    // that begin after it see the new pointer.
    let epoch = EPOCH.fetch_add(1, Ordering::SeqCst) & 1;
    if !(previous && wait_drained(epoch)) {
        crate::diagnostics::debug(format_args!(
            "unwinder still in use after 1 s; leaking the replaced one"
        ));
        return;
    }
    // SAFETY: `old` came from Box::into_raw and is no longer reachable through CURRENT; every
    // user that could hold it was counted under one of the two parities, both of which
    // drained after the swap.
    drop(unsafe { Box::from_raw(old) });
}

/// Waits up to 1 s for the users counted under `parity` to finish; whether they did.
fn wait_drained(parity: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    while IN_FLIGHT[parity].load(Ordering::SeqCst) != 0 {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

/// Walks the stack from `pc` and `regs`, passing each frame's lookup address (leaf first) to
/// `push` until it returns false; returns true then (the stack was deeper than the caller
/// keeps), false when the walk ended by itself. Every memory read goes through `read`. A
/// return into the signal return trampoline is a kernel signal frame (the thread was running
/// a signal handler): the walk goes on from the registers saved in it.
///
/// Async-signal-safe when `read` and `push` are: framehop evaluates the unwind rules with
/// fixed-size storage in `cache`, no allocation, no lock.
#[inline]
pub(crate) fn walk(
    map: &CodeMap,
    pc: u64,
    mut regs: framehop::UnwindRegsNative,
    read: &mut impl FnMut(u64) -> Result<u64, ()>,
    cache: &mut Cache,
    push: &mut impl FnMut(u64) -> bool,
) -> bool {
    let trampoline = sigreturn();
    let mut address = FrameAddress::from_instruction_pointer(pc);
    loop {
        if !push(address.address_for_lookup()) {
            return true;
        }
        let next = match map
            .unwinder
            .unwind_frame(address, &mut regs, cache, &mut *read)
        {
            Ok(Some(ra)) => ra,
            _ => return false,
        };
        // framehop strips pointer-authentication bits from the return addresses of the rules it
        // caches, but returns the value read from the stack as it is for a frame whose CFI it
        // evaluates in full (a frame over 256 KiB, a CFA not kept in sp or x29): strip it here.
        #[cfg(target_arch = "aarch64")]
        let next = next & return_address_mask_now();
        if next == trampoline && trampoline != 0 {
            let Some((ip, sp, bp)) = signal_frame(regs.sp(), &mut *read) else {
                return false;
            };
            regs = framehop::UnwindRegsNative::new(ip, sp, bp);
            address = FrameAddress::from_instruction_pointer(ip);
        } else {
            match FrameAddress::from_return_address(next) {
                Some(a) => address = a,
                None => return false,
            }
        }
    }
}

/// The interrupted `(ip, sp, bp)` saved in the kernel's signal frame whose `ucontext` starts at
/// `uc` (the stack pointer after returning into the trampoline), read through `read`.
#[cfg(target_arch = "x86_64")]
fn signal_frame(uc: u64, read: &mut impl FnMut(u64) -> Result<u64, ()>) -> Option<(u64, u64, u64)> {
    let gregs = uc.checked_add(std::mem::offset_of!(libc::ucontext_t, uc_mcontext) as u64)?;
    let reg = |r: libc::c_int| gregs.checked_add(r as u64 * 8);
    let ip = read(reg(libc::REG_RIP)?).ok()?;
    let sp = read(reg(libc::REG_RSP)?).ok()?;
    let bp = read(reg(libc::REG_RBP)?).ok()?;
    Some((ip, sp, bp))
}

/// Not followed on aarch64 (the trampoline is not recorded there): the walk ends.
#[cfg(target_arch = "aarch64")]
fn signal_frame(
    _uc: u64,
    _read: &mut impl FnMut(u64) -> Result<u64, ()>,
) -> Option<(u64, u64, u64)> {
    None
}

/// The mask that strips pointer-authentication bits from return addresses on aarch64: with PAC,
/// the bits above the highest user address bit hold a signature, so a signed `lr` does not
/// match any loaded object until they are cleared. `highest_user_address` is an address known
/// to be in user space near its top (the vDSO, which the kernel maps just below the stack,
/// or the main thread's stack top): every bit above its highest set bit is cleared. Pure, so
/// it is tested on every architecture.
pub(crate) fn return_address_mask(highest_user_address: u64) -> u64 {
    if highest_user_address == 0 {
        return u64::MAX;
    }
    u64::MAX >> highest_user_address.leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::{return_address_mask, CodeMap, Unwinder};

    #[test]
    fn code_reads_stay_inside_one_readable_executable_segment() {
        // Two segments of one object with an unmapped gap between them: never merged.
        let map = CodeMap {
            unwinder: Unwinder::new(),
            text: vec![(0x1000, 0x2000), (0x3000, 0x4000)],
        };
        assert!(map.contains_code(0x1000, 2));
        assert!(map.contains_code(0x1ffe, 2));
        assert!(!map.contains_code(0x1fff, 2), "runs past the first segment");
        assert!(!map.contains_code(0x2800, 2), "in the gap");
        assert!(map.contains_code(0x3ffc, 4));
        assert!(!map.contains_code(0x0fff, 2));
        assert!(!map.contains_code(u64::MAX - 1, 4), "wraps");
    }

    #[test]
    fn pointer_authentication_bits_are_stripped_below_the_highest_user_address() {
        // 48-bit address space (stack near 0x0000_ffff_....): the top 16 bits are the signature.
        let mask = return_address_mask(0x0000_ffff_a320_6000);
        assert_eq!(mask, (1 << 48) - 1);
        let signed = 0x002d_aaaa_b54f_7a44u64;
        assert_eq!(signed & mask, 0x0000_aaaa_b54f_7a44);
        // An unsigned address is unchanged.
        assert_eq!(0x0000_aaaa_b54f_7a44u64 & mask, 0x0000_aaaa_b54f_7a44);
        // 39-bit address space: the signature starts at bit 39.
        let mask39 = return_address_mask(0x0000_007f_f7ff_f000);
        assert_eq!(0x7f12_0055_5555_0010u64 & mask39, 0x0000_0055_5555_0010);
        // Nothing known: strip nothing.
        assert_eq!(return_address_mask(0), u64::MAX);
    }
}
