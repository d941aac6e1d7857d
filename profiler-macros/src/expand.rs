//! Code generation: one guard statement at the top of the body, nothing else changed.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Error, ItemFn};

use crate::attr::Args;
use crate::valid;

/// On error: the original item plus `compile_error!`, so the user sees one precise error and
/// tools still see the function.
fn with_error(item: TokenStream, error: Error) -> TokenStream {
    let error = error.to_compile_error();
    quote! { #item #error }
}

fn not_a_function(item: &TokenStream) -> Error {
    if syn::parse2::<syn::TraitItemFn>(item.clone()).is_ok() {
        return Error::new_spanned(
            item,
            "#[profiled_thread] needs a function body; annotate the trait method's implementation instead",
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
        format!("#[profiled_thread] goes on a function with a body, not on {what}"),
    )
}

pub(crate) fn profiled_thread(args: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => return with_error(item.clone(), not_a_function(&item)),
    };
    let args: Args = match syn::parse2(args) {
        Ok(a) => a,
        Err(e) => return with_error(item, e),
    };
    match valid::check(args, &func) {
        Ok(checked) => expand(func, checked),
        Err(e) => with_error(item, e),
    }
}

fn expand(mut func: ItemFn, checked: valid::Checked) -> TokenStream {
    let valid::Checked { tag, krate } = checked;
    // Mixed-site hygiene: the guard's name cannot clash with the user's identifiers.
    let guard = syn::Ident::new("__threadprof_thread_guard", Span::mixed_site());
    let stmt: syn::Stmt = syn::parse_quote! {
        let #guard = #krate::__private::enter(#tag);
    };
    func.block.stmts.insert(0, stmt);
    quote! { #func }
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
}
