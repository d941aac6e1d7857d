//! Checks between parsing and expansion: the item is a supported function, the tag is a safe
//! file name, the labels are distinct and not the profiler's own, and the crate path parses.

use proc_macro2::Span;
use quote::ToTokens;
use syn::{Error, ItemFn};

use crate::attr::{Args, Attribute, Labels};

/// What expansion needs, all checked.
pub(crate) struct Checked {
    pub tag: syn::LitStr,
    /// `(key, value)` in the order written; keys are string literals spanned at the key.
    pub labels: Vec<(syn::LitStr, syn::LitStr)>,
    pub krate: syn::Path,
}

/// Label keys the profiler writes itself on every sample.
const RESERVED_LABEL_KEYS: [&str; 5] = ["tag", "thread_name", "thread_id", "state", "span_id"];

/// `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`: the tag names a file in the output directory.
pub(crate) fn tag_problem(tag: &str) -> Option<String> {
    if tag.is_empty() {
        return Some("the tag is empty".into());
    }
    if tag.len() > 64 {
        return Some(format!(
            "the tag is {} bytes long; at most 64 are allowed",
            tag.len()
        ));
    }
    if !tag.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some("the tag must start with an ASCII letter or digit".into());
    }
    if let Some(c) = tag
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "the tag contains {c:?}; only ASCII letters, digits, `.`, `_` and `-` are allowed"
        ));
    }
    None
}

fn check_labels(labels: Labels, errors: &mut Vec<Error>) -> Vec<(syn::LitStr, syn::LitStr)> {
    if labels.pairs.is_empty() {
        let mut written = labels.keyword.to_token_stream();
        labels.paren.surround(&mut written, |_| {});
        errors.push(Error::new_spanned(
            written,
            "`labels()` is empty; list at least one `key = \"value\"` pair or remove `labels()`",
        ));
    }
    let mut seen: Vec<String> = Vec::new();
    let mut checked = Vec::new();
    for label in labels.pairs {
        let key = label.key_name();
        if RESERVED_LABEL_KEYS.contains(&key.as_str()) {
            errors.push(Error::new_spanned(
                &label.key,
                format!(
                    "the label key `{key}` is reserved: the profiler writes its own `{key}` label \
                     on every sample; choose another key"
                ),
            ));
        } else if seen.contains(&key) {
            errors.push(Error::new_spanned(
                &label.key,
                format!("the label `{key}` is given more than once; keep one"),
            ));
        } else {
            checked.push((syn::LitStr::new(&key, label.key.span()), label.value));
        }
        seen.push(key);
    }
    checked
}

pub(crate) fn check(attribute: Attribute, args: Args, func: &ItemFn) -> syn::Result<Checked> {
    let sig = &func.sig;
    let mut errors: Vec<Error> = Vec::new();
    if let Some(c) = &sig.constness {
        let why = match attribute {
            Attribute::ProfiledThread => "registering a thread happens at run time",
            Attribute::Profiled => "a profiling scope is entered at run time",
        };
        errors.push(Error::new_spanned(
            c,
            format!(
                "{} cannot be used on a `const fn`: {why}; remove `const` or the attribute",
                attribute.name()
            ),
        ));
    }
    if let (Some(a), Attribute::ProfiledThread) = (&sig.asyncness, attribute) {
        errors.push(Error::new_spanned(
            a,
            "#[profiled_thread] marks a thread's entry function and cannot go on an `async fn` \
             (a future moves between threads); use #[profiled(tag = \"...\")] on async functions",
        ));
    }
    let tag = match args.tag {
        Some(lit) => {
            if let Some(problem) = tag_problem(&lit.value()) {
                errors.push(Error::new_spanned(
                    &lit,
                    format!("invalid tag: {problem}; tags name files, so they must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}"),
                ));
            }
            lit
        }
        None => {
            let name = sig.ident.to_string();
            let name = name.trim_start_matches("r#").to_string();
            if let Some(problem) = tag_problem(&name) {
                errors.push(Error::new_spanned(
                    &sig.ident,
                    format!(
                        "the function name cannot serve as the tag ({problem}); give one: {}",
                        match attribute {
                            Attribute::ProfiledThread => "#[profiled_thread(tag = \"name\")]",
                            Attribute::Profiled => "#[profiled(tag = \"name\")]",
                        }
                    ),
                ));
            }
            syn::LitStr::new(&name, sig.ident.span())
        }
    };
    let labels = match args.labels {
        Some(labels) => check_labels(labels, &mut errors),
        None => Vec::new(),
    };
    let krate = match args.krate {
        Some(lit) => match lit.parse::<syn::Path>() {
            Ok(p) => p,
            Err(_) => {
                errors.push(Error::new_spanned(
                    &lit,
                    "`crate` must be a path to the threadprof crate, e.g. `crate = \"my_profiler\"`",
                ));
                syn::parse_quote!(::threadprof)
            }
        },
        None => {
            syn::Path::from(syn::Ident::new("threadprof", Span::call_site())).with_leading_colon()
        }
    };
    match errors.into_iter().reduce(|mut a, b| {
        a.combine(b);
        a
    }) {
        Some(e) => Err(e),
        None => Ok(Checked { tag, labels, krate }),
    }
}

trait WithLeadingColon {
    fn with_leading_colon(self) -> Self;
}

impl WithLeadingColon for syn::Path {
    fn with_leading_colon(mut self) -> Self {
        self.leading_colon = Some(Default::default());
        self
    }
}
