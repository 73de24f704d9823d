//! The `#[remote]` attribute of `ferry-guest`. Use it through `ferry_guest::remote`.

use proc_macro::TokenStream;
use proc_macro2::{TokenStream as TokenStream2, TokenTree};
use quote::{ToTokens, format_ident, quote};
use syn::{FnArg, ItemFn, Pat, ReturnType, Type, parse_macro_input, spanned::Spanned};

/// Makes a function callable by ferry.
///
/// The function must be a plain (non-async, non-generic) free function. Its parameters must be
/// `serde::de::DeserializeOwned` and its result `serde::Serialize + DeserializeOwned` (the
/// manifest traces it). A result type whose last path segment is `Result` is treated as
/// `Result<T, E>`: the ref holds `T`, an `Err(e)` (`E: Serialize + DeserializeOwned +
/// Display`) fails the task with `e` as its cause. (`io::Result<T>` and `anyhow::Result<T>`
/// do not compile: their error types are not serde types; an alias of your own does.)
///
/// Besides the function itself this generates, for a function `add`:
/// - the Wasm exports `__ferry_fn_add` (the shim the host calls) and `__ferry_sig_add` (its
///   manifest entry), in wasm32 builds only;
/// - a module `add` holding `REMOTE`, a typed [`RemoteFn`](../ferry_guest/struct.RemoteFn.html)
///   handle that drivers and other guests call it with.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            TokenStream2::from(attr).span(),
            "#[remote] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let func = parse_macro_input!(item as ItemFn);
    match expand(&func) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(func: &ItemFn) -> syn::Result<TokenStream2> {
    let sig = &func.sig;
    if let Some(a) = &sig.asyncness {
        return Err(syn::Error::new(
            a.span(),
            "#[remote] functions cannot be async",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "#[remote] functions cannot be generic: the module must export concrete types",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new(
            v.span(),
            "#[remote] functions cannot be variadic",
        ));
    }
    let name = &sig.ident;
    let name_str = name.to_string();
    let vis = &func.vis;

    let mut param_names = Vec::new();
    let mut param_types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "#[remote] functions cannot take `self`",
                ));
            }
            FnArg::Typed(pt) => {
                let pname = match &*pt.pat {
                    Pat::Ident(id) => id.ident.to_string(),
                    Pat::Wild(_) => "_".to_string(),
                    other => {
                        return Err(syn::Error::new(
                            other.span(),
                            "#[remote] parameters must be plain names",
                        ));
                    }
                };
                if let Type::Reference(r) = &*pt.ty {
                    return Err(syn::Error::new(
                        r.span(),
                        "#[remote] parameters must be owned types (the arguments are decoded \
                         into them)",
                    ));
                }
                param_names.push(pname);
                param_types.push((*pt.ty).clone());
            }
        }
    }

    let ret_ty: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    let is_result = is_result_type(&ret_ty);

    // Spelled exactly as the host spells the manifest's signature, so the two compare equal.
    let signature = {
        let params: Vec<String> = param_names
            .iter()
            .zip(&param_types)
            .map(|(n, t)| format!("{n}: {}", type_string(t)))
            .collect();
        let ret = if is_result {
            let (ok, err) = result_arg_strings(&ret_ty);
            format!("Result<{ok}, {err}>")
        } else {
            type_string(&ret_ty)
        };
        format!("({}) -> {ret}", params.join(", "))
    };

    let shim = format_ident!("__ferry_fn_{}", name);
    let sig_fn = format_ident!("__ferry_sig_{}", name);
    let shim_export = format!("__ferry_fn_{name_str}");
    let sig_export = format!("__ferry_sig_{name_str}");
    let abi_static = format_ident!("__FERRY_ABI_{}", name_str.to_uppercase());
    let arg_idents: Vec<_> = (0..param_types.len())
        .map(|i| format_ident!("__arg{}", i))
        .collect();
    let type_strs: Vec<String> = param_types.iter().map(type_string).collect();

    let (ret_call, value_ty, sig_result) = if is_result {
        (
            quote!(::ferry_guest::__private::ret_result),
            quote!(<#ret_ty as ::ferry_guest::__private::ResultParts>::Ok),
            {
                let (ok_str, err_str) = result_arg_strings(&ret_ty);
                quote! {
                    .result::<<#ret_ty as ::ferry_guest::__private::ResultParts>::Ok>(#ok_str)
                    .error::<<#ret_ty as ::ferry_guest::__private::ResultParts>::Err>(#err_str)
                }
            },
        )
    } else {
        let ret_str = type_string(&ret_ty);
        (
            quote!(::ferry_guest::__private::ret),
            ret_ty.to_token_stream(),
            quote!(.result::<#ret_ty>(#ret_str)),
        )
    };

    let handle_doc =
        format!("The typed handle of the remote function [`{name_str}`](fn@{name_str}).");
    Ok(quote! {
        #func

        /// The Wasm export the host calls.
        ///
        /// # Safety
        /// `ptr` and `len` must describe a buffer from `__ferry_alloc(len, 1)` holding the
        /// encoded arguments; the shim takes ownership of it.
        #[doc(hidden)]
        #[allow(dead_code)]
        #[cfg_attr(target_arch = "wasm32", unsafe(export_name = #shim_export))]
        pub unsafe extern "C" fn #shim(ptr: *mut u8, len: usize) -> i32 {
            // SAFETY: the host calls a shim only with a buffer it got from
            // `__ferry_alloc(len, 1)` and filled (docs/abi.md, "Calling a function").
            let __bytes = unsafe { ::ferry_guest::__private::take_args(ptr, len) };
            let mut __de = ::ferry_guest::__private::ArgDecoder::new(#name_str, &__bytes);
            #(
                let #arg_idents = match __de.arg::<#param_types>(#param_names, #type_strs) {
                    ::core::result::Result::Ok(v) => v,
                    ::core::result::Result::Err(status) => return status,
                };
            )*
            if let ::core::result::Result::Err(status) = __de.finish() {
                return status;
            }
            drop(__bytes);
            #ret_call(#name(#(#arg_idents),*))
        }

        #[doc(hidden)]
        #[allow(dead_code)]
        #[cfg_attr(target_arch = "wasm32", unsafe(export_name = #sig_export))]
        pub extern "C" fn #sig_fn() -> i32 {
            ::ferry_guest::__private::SigBuilder::new(#name_str)
                #(.param::<#param_types>(#param_names, #type_strs))*
                #sig_result
                .finish()
        }

        #[doc(hidden)]
        #[used]
        #[cfg_attr(target_arch = "wasm32", unsafe(link_section = "ferry_abi"))]
        static #abi_static: [u8; 4] = ::ferry_guest::__private::ABI_SECTION_BYTES;

        #[doc = #handle_doc]
        #[allow(unused_imports, clippy::type_complexity)]
        #vis mod #name {
            use super::*;
            /// Call it with `module.function(REMOTE)?.call(args)` from a driver or
            /// `ferry_guest::call(REMOTE, args)` in a guest.
            pub const REMOTE: ::ferry_guest::RemoteFn<(#(#param_types,)*), #value_ty> =
                ::ferry_guest::RemoteFn::new(#name_str, #signature);
        }
    })
}

fn is_result_type(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Result"),
        _ => false,
    }
}

/// The `T` and `E` of `Result<T, E>` as strings, for the manifest; aliases with one argument
/// (`io::Result<T>`) name the error by the alias.
fn result_arg_strings(ty: &Type) -> (String, String) {
    if let Type::Path(p) = ty
        && let Some(seg) = p.path.segments.last()
        && let syn::PathArguments::AngleBracketed(args) = &seg.arguments
    {
        let types: Vec<String> = args
            .args
            .iter()
            .filter_map(|a| match a {
                syn::GenericArgument::Type(t) => Some(type_string(t)),
                _ => None,
            })
            .collect();
        match types.as_slice() {
            [ok, err] => return (ok.clone(), err.clone()),
            [ok] => return (ok.clone(), format!("<error of {}>", type_string(ty))),
            _ => {}
        }
    }
    let s = type_string(ty);
    (format!("<ok of {s}>"), format!("<error of {s}>"))
}

/// A type as a person would write it: `Vec<ObjectRef<u64>>`, not `Vec < ObjectRef < u64 > >`.
fn type_string(ty: &Type) -> String {
    let mut out = String::new();
    write_tokens(ty.to_token_stream(), &mut out);
    out
}

fn write_tokens(ts: TokenStream2, out: &mut String) {
    for tt in ts {
        match tt {
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    proc_macro2::Delimiter::Parenthesis => ("(", ")"),
                    proc_macro2::Delimiter::Bracket => ("[", "]"),
                    proc_macro2::Delimiter::Brace => ("{", "}"),
                    proc_macro2::Delimiter::None => ("", ""),
                };
                out.push_str(open);
                write_tokens(g.stream(), out);
                out.push_str(close);
            }
            TokenTree::Ident(i) => {
                if out.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                    out.push(' ');
                }
                out.push_str(&i.to_string());
            }
            TokenTree::Punct(p) => {
                out.push(p.as_char());
                if p.as_char() == ',' || p.as_char() == ';' {
                    out.push(' ');
                }
            }
            TokenTree::Literal(l) => {
                if out.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                    out.push(' ');
                }
                out.push_str(&l.to_string());
            }
        }
    }
}
