//! `tracing` spans as sample labels: a [`tracing_subscriber::Layer`] that, while a span is
//! entered on a registered thread, puts `span_name` (the innermost span's name) and the span
//! fields the user picked in force as labels, and optionally the local root span's id.
//!
//! Owns the layer and a per-thread stack of entered spans. It switches the thread's slot
//! context only through `task.rs` scopes and interns through `labels.rs`; the handler never
//! sees a span, only the ids in the slot.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::runtime;
use crate::task::{Scope, Switch};

/// Label carrying the innermost entered span's name.
pub const SPAN_NAME: &str = "span_name";

/// Not yet interned.
const UNSET: u32 = u32::MAX;

/// Deepest stack of entered spans kept per thread.
const MAX_ENTERED: usize = 256;

/// Makes samples carry the `tracing` spans they were taken in; see [`layer`].
#[derive(Clone, Debug, Default)]
pub struct SpanLayer {
    fields: Arc<[String]>,
    span_ids: bool,
}

/// A layer for `tracing_subscriber::registry().with(..)`: while a span is entered on a
/// registered thread, samples carry `span_name` (the innermost entered span) and the fields
/// chosen with [`SpanLayer::with_fields`] as labels. `tracing::Instrument` enters the span at
/// every poll, so `#[tracing::instrument] async fn` is covered with no other wrapper.
///
/// ```
/// use tracing_subscriber::prelude::*;
/// let subscriber = tracing_subscriber::registry()
///     .with(threadprof_runtime::tracing_layer().with_fields(["route"]));
/// # drop(subscriber);
/// ```
pub fn layer() -> SpanLayer {
    SpanLayer::default()
}

impl SpanLayer {
    /// Span fields to carry as labels too (a field's value is its `Display` for strings and
    /// numbers, its `Debug` otherwise). A field recorded later (`Span::record`) counts from the
    /// next time the span is entered. A field named like a label the profiler writes itself
    /// (`tag`, `thread_name`, `thread_id`, `state`, `span_id`, `span_name`) is left out, with
    /// a warning.
    pub fn with_fields<I, T>(mut self, fields: I) -> SpanLayer
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.fields = fields
            .into_iter()
            .map(Into::into)
            .filter(|f| {
                let reserved = f == SPAN_NAME || crate::labels::RESERVED_KEYS.contains(&&**f);
                if reserved {
                    crate::diagnostics::warn(
                        &format!("span-field:{f}"),
                        &format!(
                            "span field {f:?} is not carried as a label: the profiler writes a \
                             label of that name itself"
                        ),
                    );
                }
                !reserved
            })
            .collect();
        self
    }

    /// Whether samples also carry `span_id`: the id of the local root span (the outermost
    /// entered span of the trace in this process), 16 hex digits, the label Grafana Pyroscope
    /// uses to link span profiles. Span ids are unbounded, so they are kept only in HTTP
    /// profile windows (what a scraper ingests) and left out of the cumulative dumps.
    pub fn with_span_ids(mut self, on: bool) -> SpanLayer {
        self.span_ids = on;
        self
    }
}

/// What the layer keeps in a span's extensions.
struct SpanLabels {
    name: &'static str,
    fields: Vec<(&'static str, String)>,
    /// Interned label set of the pairs above, or `UNSET`.
    set: AtomicU32,
    /// Id of the local root span: unique in the process (`tracing`'s own span ids are slab
    /// indices, reused once a span closes).
    root: u64,
}

/// A new id for a local root span: a counter from a start that differs between processes.
fn new_root_id() -> u64 {
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = nanos ^ u64::from(std::process::id()).rotate_left(40);
        AtomicU64::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    });
    match next.fetch_add(1, Ordering::Relaxed) {
        0 => next.fetch_add(1, Ordering::Relaxed),
        id => id,
    }
}

struct FieldVisitor<'a> {
    wanted: &'a [String],
    fields: &'a mut Vec<(&'static str, String)>,
}

impl FieldVisitor<'_> {
    fn put(&mut self, field: &Field, value: String) {
        if !self.wanted.iter().any(|w| w == field.name()) {
            return;
        }
        match self.fields.iter_mut().find(|(k, _)| *k == field.name()) {
            Some(pair) => pair.1 = value,
            None => self.fields.push((field.name(), value)),
        }
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.to_string());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.to_string());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.wanted.iter().any(|w| w == field.name()) {
            self.put(field, format!("{value:?}"));
        }
    }
}

thread_local! {
    /// Spans entered on this thread while it was registered, innermost last, with the scope
    /// that puts back what was in force before each.
    static ENTERED: RefCell<Vec<(u64, Scope)>> = const { RefCell::new(Vec::new()) };
}

impl<S> tracing_subscriber::Layer<S> for SpanLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if span.extensions().get::<SpanLabels>().is_some() {
            // A second layer of ours in the same subscriber: the first one's record serves.
            return;
        }
        let mut fields = Vec::new();
        if !self.fields.is_empty() {
            attrs.record(&mut FieldVisitor {
                wanted: &self.fields,
                fields: &mut fields,
            });
        }
        let root = if self.span_ids {
            span.parent()
                .and_then(|p| p.extensions().get::<SpanLabels>().map(|l| l.root))
                .unwrap_or_else(new_root_id)
        } else {
            0
        };
        let labels = SpanLabels {
            name: attrs.metadata().name(),
            fields,
            set: AtomicU32::new(UNSET),
            root,
        };
        let mut ext = span.extensions_mut();
        if ext.get_mut::<SpanLabels>().is_none() {
            ext.insert(labels);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if self.fields.is_empty() {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(labels) = ext.get_mut::<SpanLabels>() {
            values.record(&mut FieldVisitor {
                wanted: &self.fields,
                fields: &mut labels.fields,
            });
            labels.set.store(UNSET, Ordering::Relaxed);
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(rt) = runtime::running() else { return };
        if !crate::task::registered_here() {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        // Copy out what is needed and let go of the extensions before interning: interning may
        // log, and a logger bridged into `tracing` may reach this span's extensions again.
        let (cached, pairs, root) = {
            let ext = span.extensions();
            let Some(labels) = ext.get::<SpanLabels>() else {
                return;
            };
            let cached = labels.set.load(Ordering::Relaxed);
            let pairs: Vec<(&'static str, String)> = if cached == UNSET {
                std::iter::once((SPAN_NAME, labels.name.to_owned()))
                    .chain(labels.fields.iter().cloned())
                    .collect()
            } else {
                Vec::new()
            };
            (cached, pairs, labels.root)
        };
        let set = if cached == UNSET {
            let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let set = rt.labels.intern(&refs);
            if let Some(labels) = span.extensions().get::<SpanLabels>() {
                labels.set.store(set, Ordering::Relaxed);
            }
            set
        } else {
            cached
        };
        let switch = Switch {
            tag: None,
            labels: set,
            span: (self.span_ids && root != 0).then_some(root),
        };
        let scope = Scope::enter(rt, switch, false);
        if scope.saved.is_some() {
            let _ = ENTERED.try_with(|e| {
                let mut entered = e.borrow_mut();
                if entered.len() >= MAX_ENTERED {
                    // Spans entered here and never exited here (exited on another thread, or
                    // leaked): forget the oldest rather than grow without bound. The next one
                    // puts back what it found instead.
                    let (_, mut oldest) = entered.remove(0);
                    if let Some((_, next)) = entered.first_mut() {
                        next.saved = oldest.saved.take();
                    }
                    oldest.saved = None;
                }
                entered.push((id.into_u64(), scope));
            });
        }
    }

    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        let id = id.into_u64();
        let _ = ENTERED.try_with(|e| {
            let mut entered = e.borrow_mut();
            let Some(i) = entered.iter().rposition(|(s, _)| *s == id) else {
                return;
            };
            let (_, mut scope) = entered.remove(i);
            if let Some((_, next)) = entered.get_mut(i) {
                // Exited out of order: the span entered after it now puts back what this one
                // found, and this one puts back nothing.
                next.saved = scope.saved.take();
            }
            drop(entered);
            drop(scope);
        });
    }
}
