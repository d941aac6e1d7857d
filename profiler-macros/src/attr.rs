//! Parsing the attributes' arguments: `tag = "..."` and `crate = "..."` for both attributes, and
//! `labels(key = "value", ...)` for `#[profiled]`, each at most once. Only the syntax is checked
//! here; what the values may be is `valid.rs`'s job.

use proc_macro2::TokenStream;
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{token, Error, Ident, LitStr, Token};

/// Which attribute is being expanded: it decides the accepted arguments and names itself in
/// error messages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Attribute {
    /// `#[profiled_thread]`: registers the thread running the function.
    ProfiledThread,
    /// `#[profiled]`: a scope (plain fn) or a task (async fn) with labels.
    Profiled,
}

impl Attribute {
    /// The attribute as the user writes it, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Attribute::ProfiledThread => "#[profiled_thread]",
            Attribute::Profiled => "#[profiled]",
        }
    }

    fn expected_arguments(self) -> &'static str {
        match self {
            Attribute::ProfiledThread => "`tag = \"...\"` or `crate = \"...\"`",
            Attribute::Profiled => {
                "`tag = \"...\"`, `labels(key = \"value\", ...)` or `crate = \"...\"`"
            }
        }
    }
}

/// The parsed arguments, with the literal tokens kept for error spans.
#[derive(Default)]
pub(crate) struct Args {
    pub tag: Option<LitStr>,
    pub labels: Option<Labels>,
    pub krate: Option<LitStr>,
}

/// `labels(key = "value", ...)` as written; `keyword` and `paren` locate an empty list.
pub(crate) struct Labels {
    pub keyword: Ident,
    pub paren: token::Paren,
    pub pairs: Vec<Label>,
}

/// One `key = "value"` pair. `key` may be a raw identifier (`r#type`) or a keyword (`type`).
pub(crate) struct Label {
    pub key: Ident,
    pub value: LitStr,
}

impl Label {
    /// The key as it goes into the profile: `r#type` is `type`.
    pub fn key_name(&self) -> String {
        self.key.unraw().to_string()
    }
}

/// How an argument was written after its name.
enum Form {
    /// `key = expr`
    Value(syn::Expr),
    /// `labels(...)`, parsed as a label list (only for `#[profiled]`).
    Labels(token::Paren, Punctuated<RawLabel, Token![,]>),
    /// `key(...)` anywhere else.
    List,
    /// `key` alone.
    Bare,
}

struct Arg {
    key: Ident,
    form: Form,
}

/// A label before its value is known to be a string literal.
struct RawLabel {
    key: Ident,
    value: syn::Expr,
}

fn parse_raw_label(input: ParseStream) -> syn::Result<RawLabel> {
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        return Err(Error::new_spanned(
            &lit,
            "label keys are identifiers, not string literals: write the key without quotes, \
             e.g. `region = \"eu\"`",
        ));
    }
    let key = input.call(Ident::parse_any)?;
    if !input.peek(Token![=]) {
        return Err(Error::new_spanned(
            &key,
            format!(
                "expected `{} = \"...\"`: labels are written `key = \"value\"`",
                key.unraw()
            ),
        ));
    }
    input.parse::<Token![=]>()?;
    Ok(RawLabel {
        key,
        value: input.parse()?,
    })
}

fn parse_arg(attribute: Attribute, input: ParseStream) -> syn::Result<Arg> {
    let key = input.call(Ident::parse_any)?;
    let form = if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        Form::Value(input.parse()?)
    } else if input.peek(token::Paren) {
        if attribute == Attribute::Profiled && key == "labels" {
            let content;
            let paren = syn::parenthesized!(content in input);
            Form::Labels(paren, content.parse_terminated(parse_raw_label, Token![,])?)
        } else {
            input.parse::<proc_macro2::Group>()?;
            Form::List
        }
    } else {
        Form::Bare
    };
    Ok(Arg { key, form })
}

fn string_literal(attribute: Attribute, key: &Ident, value: syn::Expr) -> syn::Result<LitStr> {
    match value {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => Ok(s),
        other => {
            let message = match (attribute, key.to_string().as_str()) {
                (Attribute::ProfiledThread, "tag") => {
                    "`tag` must be a string literal, e.g. `tag = \"ip_manager\"`; for a tag \
                     computed at run time use `threadprof::enter(&tag)` or \
                     `threadprof::spawn(&tag, ..)`"
                }
                (Attribute::Profiled, "tag") => {
                    "`tag` must be a string literal, e.g. `tag = \"load_user\"`: the tag is \
                     fixed when the function is compiled"
                }
                _ => {
                    "`crate` must be a string literal naming the threadprof crate, e.g. \
                      `crate = \"my_profiler\"`"
                }
            };
            Err(Error::new_spanned(other, message))
        }
    }
}

/// Appends to an optional combined error.
fn push(errors: &mut Option<Error>, e: Error) {
    match errors.as_mut() {
        Some(all) => all.combine(e),
        None => *errors = Some(e),
    }
}

fn labels(
    paren: token::Paren,
    keyword: Ident,
    raw: Punctuated<RawLabel, Token![,]>,
    errors: &mut Option<Error>,
) -> Labels {
    let mut pairs = Vec::new();
    for RawLabel { key, value } in raw {
        match value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(value),
                ..
            }) => pairs.push(Label { key, value }),
            other => {
                // A number or bool is suggested back in quotes; anything else gets a blank.
                let example = match &other {
                    syn::Expr::Lit(syn::ExprLit { lit, .. }) => match lit {
                        syn::Lit::Int(n) => n.base10_digits().to_owned(),
                        syn::Lit::Float(n) => n.base10_digits().to_owned(),
                        syn::Lit::Bool(b) => b.value.to_string(),
                        _ => "...".to_owned(),
                    },
                    _ => "...".to_owned(),
                };
                push(
                    errors,
                    Error::new_spanned(
                        other,
                        format!(
                            "the value of label `{k}` must be a string literal, e.g. \
                             `{k} = \"{example}\"`",
                            k = key.unraw()
                        ),
                    ),
                );
            }
        }
    }
    Labels {
        keyword,
        paren,
        pairs,
    }
}

/// Parses `attribute`'s arguments; every problem found is in the one combined error.
pub(crate) fn parse(attribute: Attribute, tokens: TokenStream) -> syn::Result<Args> {
    let parser = |input: ParseStream| {
        let mut list = Vec::new();
        while !input.is_empty() {
            list.push(parse_arg(attribute, input)?);
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(list)
    };
    let mut args = Args::default();
    let mut errors: Option<Error> = None;
    for Arg { key, form } in parser.parse2(tokens)? {
        let name = key.to_string();
        let given = match name.as_str() {
            "tag" => args.tag.is_some(),
            "crate" => args.krate.is_some(),
            "labels" if attribute == Attribute::Profiled => args.labels.is_some(),
            other => {
                push(
                    &mut errors,
                    Error::new_spanned(
                        &key,
                        format!(
                            "unknown argument `{other}`; expected {}",
                            attribute.expected_arguments()
                        ),
                    ),
                );
                continue;
            }
        };
        if given {
            push(
                &mut errors,
                Error::new_spanned(&key, format!("`{key}` is given more than once; keep one")),
            );
            continue;
        }
        match (name.as_str(), form) {
            ("labels", Form::Labels(paren, raw)) => {
                args.labels = Some(labels(paren, key, raw, &mut errors));
            }
            ("labels", _) => push(
                &mut errors,
                Error::new_spanned(
                    &key,
                    "expected `labels(key = \"value\", ...)`: labels are a list in parentheses",
                ),
            ),
            (_, Form::Value(value)) => match string_literal(attribute, &key, value) {
                Ok(lit) if name == "tag" => args.tag = Some(lit),
                Ok(lit) => args.krate = Some(lit),
                Err(e) => push(&mut errors, e),
            },
            (_, Form::Labels(..) | Form::List | Form::Bare) => push(
                &mut errors,
                Error::new_spanned(
                    &key,
                    format!("expected `{key} = \"...\"`: arguments are written `key = \"value\"`"),
                ),
            ),
        }
    }
    match errors {
        Some(e) => Err(e),
        None => Ok(args),
    }
}
