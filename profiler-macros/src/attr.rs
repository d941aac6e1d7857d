//! Parsing the attribute's arguments: `tag = "..."` and `crate = "..."`, each at most once.

use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Error, LitStr, Token};

/// The parsed arguments, with the literal tokens kept for error spans.
#[derive(Default)]
pub(crate) struct Args {
    pub tag: Option<LitStr>,
    pub krate: Option<LitStr>,
}

struct Arg {
    key: syn::Ident,
    value: syn::Expr,
}

impl Parse for Arg {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let key = input.call(syn::ext::IdentExt::parse_any)?;
        if !input.peek(Token![=]) {
            return Err(Error::new_spanned(
                &key,
                format!("expected `{key} = \"...\"`: arguments are written `key = \"value\"`"),
            ));
        }
        input.parse::<Token![=]>()?;
        Ok(Arg {
            key,
            value: input.parse()?,
        })
    }
}

fn string_literal(arg: &Arg) -> syn::Result<LitStr> {
    match &arg.value {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => Ok(s.clone()),
        other => Err(Error::new_spanned(
            other,
            format!(
                "`{}` must be a string literal, e.g. `{} = \"ip_manager\"`; for a tag computed at \
                 run time use `threadprof::enter(&tag)` or `threadprof::spawn(&tag, ..)`",
                arg.key, arg.key
            ),
        )),
    }
}

impl Parse for Args {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut args = Args::default();
        let mut errors: Option<Error> = None;
        let mut push = |e: Error| match errors.as_mut() {
            Some(all) => all.combine(e),
            None => errors = Some(e),
        };
        for arg in Punctuated::<Arg, Token![,]>::parse_terminated(input)? {
            let slot = match arg.key.to_string().as_str() {
                "tag" => &mut args.tag,
                "crate" => &mut args.krate,
                other => {
                    push(Error::new_spanned(
                        &arg.key,
                        format!("unknown argument `{other}`; expected `tag = \"...\"` or `crate = \"...\"`"),
                    ));
                    continue;
                }
            };
            if slot.is_some() {
                push(Error::new_spanned(
                    &arg.key,
                    format!("`{}` is given more than once; keep one", arg.key),
                ));
                continue;
            }
            match string_literal(&arg) {
                Ok(lit) => *slot = Some(lit),
                Err(e) => push(e),
            }
        }
        match errors {
            Some(e) => Err(e),
            None => Ok(args),
        }
    }
}
