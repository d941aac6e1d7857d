//! Tags and labels that follow the work: a future's polls run under its tag and labels on
//! whichever thread polls it ([`task`], [`labeled`]), synchronous code runs under labels
//! ([`with_labels`]), and a thread that polls such a future is registered for the rest of its
//! life ([`register_current_thread`]).
//!
//! Owns the per-poll switch of the thread's slot context. It touches the slot only through
//! `CURRENT_SLOT` on the calling thread (one relaxed load and store of the context word each
//! way, so switching costs a few nanoseconds), the registry only to intern tags and to
//! register a thread, and `labels.rs` to intern and merge label sets. Never the handler.

use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use crate::runtime::{self, Runtime};
use crate::slot::{ThreadSlot, CURRENT_SLOT};

thread_local! {
    /// Set once registering this thread for a future's polls was refused (profiling disabled
    /// or stopped), so later polls do not ask again.
    static REGISTRATION_REFUSED: Cell<bool> = const { Cell::new(false) };
}

/// What a scope switches to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Switch {
    /// The tag id to put in force, or `None` to keep the one in force.
    pub tag: Option<u32>,
    /// The label set to merge over the one in force.
    pub labels: u32,
    /// The span id to put in force, or `None` to keep the one in force.
    pub span: Option<u64>,
}

/// The calling thread's slot, if it is registered.
#[inline]
fn current_slot() -> *const ThreadSlot {
    CURRENT_SLOT
        .try_with(|c| c.get())
        .unwrap_or(std::ptr::null())
}

/// Whether the calling thread is registered.
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) fn registered_here() -> bool {
    !current_slot().is_null()
}

/// The base tag of a thread registered by a poll: its name as a safe tag.
fn base_tag() -> String {
    match std::thread::current().name() {
        Some(name) => crate::tag::sanitize(name),
        None => crate::tag::UNTAGGED.to_owned(),
    }
}

/// Registers the calling thread under its name, for the rest of its life, unless it was
/// refused before. Returns its slot (null if not registered).
fn register_for_life() -> *const ThreadSlot {
    if REGISTRATION_REFUSED.try_with(Cell::get).unwrap_or(true) {
        return std::ptr::null();
    }
    let slot = if register_current_thread(&base_tag()) {
        current_slot()
    } else {
        std::ptr::null()
    };
    if slot.is_null() {
        // Disabled, stopped, or registered without a slot (only while its registration is
        // being dropped): do not ask again at every poll.
        let _ = REGISTRATION_REFUSED.try_with(|r| r.set(true));
    }
    slot
}

/// What a [`Switch`] replaced, put back when it drops (on return or unwind).
#[must_use]
pub(crate) struct Scope {
    /// The bits of the context word it changed (tag: low half, labels: high half), their
    /// values before, and the span before if it set one; `None` if nothing was switched.
    /// Only what it changed is put back, so a tag set by a guard inside a label scope (or the
    /// other way round) is not undone by the other's end.
    pub saved: Option<Saved>,
    _not_send: PhantomData<*const ()>,
}

/// See [`Scope::saved`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Saved {
    mask: u64,
    bits: u64,
    span: Option<u64>,
}

impl Scope {
    pub(crate) const INERT: Scope = Scope {
        saved: None,
        _not_send: PhantomData,
    };

    /// Switches the calling thread's context. When the thread is not registered it is first
    /// registered for life if `register`, else nothing happens.
    #[inline]
    pub(crate) fn enter(rt: &Runtime, switch: Switch, register: bool) -> Scope {
        if crate::registry::in_forked_child() {
            // The parent's locks may be held forever here, and its runtime threads are gone.
            return Scope::INERT;
        }
        let mut slot = current_slot();
        if slot.is_null() && register {
            slot = register_for_life();
        }
        if slot.is_null() {
            return Scope::INERT;
        }
        // SAFETY: CURRENT_SLOT is non-null only while this thread's registration holds the
        // slot's `Arc` (it is cleared before that reference is released, on this thread), and
        // the reference is not kept past this function.
        let slot = unsafe { &*slot };
        let before = slot.context.load(Ordering::Relaxed);
        let labels = rt.labels.merge((before >> 32) as u32, switch.labels);
        let tag = switch.tag.unwrap_or(before as u32);
        let mut mask = 0;
        if switch.tag.is_some() {
            mask |= u64::from(u32::MAX);
        }
        if switch.labels != crate::labels::EMPTY {
            mask |= u64::from(u32::MAX) << 32;
        }
        slot.context
            .store(u64::from(tag) | u64::from(labels) << 32, Ordering::Relaxed);
        let span = switch
            .span
            .map(|span| slot.span.swap(span, Ordering::Relaxed));
        Scope {
            saved: Some(Saved {
                mask,
                bits: before & mask,
                span,
            }),
            _not_send: PhantomData,
        }
    }
}

impl Drop for Scope {
    #[inline]
    fn drop(&mut self) {
        let Some(saved) = self.saved else {
            return;
        };
        let slot = current_slot();
        if slot.is_null() {
            return;
        }
        // SAFETY: as in `enter`. If the registration that was in force at `enter` ended and
        // another began, this is the new one's slot: still this thread's, still live.
        let slot = unsafe { &*slot };
        if saved.mask != 0 {
            let now = slot.context.load(Ordering::Relaxed);
            slot.context
                .store((now & !saved.mask) | saved.bits, Ordering::Relaxed);
        }
        if let Some(span) = saved.span {
            slot.span.store(span, Ordering::Relaxed);
        }
    }
}

pin_project_lite::pin_project! {
    /// A future whose every poll runs under a tag and labels, on whichever thread polls it.
    ///
    /// Made by [`task`] and [`labeled`]. It owns its interned ids, so it is `Send + 'static`
    /// whenever the inner future is, and goes straight into `tokio::spawn`.
    #[must_use = "futures do nothing unless polled"]
    pub struct Profiled<F> {
        #[pin]
        inner: F,
        // The runtime is kept: after a shutdown, switching the slot's context is harmless.
        switch: Option<(&'static Runtime, Switch)>,
    }
}

impl<F> std::fmt::Debug for Profiled<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profiled")
            .field("switch", &self.switch.map(|(_, s)| s))
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for Profiled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Dropped after the inner poll, also when it unwinds: the context is put back.
        let _scope = match this.switch {
            Some((rt, switch)) => Scope::enter(rt, *switch, true),
            None => Scope::INERT,
        };
        this.inner.poll(cx)
    }
}

/// Interns `tag` and `labels` now (on the calling thread) for a [`Profiled`] future.
fn make<F>(tag: Option<&str>, labels: &[(&str, &str)], fut: F) -> Profiled<F> {
    let switch = runtime::active().map(|rt| {
        let switch = Switch {
            tag: tag.map(|t| rt.registry.intern_tag(t)),
            labels: rt.labels.intern(labels),
            span: None,
        };
        (rt, switch)
    });
    Profiled { inner: fut, switch }
}

/// Runs every poll of `fut` under `tag`, on whichever thread polls it.
///
/// The tag in force on the polling thread is put back when `poll` returns or unwinds. A tag
/// that is not a safe file name is sanitised with a warning, as for [`crate::spawn`]. A thread
/// that polls the future while not registered is registered for the rest of its life, under
/// its thread name (tokio's workers: `tokio-runtime-worker`), so a tokio runtime needs no
/// set-up. The tag is interned now, so the returned future owns it.
///
/// ```no_run
/// # async fn ingest() {}
/// # fn spawn<F>(_: F) {}
/// spawn(threadprof_runtime::task("ingest", ingest()));
/// ```
pub fn task<F: Future>(tag: &str, fut: F) -> Profiled<F> {
    make(Some(tag), &[], fut)
}

/// Runs every poll of `fut` with `labels` in force, merged over the labels in force on the
/// polling thread (an inner value wins per key). Like [`task`], it registers a thread that
/// polls it if needed, and interns the labels now.
pub fn labeled<F: Future>(labels: &[(&str, &str)], fut: F) -> Profiled<F> {
    make(None, labels, fut)
}

/// The tag and labels of one `#[profiled]` function: a `static` the attribute declares, so
/// they are interned once, at the function's first call, and every later call or poll only
/// switches ids. Not public API.
#[doc(hidden)]
pub struct CallSite {
    tag: &'static str,
    labels: &'static [(&'static str, &'static str)],
    /// Interned at the first call; `None` when profiling is disabled or stopped then.
    switch: std::sync::OnceLock<Option<(&'static Runtime, Switch)>>,
}

impl CallSite {
    /// A call site of `tag` and `labels` (nothing is interned yet).
    pub const fn new(tag: &'static str, labels: &'static [(&'static str, &'static str)]) -> Self {
        CallSite {
            tag,
            labels,
            switch: std::sync::OnceLock::new(),
        }
    }

    #[inline]
    fn switch(&self) -> Option<(&'static Runtime, Switch)> {
        if let Some(switch) = self.switch.get() {
            return *switch;
        }
        // Computed outside the cell: interning may log, and a logger that calls this function
        // again must not re-enter the cell's initialisation (a deadlock). Interning twice in a
        // race gives the same ids.
        if crate::diagnostics::reporting() {
            return None; // the logger on the runtime's behalf: do not cache that answer
        }
        let computed = runtime::active().map(|rt| {
            let switch = Switch {
                tag: Some(rt.registry.intern_tag(self.tag)),
                labels: rt.labels.intern(self.labels),
                span: None,
            };
            (rt, switch)
        });
        *self.switch.get_or_init(|| computed)
    }

    /// `#[profiled]` on an `async fn`: every poll of `fut` under this site's tag and labels.
    pub fn task<F: Future>(&'static self, fut: F) -> Profiled<F> {
        Profiled {
            inner: fut,
            switch: self.switch(),
        }
    }

    /// `#[profiled]` on a plain fn: this site's tag and labels in force on the calling thread
    /// until the scope drops (the thread is registered for the rest of its life if it was
    /// not, as by a poll).
    pub fn scope(&'static self) -> CallScope {
        let scope = match self.switch() {
            Some((rt, switch)) => Scope::enter(rt, switch, true),
            None => Scope::INERT,
        };
        CallScope { _scope: scope }
    }
}

/// The tag and labels of a `#[profiled]` plain fn, in force until dropped. Not public API.
#[doc(hidden)]
#[must_use]
pub struct CallScope {
    _scope: Scope,
}

/// Labels in force on the calling thread while a [`with_labels`] call or a `#[profiled]`
/// function runs; dropping it puts back the labels in force before.
#[must_use = "the labels are removed as soon as the scope is dropped"]
pub struct LabelScope {
    _scope: Scope,
}

impl std::fmt::Debug for LabelScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelScope")
            .field("active", &self._scope.saved.is_some())
            .finish()
    }
}

/// Puts `labels` in force on the calling thread (merged over those in force, an inner value
/// winning per key) until the scope drops. Does nothing on a thread that is not registered.
pub fn label_scope(labels: &[(&str, &str)]) -> LabelScope {
    if current_slot().is_null() {
        return LabelScope {
            _scope: Scope::INERT,
        };
    }
    let scope = match runtime::running() {
        Some(rt) => {
            let switch = Switch {
                tag: None,
                labels: rt.labels.intern(labels),
                span: None,
            };
            Scope::enter(rt, switch, false)
        }
        None => Scope::INERT,
    };
    LabelScope { _scope: scope }
}

/// Runs `f` with `labels` in force on the calling thread (merged over those in force, an
/// inner value winning per key), and puts the previous labels back when it returns or
/// unwinds. Every sample taken meanwhile carries them as pprof string labels. On a thread that
/// is not registered this just calls `f`.
///
/// ```no_run
/// let _guard = threadprof_runtime::enter("ingest");
/// let n = threadprof_runtime::with_labels(&[("route", "/ingest")], || 6 * 7);
/// assert_eq!(n, 42);
/// ```
pub fn with_labels<T>(labels: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
    let _scope = label_scope(labels);
    f()
}

/// Registers the calling thread under `tag` for the rest of its life: until it exits, not
/// until a guard drops. Made for `tokio::runtime::Builder::on_thread_start`, so that untagged
/// work on a pool's threads (runtime internals, hyper) is sampled too; futures wrapped by
/// [`task`] still switch to their own tag while polled. If the thread is registered already,
/// `tag` becomes its tag from now on, also after the guards in force drop (a task poll or
/// `#[profiled]` call in progress still puts back the tag it found). Calling it again costs
/// one registry lookup and keeps one registration. Returns whether the thread is registered
/// (false when profiling is disabled or stopped).
pub fn register_current_thread(tag: &str) -> bool {
    // The registration ends at thread exit (its thread-local destructor).
    runtime::active().is_some_and(|rt| rt.registry.register_for_life(tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_static<T: Send + 'static>(_: &T) {}

    #[test]
    fn wrappers_are_send_and_static_when_the_future_is() {
        let fut = async { 1 };
        let t = task("t", fut);
        assert_send_static(&t);
        let owned = String::from("dynamic");
        let l = labeled(&[("k", owned.as_str())], async { 2 });
        drop(owned);
        assert_send_static(&l);
    }
}
