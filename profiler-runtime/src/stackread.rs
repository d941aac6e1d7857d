//! `StackReader`: every read of process memory the signal handler makes outside its own state.
//! None of them can fault, whatever stack the thread runs on and whatever its registers hold.
//!
//! - Direct: the interrupted thread's own stack above its stack pointer, `[sp, stack top)`, when
//!   `sp` lies inside the stack range taken at registration. That memory is mapped for as long
//!   as the thread runs (it has run on it), and the handler runs on that thread.
//! - Copied: every other address (a fiber's stack, a `stacker` segment, a host's alternate
//!   signal stack, a frame pointer aimed anywhere by code without unwind information) is
//!   copied with `process_vm_readv` on our own process, which reports an unmapped or
//!   unreadable page as `EFAULT` instead of raising SIGSEGV. Up to [`WINDOW_BYTES`] are copied
//!   at once, page by page (one `iovec` per 4 KiB, so a partial copy ends on a page boundary),
//!   into the slot's window, so a walk up a foreign stack costs one system call per window.
//! - A read that is refused (outside the own stack while on it) or fails (`EFAULT`, or
//!   `process_vm_readv` not permitted) ends the walk; the sample is counted as cut short.
//!
//! Instruction bytes at the interrupted pc (wall samples) are copied the same way
//! ([`read_bytes`]): an executable page may be unreadable, and a code range the dump thread
//! has not refreshed since a `dlclose` may be gone.
//!
//! Owns nothing: the window is memory of the slot's `SignalStack`. Touches: `getpid` and
//! `process_vm_readv`, both plain system calls (async-signal-safe).

use std::sync::Mutex;

use crate::altstack::WINDOW_BYTES;

/// Copies a walk may make per sample: a chain of garbage frame pointers cannot make one sample
/// copy more than this many windows.
const MAX_FILLS: u32 = 8;

/// Granularity of the copies: one `iovec` each, so a copy that stops early stops on one.
const CHUNK: u64 = 4096;
const CHUNKS: usize = WINDOW_BYTES / CHUNK as usize;

/// Reads for one unwind of one sample.
pub(crate) struct StackReader {
    /// `[sp, top)` of the thread's own stack, when `sp` is on it.
    own: Option<(u64, u64)>,
    window: *mut u8,
    window_base: u64,
    window_len: u64,
    fills: u32,
    /// Whether this thread may call `process_vm_readv` ([`copies_allowed_here`]).
    copies: bool,
    /// A read was refused or failed: the stack was cut short for safety.
    pub(crate) cut_short: bool,
}

impl StackReader {
    /// `stack` is the thread's stack range from registration (`lo == hi == 0` if unknown);
    /// `window` is [`WINDOW_BYTES`] of writable memory owned by this thread's handler (or
    /// null); `copies` says whether the thread may copy ([`copies_allowed_here`]).
    pub(crate) fn new(sp: u64, stack: (u64, u64), window: *mut u8, copies: bool) -> StackReader {
        let (lo, hi) = stack;
        StackReader {
            own: (lo <= sp && sp < hi).then_some((sp, hi)),
            window,
            window_base: 0,
            window_len: 0,
            fills: 0,
            copies,
            cut_short: false,
        }
    }

    /// The 8 bytes at `addr`, or `Err` (and the reader is marked cut short).
    pub(crate) fn read_u64(&mut self, addr: u64) -> Result<u64, ()> {
        let end = addr.checked_add(8).ok_or(())?;
        if let Some((sp, top)) = self.own {
            if addr >= sp && end <= top {
                // SAFETY: [sp, top) is this thread's stack above the interrupted frame: mapped
                // and readable while the thread runs, and this handler runs on that thread.
                return Ok(unsafe { (addr as *const u64).read_unaligned() });
            }
            // On its own stack, a thread's callers are on it too: anything else is garbage.
            self.cut_short = true;
            return Err(());
        }
        if !(addr >= self.window_base && end <= self.window_base + self.window_len) {
            self.fill(addr);
        }
        if addr >= self.window_base && end <= self.window_base + self.window_len {
            let at = (addr - self.window_base) as usize;
            // SAFETY: `at + 8 <= window_len <= WINDOW_BYTES`, inside the window, whose first
            // `window_len` bytes `fill` wrote.
            return Ok(unsafe { (self.window.add(at) as *const u64).read_unaligned() });
        }
        self.cut_short = true;
        Err(())
    }

    /// Copies up to [`WINDOW_BYTES`] starting at the 4 KiB boundary at or below `addr`; leaves
    /// the window empty without a window, when copies are off, or after [`MAX_FILLS`].
    fn fill(&mut self, addr: u64) {
        self.window_len = 0;
        if self.window.is_null() || !self.copies || self.fills >= MAX_FILLS {
            return;
        }
        self.fills += 1;
        let base = addr & !(CHUNK - 1);
        let mut remote = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; CHUNKS];
        let mut chunks = 0;
        for (i, iov) in remote.iter_mut().enumerate() {
            let Some(start) = base.checked_add(i as u64 * CHUNK) else {
                break;
            };
            if start.checked_add(CHUNK).is_none() {
                break;
            }
            iov.iov_base = start as *mut libc::c_void;
            iov.iov_len = CHUNK as usize;
            chunks += 1;
        }
        let local = libc::iovec {
            iov_base: self.window.cast(),
            iov_len: chunks * CHUNK as usize,
        };
        self.window_base = base;
        // SAFETY: `local` is the window (WINDOW_BYTES >= chunks * CHUNK, writable, ours);
        // `remote` holds `chunks` valid iovecs. The kernel checks the remote ranges and fails
        // with EFAULT instead of faulting.
        let copied = unsafe { vm_readv(&local, &remote[..chunks]) };
        self.window_len = copied;
    }
}

/// Copies `out.len()` bytes at `addr` into `out`; false if any of them is unreadable, or the
/// thread may not copy (`copies`, from [`copies_allowed_here`]).
pub(crate) fn read_bytes(addr: u64, out: &mut [u8], copies: bool) -> bool {
    if !copies {
        return false;
    }
    let local = libc::iovec {
        iov_base: out.as_mut_ptr().cast(),
        iov_len: out.len(),
    };
    let remote = [libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: out.len(),
    }];
    // SAFETY: `local` is `out`, writable and ours; the kernel checks the remote range.
    unsafe { vm_readv(&local, &remote) == out.len() as u64 }
}

/// `process_vm_readv` on this process; bytes copied (0 on any error).
///
/// # Safety
/// `local` must describe writable memory of at least the total length of `remote`.
unsafe fn vm_readv(local: &libc::iovec, remote: &[libc::iovec]) -> u64 {
    // SAFETY: getpid has no preconditions. (Asked each time: a forked child has a new pid; a
    // raw system call, as the probe's child has no usable C library state.)
    let pid = unsafe { libc::syscall(libc::SYS_getpid) };
    // SAFETY: the caller guarantees `local`; `remote` is a valid slice of iovecs.
    let r = unsafe {
        libc::syscall(
            libc::SYS_process_vm_readv,
            pid,
            local as *const libc::iovec,
            1usize,
            remote.as_ptr(),
            remote.len(),
            0usize,
        )
    };
    u64::try_from(r).unwrap_or(0)
}

/// Whether the calling thread may use `process_vm_readv`. Asked at registration, on the thread
/// that will be sampled: seccomp filters belong to threads, and a filter may kill the process
/// (or raise SIGSYS) on a call it does not allow instead of failing it.
///
/// The thread's seccomp state is read from `/proc/thread-self/status` (not asked with `prctl`,
/// which strict sandboxes forbid too). Under no filter, one direct try per process answers.
/// Under filters, a try in a child process answers, once per number of filters in force (the
/// usual case: one filter set at start, shared by every thread; a filter added later changes
/// the count). The child is a raw `clone` (no `atfork` handler of the host runs; exit signal 0,
/// so no SIGCHLD reaches the host and no reaper of the host can take it), puts SIGSYS back to
/// its default action, tries, and exits with the answer. Unreadable `/proc`: no copies.
///
/// Without copies, stacks outside the thread's own stack are cut short at their first frame,
/// and wall samples cannot tell a blocked thread from a running one. The answer is kept for the
/// thread's later registrations (reading `/proc` costs more than the rest of a registration),
/// so a filter a thread installs after its first registration is not seen: sandbox a thread
/// before registering it.
pub(crate) fn copies_allowed_here() -> bool {
    thread_local! {
        static ANSWER: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
    }
    let cached = ANSWER.try_with(std::cell::Cell::get).ok().flatten();
    if let Some(ok) = cached {
        return ok;
    }
    let ok = copies_allowed_uncached();
    let _ = ANSWER.try_with(|a| a.set(Some(ok)));
    ok
}

fn copies_allowed_uncached() -> bool {
    /// Answers so far, by number of filters in force (0: no filter, tried directly).
    static BY_FILTER_COUNT: Mutex<Vec<(u64, bool)>> = Mutex::new(Vec::new());
    let Some(filters) = seccomp_filters() else {
        return false;
    };
    let mut known = BY_FILTER_COUNT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&(_, ok)) = known.iter().find(|(n, _)| *n == filters) {
        return ok;
    }
    let ok = if filters == 0 {
        probe()
    } else {
        probe_in_child()
    };
    known.push((filters, ok));
    ok
}

/// The number of seccomp filters in force on the calling thread (0 when it is not filtered),
/// from its `/proc` status.
fn seccomp_filters() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if field("Seccomp:")? == 0 {
        return Some(0);
    }
    // `Seccomp_filters` exists since Linux 5.9; before, count every filtered thread as one.
    Some(field("Seccomp_filters:").unwrap_or(1).max(1))
}

/// One copy of a known value from our own memory, with raw system calls only.
fn probe() -> bool {
    let value = 0x5eed_u64;
    let mut out = [0u8; 8];
    let local = libc::iovec {
        iov_base: out.as_mut_ptr().cast(),
        iov_len: 8,
    };
    let remote = [libc::iovec {
        iov_base: std::ptr::addr_of!(value) as *mut libc::c_void,
        iov_len: 8,
    }];
    // SAFETY: `local` is `out` (8 writable bytes); `remote` names `value`.
    let copied = unsafe { vm_readv(&local, &remote) };
    copied == 8 && u64::from_ne_bytes(out) == value
}

/// [`probe`] in a child process: true only if it exited normally with success.
fn probe_in_child() -> bool {
    // SAFETY: a raw fork (clone with exit signal 0): the child runs only raw system calls and
    // `probe` (stack only), then leaves with exit_group, touching no lock or C library state of
    // the parent's threads.
    let pid = unsafe { libc::syscall(libc::SYS_clone, 0 as libc::c_long, 0, 0, 0, 0) };
    if pid == 0 {
        // A trapping filter raises SIGSYS: let it end the child, whatever handler the host has.
        // SAFETY: a raw rt_sigaction with SIG_DFL (a kernel sigaction of zeroes) for SIGSYS.
        unsafe {
            let dfl = [0u64; 4];
            libc::syscall(
                libc::SYS_rt_sigaction,
                libc::SIGSYS,
                dfl.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            );
        }
        let code = if probe() { 0 } else { 1 };
        // SAFETY: ends the child at once.
        unsafe { libc::syscall(libc::SYS_exit_group, code) };
        // exit_group does not return; stop here whatever happens.
        loop {
            std::hint::spin_loop();
        }
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid < 0 {
        return false;
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child (`__WCLONE`: its exit signal is not SIGCHLD).
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WCLONE) };
        if r == pid {
            return libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_read_mapped_memory_and_refuse_unmapped_pages() {
        assert!(probe());
        assert!(probe_in_child(), "the probe in a child process agrees");
        assert!(copies_allowed_here());
        // A readable page followed by an inaccessible one, in the system's page size (16 or
        // 64 KiB on some aarch64 kernels, where `mprotect` of a 4 KiB range fails).
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        assert!(page >= 4096);
        // SAFETY: a fresh anonymous mapping of two pages, unmapped at the end of the test.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        let base = map as u64;
        // SAFETY: inside the first page of the mapping.
        unsafe { ((base + page - 8) as *mut u64).write(0x1122_3344_5566_7788) };
        // SAFETY: the second page of our mapping.
        let protected =
            unsafe { libc::mprotect((base + page) as *mut _, page as usize, libc::PROT_NONE) };
        assert_eq!(protected, 0);
        let mut window = vec![0u8; WINDOW_BYTES];
        let mut r = StackReader::new(base, (0, 0), window.as_mut_ptr(), true);
        assert_eq!(r.read_u64(base + page - 8), Ok(0x1122_3344_5566_7788));
        assert!(!r.cut_short);
        assert_eq!(r.read_u64(base + page), Err(()), "PROT_NONE page");
        assert!(r.cut_short);
        let mut r = StackReader::new(base, (0, 0), window.as_mut_ptr(), true);
        assert_eq!(r.read_u64(8), Err(()), "null page");
        assert_eq!(r.read_u64(u64::MAX - 3), Err(()), "wraps");
        let mut two = [0u8; 2];
        assert!(
            !read_bytes(base + page - 1, &mut two, true),
            "straddles into PROT_NONE"
        );
        assert!(read_bytes(base + page - 2, &mut two, true));
        assert!(!read_bytes(base + page - 2, &mut two, false), "copies off");
        let mut r = StackReader::new(base, (0, 0), window.as_mut_ptr(), false);
        assert_eq!(r.read_u64(base + page - 8), Err(()), "copies off");
        let mut r = StackReader::new(base, (0, 0), std::ptr::null_mut(), true);
        assert_eq!(r.read_u64(base + page - 8), Err(()), "no window");
        // SAFETY: our mapping, unmapped once.
        unsafe { libc::munmap(map, 2 * page as usize) };
    }

    #[test]
    fn on_its_own_stack_only_memory_above_sp_is_read() {
        let words = [7u64, 8, 9, 10];
        let sp = words.as_ptr() as u64;
        let top = sp + 32;
        let mut window = vec![0u8; WINDOW_BYTES];
        let mut r = StackReader::new(sp, (sp - 4096, top), window.as_mut_ptr(), true);
        assert_eq!(r.read_u64(sp + 8), Ok(8));
        assert_eq!(r.read_u64(sp + 24), Ok(10));
        assert!(!r.cut_short);
        assert_eq!(r.read_u64(sp - 8), Err(()), "below sp");
        assert!(r.cut_short);
        let mut r = StackReader::new(sp, (sp - 4096, top), window.as_mut_ptr(), true);
        assert_eq!(r.read_u64(top - 4), Err(()), "crosses the top");
    }
}
