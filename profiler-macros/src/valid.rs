//! Checks between parsing and expansion: the item is a supported function, the tag is a safe
//! file name, and the crate path parses.

use proc_macro2::Span;
use syn::{Error, ItemFn};

use crate::attr::Args;

/// What expansion needs, all checked.
pub(crate) struct Checked {
    pub tag: syn::LitStr,
    pub krate: syn::Path,
}

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

pub(crate) fn check(args: Args, func: &ItemFn) -> syn::Result<Checked> {
    let sig = &func.sig;
    let mut errors: Vec<Error> = Vec::new();
    if let Some(c) = &sig.constness {
        errors.push(Error::new_spanned(
            c,
            "#[profiled_thread] cannot be used on a `const fn`: registering a thread happens at run time; remove `const` or the attribute",
        ));
    }
    if let Some(a) = &sig.asyncness {
        errors.push(Error::new_spanned(
            a,
            "#[profiled_thread] does not support `async fn` yet: a future can move between threads; \
             inside the function, hold `let _guard = threadprof::enter(\"tag\");` only across code that stays on one thread",
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
                    format!("the function name cannot serve as the tag ({problem}); give one: #[profiled_thread(tag = \"name\")]"),
                ));
            }
            syn::LitStr::new(&name, sig.ident.span())
        }
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
        None => Ok(Checked { tag, krate }),
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
