//! Code generation. `#[profiled_thread]` and `#[profiled]` on a plain fn insert one guard
//! statement at the top of the body and change nothing else; `#[profiled]` on an `async fn`
//! keeps the signature and moves the body into an `async move` block wrapped by
//! `CallSite::task`. `#[profiled]` declares a `static __THREADPROF_SITE: __private::CallSite`
//! holding its tag and labels, interned at the first call.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Error, ItemFn, PathArguments, ReturnType, Type, TypeParamBound};

use crate::attr::{self, Attribute};
use crate::valid;

/// On error: the original item plus `compile_error!`, so the user sees one precise error and
/// tools still see the function.
fn with_error(item: TokenStream, error: Error) -> TokenStream {
    let error = error.to_compile_error();
    quote! { #item #error }
}

fn not_a_function(attribute: Attribute, item: &TokenStream) -> Error {
    let name = attribute.name();
    if syn::parse2::<syn::TraitItemFn>(item.clone()).is_ok() {
        return Error::new_spanned(
            item,
            format!(
                "{name} needs a function body; annotate the trait method's implementation instead"
            ),
        );
    }
    let what = match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Struct(_)) => "a struct",
        Ok(syn::Item::Enum(_)) => "an enum",
        Ok(syn::Item::Impl(_)) => "an impl block",
        Ok(syn::Item::Mod(_)) => "a module",
        Ok(syn::Item::Trait(_)) => "a trait",
        _ => "this item",
    };
    Error::new_spanned(
        item,
        format!("{name} goes on a function with a body, not on {what}"),
    )
}

pub(crate) fn profiled_thread(args: TokenStream, item: TokenStream) -> TokenStream {
    attribute(Attribute::ProfiledThread, args, item)
}

pub(crate) fn profiled(args: TokenStream, item: TokenStream) -> TokenStream {
    attribute(Attribute::Profiled, args, item)
}

/// Parse, validate, expand; any error returns the item unchanged beside `compile_error!`.
fn attribute(attribute: Attribute, args: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => return with_error(item.clone(), not_a_function(attribute, &item)),
    };
    let args = match attr::parse(attribute, args) {
        Ok(a) => a,
        Err(e) => return with_error(item, e),
    };
    let checked = match valid::check(attribute, args, &func) {
        Ok(checked) => checked,
        Err(e) => return with_error(item, e),
    };
    match attribute {
        Attribute::ProfiledThread => thread_guard(func, checked),
        Attribute::Profiled if func.sig.asyncness.is_some() => task(func, checked),
        Attribute::Profiled => scope_guard(func, checked),
    }
}

/// `let <mixed-site name> = <init>;` as the body's first statement. Mixed-site hygiene: the
/// guard's name cannot clash with the user's identifiers.
fn insert_guard(mut func: ItemFn, name: &str, init: TokenStream) -> TokenStream {
    let guard = syn::Ident::new(name, Span::mixed_site());
    let stmt: syn::Stmt = syn::parse_quote! {
        let #guard = #init;
    };
    func.block.stmts.insert(0, stmt);
    quote! { #func }
}

fn thread_guard(func: ItemFn, checked: valid::Checked) -> TokenStream {
    let valid::Checked { tag, krate, .. } = checked;
    insert_guard(
        func,
        "__threadprof_thread_guard",
        quote! { #krate::__private::enter(#tag) },
    )
}

/// `&[("key", "value"), ...]`
fn label_slice(labels: &[(syn::LitStr, syn::LitStr)]) -> TokenStream {
    let pairs = labels.iter().map(|(k, v)| quote! { (#k, #v) });
    quote! { &[#(#pairs),*] }
}

/// `static __THREADPROF_SITE: CallSite = CallSite::new(tag, labels);`: the tag and labels of
/// one annotated function, interned once (at its first call), not at every call.
fn call_site(
    krate: &syn::Path,
    tag: &syn::LitStr,
    labels: &[(syn::LitStr, syn::LitStr)],
) -> TokenStream {
    let labels = label_slice(labels);
    quote! {
        static __THREADPROF_SITE: #krate::__private::CallSite =
            #krate::__private::CallSite::new(#tag, #labels);
    }
}

fn scope_guard(func: ItemFn, checked: valid::Checked) -> TokenStream {
    let valid::Checked { tag, labels, krate } = checked;
    let site = call_site(&krate, &tag, &labels);
    insert_guard(
        func,
        "__threadprof_scope",
        quote! { { #site __THREADPROF_SITE.scope() } },
    )
}

/// The body of an `async fn` becomes
/// `{ static SITE = CallSite::new(tag, labels); SITE.task(async move { <output type hint> <body> }).await }`.
///
/// The `async move` block captures the parameters (`self` included) the body uses, which the
/// `async fn` has already moved into its own future, so borrows and moves behave as before.
/// `return` and `?` in the body now leave the block, whose value is the function's value.
fn task(mut func: ItemFn, checked: valid::Checked) -> TokenStream {
    let valid::Checked { tag, labels, krate } = checked;
    let site = call_site(&krate, &tag, &labels);
    let hint = output_type_hint(&func.sig);
    let stmts = &func.block.stmts;
    // Spanned at the body, so that rustc's notes about the block (e.g. "this function should
    // return `Result` to accept `?`") point at the user's code, not at the attribute.
    let block = quote_spanned! {func.block.brace_token.span.join()=>
        async move {
            #hint
            #(#stmts)*
        }
    };
    *func.block = syn::parse_quote! {{
        #site
        __THREADPROF_SITE.task(#block).await
    }};
    quote! { #func }
}

/// An unreachable `return` of the declared output type, first in the async block. Without it
/// the block's output type is inferred from the body alone, later than in the `async fn`: the
/// declared type no longer guides coercions, so `if c { return Box::new(1); } Box::new("x")`
/// for a `Box<dyn Display>`, or `Ok(Box::new(|x| x + 1))` for a `Box<dyn Fn(u32) -> u32>`,
/// stop compiling. `impl Trait` cannot be named in a `let`, so it becomes `_`; a `!` output
/// (an unstable type outside return position) gets no hint, and needs none.
fn output_type_hint(sig: &syn::Signature) -> Option<TokenStream> {
    let (ty, span) = match &sig.output {
        ReturnType::Default => (quote! { () }, sig.ident.span()),
        ReturnType::Type(_, ty) if matches!(**ty, Type::Never(_)) => return None,
        ReturnType::Type(_, ty) => {
            let mut erased = (**ty).clone();
            erase_impl_trait(&mut erased);
            (quote! { #erased }, ty.span())
        }
    };
    // Mixed-site so it cannot clash with the user's names; located at the return type, where
    // rustc's "return type inferred to be ... here" note then points.
    let output = syn::Ident::new("__threadprof_output", Span::mixed_site().located_at(span));
    Some(quote_spanned! {span=>
        #[allow(
            unreachable_code,
            clippy::diverging_sub_expression,
            clippy::empty_loop,
            clippy::let_unit_value,
            clippy::let_with_type_underscore
        )]
        if false {
            let #output: #ty = loop {};
            return #output;
        }
    })
}

/// Replaces every `impl Trait` in a return type with `_`, wherever a return type may hold one:
/// generic arguments, associated-type bindings (also of `dyn Trait`), tuples, references,
/// pointers, arrays and slices.
fn erase_impl_trait(ty: &mut Type) {
    match ty {
        Type::ImplTrait(t) => {
            *ty = Type::Infer(syn::TypeInfer {
                underscore_token: syn::Token![_](t.span()),
            });
        }
        Type::Array(t) => erase_impl_trait(&mut t.elem),
        Type::Group(t) => erase_impl_trait(&mut t.elem),
        Type::Paren(t) => erase_impl_trait(&mut t.elem),
        Type::Ptr(t) => erase_impl_trait(&mut t.elem),
        Type::Reference(t) => erase_impl_trait(&mut t.elem),
        Type::Slice(t) => erase_impl_trait(&mut t.elem),
        Type::Tuple(t) => t.elems.iter_mut().for_each(erase_impl_trait),
        Type::Path(t) => {
            if let Some(qself) = &mut t.qself {
                erase_impl_trait(&mut qself.ty);
            }
            erase_in_path(&mut t.path);
        }
        Type::TraitObject(t) => {
            for bound in &mut t.bounds {
                if let TypeParamBound::Trait(bound) = bound {
                    erase_in_path(&mut bound.path);
                }
            }
        }
        _ => {}
    }
}

fn erase_in_path(path: &mut syn::Path) {
    for segment in &mut path.segments {
        if let PathArguments::AngleBracketed(args) = &mut segment.arguments {
            for arg in &mut args.args {
                match arg {
                    syn::GenericArgument::Type(t) => erase_impl_trait(t),
                    syn::GenericArgument::AssocType(a) => erase_impl_trait(&mut a.ty),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(args: &str, item: &str) -> String {
        profiled_thread(args.parse().unwrap(), item.parse().unwrap()).to_string()
    }

    #[test]
    fn inserts_one_guard_and_keeps_the_body() {
        let item = "pub fn f<T: Copy>(x: T) -> Result<T, ()> where T: Send { let y = x; if false { return Err(()); } Ok(y) }";
        let out: ItemFn = syn::parse_str(&expand_str("tag = \"ip_manager\"", item)).unwrap();
        let original: ItemFn = syn::parse_str(item).unwrap();
        assert_eq!(out.sig, original.sig);
        assert_eq!(out.attrs, original.attrs);
        assert_eq!(out.block.stmts.len(), original.block.stmts.len() + 1);
        assert_eq!(&out.block.stmts[1..], &original.block.stmts[..]);
        let guard = out.block.stmts[0].clone();
        let guard = quote!(#guard).to_string();
        assert!(
            guard.contains(":: threadprof :: __private :: enter (\"ip_manager\")"),
            "{guard}"
        );
    }

    #[test]
    fn default_tag_is_the_function_name_and_crate_can_be_renamed() {
        let out = expand_str("crate = \"my_prof\"", "fn run_ip_monitor() {}");
        assert!(
            out.contains("my_prof :: __private :: enter (\"run_ip_monitor\")"),
            "{out}"
        );
    }

    #[test]
    fn errors_keep_the_item() {
        let out = expand_str("tag = \"../x\"", "fn keep_me() {}");
        assert!(
            out.contains("compile_error") && out.contains("fn keep_me"),
            "{out}"
        );
    }

    fn profiled_str(args: &str, item: &str) -> String {
        profiled(args.parse().unwrap(), item.parse().unwrap()).to_string()
    }

    /// Tokens without whitespace: spacing in `to_string` depends on how a token was made.
    fn squash(code: &str) -> String {
        code.parse::<TokenStream>()
            .unwrap()
            .to_string()
            .split_whitespace()
            .collect()
    }

    /// The output of a failed expansion: the item exactly as it came in, then `compile_error!`s.
    fn split_error_output(out: &str) -> (ItemFn, Vec<String>) {
        let file: syn::File = syn::parse_str(out).unwrap();
        let mut items = file.items.into_iter();
        let Some(syn::Item::Fn(func)) = items.next() else {
            panic!("the item does not come first: {out}");
        };
        let errors = items
            .map(|item| match item {
                syn::Item::Macro(m)
                    if m.mac.path.segments.last().unwrap().ident == "compile_error" =>
                {
                    m.mac.tokens.to_string()
                }
                other => panic!("unexpected item {}", quote!(#other)),
            })
            .collect();
        (func, errors)
    }

    #[test]
    fn async_fn_body_runs_as_a_task_with_the_declared_output() {
        let out = profiled_str(
            "tag = \"load\", labels(region = \"eu\", r#type = \"user\")",
            "pub async fn load(&self, id: u32) -> Result<String, Error> { let row = self.db.get(id).await?; if row.is_empty() { return Err(Error); } Ok(row) }",
        );
        let expected = squash(
            r#"pub async fn load(&self, id: u32) -> Result<String, Error> {
                static __THREADPROF_SITE: ::threadprof::__private::CallSite =
                    ::threadprof::__private::CallSite::new("load", &[("region", "eu"), ("type", "user")]);
                __THREADPROF_SITE.task(async move {
                    #[allow(unreachable_code, clippy::diverging_sub_expression, clippy::empty_loop, clippy::let_unit_value, clippy::let_with_type_underscore)]
                    if false {
                        let __threadprof_output: Result<String, Error> = loop {};
                        return __threadprof_output;
                    }
                    let row = self.db.get(id).await?;
                    if row.is_empty() { return Err(Error); }
                    Ok(row)
                })
                .await
            }"#,
        );
        assert_eq!(squash(&out), expected);
    }

    #[test]
    fn async_fn_keeps_signature_attributes_and_inner_attributes() {
        let item = "#[inline] pub(crate) async unsafe fn f<'a, T: Send>(x: &'a T) -> &'a T where T: Sync { #![allow(unused)] x }";
        let out: ItemFn = syn::parse_str(&profiled_str("", item)).unwrap();
        let original: ItemFn = syn::parse_str(item).unwrap();
        assert_eq!(out.sig, original.sig);
        assert_eq!(out.attrs, original.attrs);
        assert_eq!(out.vis, original.vis);
        let site = out.block.stmts[0].clone();
        let site = quote!(#site).to_string();
        assert!(
            site.contains(":: threadprof :: __private :: CallSite :: new (\"f\" , & [])"),
            "{site}"
        );
        let body = out.block.stmts[1].clone();
        let body = quote!(#body).to_string();
        assert!(
            body.starts_with("__THREADPROF_SITE . task (async move {"),
            "{body}"
        );
    }

    #[test]
    fn output_hint_names_impl_trait_as_underscore_and_skips_never() {
        let out = profiled_str(
            "",
            "async fn f() -> Result<(impl Display, Box<dyn Iterator<Item = impl Debug>>), E> { todo!() }",
        );
        assert!(
            squash(&out)
                .contains("let__threadprof_output:Result<(_,Box<dynIterator<Item=_>>),E>=loop{};"),
            "{out}"
        );
        let out = profiled_str("", "async fn no_output() {}");
        assert!(
            out.contains("let __threadprof_output : () = loop { } ;"),
            "{out}"
        );
        let out = profiled_str("", "async fn forever() -> ! { loop {} }");
        assert!(!out.contains("__threadprof_output"), "{out}");
        assert!(out.contains("async move { loop { } }"), "{out}");
    }

    #[test]
    fn plain_fn_gets_a_scope_guard_and_keeps_the_body() {
        let item =
            "fn parse<T: FromStr>(s: &str) -> Result<T, T::Err> { let v = s.parse()?; Ok(v) }";
        let out = profiled_str("labels(kind = \"int\"), crate = \"my_prof\"", item);
        let expected = squash(
            r#"fn parse<T: FromStr>(s: &str) -> Result<T, T::Err> {
                let __threadprof_scope = {
                    static __THREADPROF_SITE: my_prof::__private::CallSite =
                        my_prof::__private::CallSite::new("parse", &[("kind", "int")]);
                    __THREADPROF_SITE.scope()
                };
                let v = s.parse()?;
                Ok(v)
            }"#,
        );
        assert_eq!(squash(&out), expected);
        let original: ItemFn = syn::parse_str(item).unwrap();
        let out: ItemFn = syn::parse_str(&out).unwrap();
        assert_eq!(&out.block.stmts[1..], &original.block.stmts[..]);
    }

    #[test]
    fn invalid_profiled_keeps_the_item_token_for_token() {
        let item = "async fn fetch(&self) -> u32 { #![allow(unused)] self.n }";
        // Validation reports every problem at once.
        let out = profiled_str(
            "labels(tag = \"x\", region = \"eu\", region = \"us\"), tag = \"a/b\"",
            item,
        );
        let (func, errors) = split_error_output(&out);
        assert_eq!(squash(&quote!(#func).to_string()), squash(item));
        assert_eq!(errors.len(), 3, "{errors:?}");
        for message in [
            "invalid tag",
            "label key `tag` is reserved",
            "label `region` is given more than once",
        ] {
            assert!(errors.iter().any(|e| e.contains(message)), "{errors:?}");
        }
        // Argument syntax is checked first, all arguments in one go.
        let out = profiled_str("labels(region = 1, zone = x), crate = 2", item);
        let (func, errors) = split_error_output(&out);
        assert_eq!(squash(&quote!(#func).to_string()), squash(item));
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors.iter().any(|e| e.contains("`region = \\\"1\\\"`")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("`zone = \\\"...\\\"`")),
            "{errors:?}"
        );
    }

    #[test]
    fn argument_errors() {
        let cases = [
            (
                "labels(a = \"1\"), labels(b = \"2\")",
                "`labels` is given more than once",
            ),
            (
                "labels(a = \"1\", b = \"2\", r#a = \"3\")",
                "the label `a` is given more than once",
            ),
            ("labels()", "`labels()` is empty"),
            ("labels", "expected `labels(key = \\\"value\\\", ...)`"),
            ("tag(\"x\")", "expected `tag = \\\"...\\\"`"),
            ("labels(region = )", "unexpected end of input"),
            ("labels(\"region\" = \"eu\")", "label keys are identifiers"),
            (
                "labels(span_id = \"1\", state = \"x\", thread_name = \"t\")",
                "label key `thread_name` is reserved",
            ),
            ("crate = 7", "`crate` must be a string literal"),
            (
                "interval = \"5\"",
                "expected `tag = \\\"...\\\"`, `labels(key",
            ),
        ];
        for (args, message) in cases {
            let out = profiled_str(args, "fn keep_me() {}");
            let (func, errors) = split_error_output(&out);
            assert_eq!(func.sig.ident, "keep_me");
            assert!(func.block.stmts.is_empty(), "{args}: the item was changed");
            assert!(
                errors.iter().any(|e| e.contains(message)),
                "{args}: {message:?} not in {errors:?}"
            );
        }
    }

    #[test]
    fn profiled_thread_points_async_fn_to_profiled_and_rejects_labels() {
        let out = expand_str("", "async fn later() {}");
        let (_, errors) = split_error_output(&out);
        assert!(
            errors[0].contains("use #[profiled(tag = \\\"...\\\")] on async functions"),
            "{errors:?}"
        );
        let out = expand_str("labels(a = \"b\")", "fn f() {}");
        let (_, errors) = split_error_output(&out);
        assert!(
            errors[0].contains("unknown argument `labels`; expected `tag = \\\"...\\\"` or `crate"),
            "{errors:?}"
        );
    }

    #[test]
    fn item_errors_name_the_attribute() {
        let out = profiled_str("", "const fn c() -> u8 { 1 }");
        assert!(
            out.contains("#[profiled] cannot be used on a `const fn`"),
            "{out}"
        );
        let out = profiled_str("", "struct S;");
        assert!(
            out.contains("#[profiled] goes on a function with a body, not on a struct"),
            "{out}"
        );
        let out = profiled_str("", "fn required(&self);");
        assert!(out.contains("#[profiled] needs a function body"), "{out}");
        let out = profiled_str("", "fn _hidden() {}");
        assert!(out.contains("give one: #[profiled(tag"), "{out}");
    }
}
