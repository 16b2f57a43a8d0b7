//! Validates the annotated item into a small model; no codegen here.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{Data, DeriveInput, Generics, Ident, Item, Visibility};

use crate::errors::Errors;

/// The struct a presence is declared on: a plain struct (unit, tuple or named fields) without
/// generics.
pub(crate) struct Input {
    pub(crate) ident: Ident,
    pub(crate) vis: Visibility,
}

impl Input {
    /// Checks the item `#[presence(...)]` is on, pushing every problem to `errors`.
    pub(crate) fn from_item(item: &Item, errors: &mut Errors) -> Option<Self> {
        let Item::Struct(item) = item else {
            errors.push(not_a_struct(item));
            return None;
        };
        check_generics(&item.generics, errors)?;
        Some(Input {
            ident: item.ident.clone(),
            vis: item.vis.clone(),
        })
    }

    /// Checks the item `#[derive(Presence)]` is on, pushing every problem to `errors`.
    pub(crate) fn from_derive(input: &DeriveInput, errors: &mut Errors) -> Option<Self> {
        let (keyword, kind) = match &input.data {
            Data::Struct(_) => {
                check_generics(&input.generics, errors)?;
                return Some(Input {
                    ident: input.ident.clone(),
                    vis: input.vis.clone(),
                });
            }
            Data::Enum(e) => (e.enum_token.to_token_stream(), "an enum"),
            Data::Union(u) => (u.union_token.to_token_stream(), "a union"),
        };
        let mut tokens = keyword;
        input.ident.to_tokens(&mut tokens);
        errors.spanned(
            tokens,
            format!(
                "`#[derive(Presence)]` goes on a struct, not on {kind}: a presence is declared \
                 by a struct, e.g. `#[derive(Presence)] #[presence(pubsub = AppPubSub)] pub \
                 struct RoomPresence;`"
            ),
        );
        None
    }
}

fn check_generics(generics: &Generics, errors: &mut Errors) -> Option<()> {
    if !generics.params.is_empty() {
        errors.spanned(
            generics,
            "a presence cannot be generic: remove the lifetime, type and const parameters (the \
             presence is found by its type, so it must be one concrete type)",
        );
        return None;
    }
    if let Some(where_clause) = &generics.where_clause {
        errors.spanned(
            where_clause,
            "a presence cannot have a `where` clause: remove it",
        );
        return None;
    }
    Some(())
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
            "`#[presence(...)]` goes on a struct, not on {kind}: a presence is declared by a \
             struct, e.g. `#[presence(pubsub = AppPubSub)] pub struct RoomPresence;`"
        ),
    )
}
