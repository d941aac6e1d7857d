//! `ThreadSlot`: everything the signal handler touches for one registered thread.
//!
//! The registering thread creates its slot (allocating the ring and the unwind cache up front)
//! and publishes a pointer to it in [`CURRENT_SLOT`], a thread-local the handler reads. Only
//! that thread's handler writes into the slot's handler state; the dump thread only drains the
//! ring. The pointer is cleared before the slot can be freed, and since the handler runs on the
//! same thread as the code that clears it, the handler never sees a dangling slot.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::buffer::{Context, SampleBuffer};
use crate::idle::IdleCredit;

/// Ring size per thread, in 64-bit words (256 KiB): about 1 s of deep stacks at 1000 Hz, while
/// the dump thread drains every 100 ms.
pub const BUFFER_WORDS: usize = 1 << 15;

thread_local! {
    /// The slot of this thread while it is registered, else null. Const-initialised and
    /// without a destructor, so reading it is a plain TLS load: async-signal-safe.
    pub(crate) static CURRENT_SLOT: Cell<*const ThreadSlot> = const { Cell::new(std::ptr::null()) };
}

/// State only the handler of the owning thread uses.
pub(crate) struct HandlerState {
    #[cfg(threadprof_sampling)]
    pub unwind_cache: Box<crate::unwind::Cache>,
    /// The thread's CPU time at its previous wall sample, in ns (for the `state` label).
    pub last_wall_cpu_ns: u64,
    /// Whether the previous wall sample found the thread blocked in a system call.
    pub last_wall_blocked: bool,
}

/// One registered thread's sampling state.
pub struct ThreadSlot {
    /// The sample ring. Declared (so dropped) before `signal_stack`, whose mapping may hold
    /// its memory.
    pub(crate) buffer: SampleBuffer,
    /// Tag id (low 32 bits) and label-set id (high 32 bits) in force, in one word so that the
    /// handler never sees one without the other. Written only by the owning thread (nested
    /// `enter`, task polls, label scopes); read by its handler.
    pub(crate) context: AtomicU64,
    /// Local root span id of the innermost entered `tracing` span (0 = none); written only by
    /// the owning thread.
    pub(crate) span: AtomicU64,
    /// Highest stack address of the thread (exclusive); reads above it are refused.
    pub(crate) stack_top: AtomicU64,
    /// Lowest stack address of the thread; a stack pointer below it is on another stack.
    pub(crate) stack_lo: AtomicU64,
    /// Whether this thread's handler may copy memory with `process_vm_readv` (see
    /// `stackread::copies_allowed_here`), decided at registration.
    pub(crate) copies: std::sync::atomic::AtomicBool,
    /// Samples whose stack was cut short because a read was refused (see `stackread.rs`).
    /// Written only by this thread's handler.
    pub(crate) cut_short: AtomicU64,
    /// The handler's alternate signal stack and read window (`None` if it could not be mapped:
    /// then the handler runs on the interrupted stack and foreign stacks are cut short).
    #[cfg(threadprof_sampling)]
    pub(crate) signal_stack: Option<crate::altstack::SignalStack>,
    /// Wall-clock sampling period in ns (0 when wall sampling is off).
    pub(crate) wall_period_ns: u64,
    /// The thread's wall account: the tick up to which its periods are recorded, and the
    /// periods credited while it stays blocked (see `idle.rs`).
    pub(crate) idle: IdleCredit,
    handler: UnsafeCell<HandlerState>,
}

// SAFETY: `handler` is only accessed by the signal handler running on the owning thread (see
// `handler_state`); every other field is atomic or immutable after construction.
unsafe impl Sync for ThreadSlot {}
// SAFETY: as above; moving the slot between threads moves no thread-affine data.
unsafe impl Send for ThreadSlot {}

impl ThreadSlot {
    /// A slot for the calling thread, with all memory the handler needs allocated now.
    /// `thread_cpu_ns` is the thread's CPU time now, the base of its first wall sample.
    pub(crate) fn new(
        tag: u32,
        stack: (u64, u64),
        wall_period_ns: u64,
        thread_cpu_ns: u64,
    ) -> ThreadSlot {
        #[cfg(threadprof_sampling)]
        let ring_bytes = BUFFER_WORDS * std::mem::size_of::<u64>();
        #[cfg(threadprof_sampling)]
        let signal_stack = match crate::altstack::SignalStack::new(ring_bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                crate::diagnostics::warn(
                    "signal-stack",
                    &format!(
                        "cannot map a signal stack for a registered thread ({e}); its samples \
                         run on its own stack"
                    ),
                );
                None
            }
        };
        // The ring lives in the signal stack's mapping when there is one (one mapping per
        // thread instead of two); `buffer` is declared before `signal_stack`, so it is dropped
        // first.
        #[cfg(threadprof_sampling)]
        let buffer = signal_stack.as_ref().and_then(|stack| {
            let (ptr, len) = stack.extra();
            // SAFETY: the extra region of a fresh mapping: zero-filled, read-write, used by
            // nothing else, and unmapped only when `signal_stack` drops, after `buffer`.
            (len >= ring_bytes)
                .then(|| unsafe { SampleBuffer::in_memory(ptr, BUFFER_WORDS) })
                .flatten()
        });
        #[cfg(not(threadprof_sampling))]
        let buffer: Option<SampleBuffer> = None;
        let buffer = buffer.unwrap_or_else(|| SampleBuffer::new(BUFFER_WORDS));
        // framehop builds the cache by value: on a fresh signal stack, not the caller's.
        #[cfg(threadprof_sampling)]
        let unwind_cache: Box<crate::unwind::Cache> = match &signal_stack {
            // SAFETY: the stack was just mapped; nothing uses it yet. Box::default does not
            // panic (an allocation failure aborts).
            Some(stack) => unsafe { stack.run_on(Box::default) },
            None => Box::default(),
        };
        ThreadSlot {
            buffer,
            context: AtomicU64::new(u64::from(tag)),
            span: AtomicU64::new(0),
            stack_top: AtomicU64::new(stack.1),
            stack_lo: AtomicU64::new(stack.0),
            cut_short: AtomicU64::new(0),
            copies: std::sync::atomic::AtomicBool::new(false),
            #[cfg(threadprof_sampling)]
            signal_stack,
            wall_period_ns,
            idle: IdleCredit::new(crate::idle::ticks_now()),
            handler: UnsafeCell::new(HandlerState {
                #[cfg(threadprof_sampling)]
                unwind_cache,
                last_wall_cpu_ns: thread_cpu_ns,
                last_wall_blocked: false,
            }),
        }
    }

    /// Prepares a slot that served a thread that has ended (and was fully drained) for the
    /// calling thread: same memory, fresh state. The unwind cache is kept: its entries are
    /// keyed by code address, not by thread.
    pub(crate) fn reuse(&mut self, tag: u32, stack: (u64, u64), thread_cpu_ns: u64) {
        self.buffer.clear();
        *self.context.get_mut() = u64::from(tag);
        *self.span.get_mut() = 0;
        *self.stack_top.get_mut() = stack.1;
        *self.stack_lo.get_mut() = stack.0;
        *self.cut_short.get_mut() = 0;
        self.idle.reset(crate::idle::ticks_now());
        let state = self.handler.get_mut();
        state.last_wall_cpu_ns = thread_cpu_ns;
        state.last_wall_blocked = false;
    }

    /// The handler's private state.
    ///
    /// # Safety
    /// Only the signal handler running on the thread that owns this slot may call this, and it
    /// must not hold two results at once. SIGPROF is blocked while its handler runs, so the
    /// handler cannot re-enter itself and no other code touches this state.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn handler_state(&self) -> &mut HandlerState {
        // SAFETY: exclusivity is the caller's contract above.
        unsafe { &mut *self.handler.get() }
    }

    /// Tag id in force.
    pub(crate) fn tag(&self) -> u32 {
        self.context.load(Ordering::Relaxed) as u32
    }

    /// Tag, labels and span in force (async-signal-safe: two relaxed loads).
    pub(crate) fn context(&self) -> Context {
        let word = self.context.load(Ordering::Relaxed);
        Context {
            tag: word as u32,
            labels: (word >> 32) as u32,
            span: self.span.load(Ordering::Relaxed),
        }
    }
}
