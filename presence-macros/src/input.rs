//! Validates the annotated item into a small model; no codegen here.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{Item, ItemStruct};

use crate::errors::Errors;

/// The struct `#[presence]` is on: a plain struct (unit, tuple or named fields) without
/// generics.
pub(crate) struct Input {
    /// The struct, emitted unchanged.
    pub(crate) item: ItemStruct,
}

impl Input {
    /// Checks `item`, pushing every problem to `errors`; `None` when it cannot be used.
    pub(crate) fn from_item(item: Item, errors: &mut Errors) -> Option<Self> {
        let item = match item {
            Item::Struct(item) => item,
            other => {
                errors.push(not_a_struct(&other));
                return None;
            }
        };
        let generics = &item.generics;
        if !generics.params.is_empty() {
            errors.spanned(
                generics,
                "#[presence] does not support generic structs: remove the lifetime, type and const \
                 parameters (the presence is found by its type, so it must be one concrete type)",
            );
            return None;
        }
        if let Some(where_clause) = &generics.where_clause {
            errors.spanned(
                where_clause,
                "#[presence] does not support `where` clauses: remove it",
            );
            return None;
        }
        Some(Input { item })
    }
}

/// The error for an item that is not a struct, spanning its keyword and name (`enum Foo`).
fn not_a_struct(item: &Item) -> syn::Error {
    fn head(keyword: &impl ToTokens, ident: Option<&syn::Ident>) -> TokenStream {
        let mut tokens = keyword.to_token_stream();
        ident.to_tokens(&mut tokens);
        tokens
    }
    let (tokens, kind) = match item {
        Item::Enum(i) => (head(&i.enum_token, Some(&i.ident)), "an enum"),
        Item::Fn(i) => (head(&i.sig.fn_token, Some(&i.sig.ident)), "a function"),
        Item::Union(i) => (head(&i.union_token, Some(&i.ident)), "a union"),
        Item::Trait(i) => (head(&i.trait_token, Some(&i.ident)), "a trait"),
        Item::Type(i) => (head(&i.type_token, Some(&i.ident)), "a type alias"),
        Item::Const(i) => (head(&i.const_token, Some(&i.ident)), "a const"),
        Item::Static(i) => (head(&i.static_token, Some(&i.ident)), "a static"),
        Item::Mod(i) => (head(&i.mod_token, Some(&i.ident)), "a module"),
        Item::Impl(i) => (head(&i.impl_token, None), "an impl block"),
        Item::Use(i) => (head(&i.use_token, None), "a `use`"),
        other => (other.to_token_stream(), "this item"),
    };
    syn::Error::new_spanned(
        tokens,
        format!(
            "#[presence] goes on a struct, not on {kind}: \
             write `#[presence(pubsub = AppPubSub)] pub struct RoomPresence;`"
        ),
    )
}
