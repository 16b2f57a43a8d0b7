//! Code generation from the validated arguments and struct.
//!
//! Everything is named by absolute path (`::presence_core::…`, `::core::…`), so the user's
//! imports and shadowing cannot change what the expansion means.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, Item};

use crate::args::Args;
use crate::errors::Errors;
use crate::input::Input;

/// The whole expansion: the user's item, then either the generated code or the errors.
///
/// When anything is wrong, the item is still emitted unchanged, so that its uses do not
/// cascade into "cannot find type" errors.
pub(crate) fn presence(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = Args::parse(args, &mut errors);
    let input = match syn::parse2::<Item>(item.clone()) {
        Ok(parsed) => Input::from_item(parsed, &mut errors),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    match (errors.finish(), args, input) {
        (Ok(()), Some(args), Some(input)) => expand(&args, &input),
        (result, _, _) => {
            let mut out = item;
            if let Err(error) = result {
                out.extend(error.into_compile_error());
            }
            out
        }
    }
}

/// The user's struct, the `Presence` impl, the pub/sub check and the typed helpers.
fn expand(args: &Args, input: &Input) -> TokenStream {
    let item = &input.item;
    let ident = &item.ident;
    let presence_impl = presence_impl(args, ident);
    let helpers = helpers(input);
    quote! {
        #item

        const _: () = {
            #presence_impl
            #helpers
        };
    }
}

fn presence_impl(args: &Args, ident: &Ident) -> TokenStream {
    let str_ty = quote!(::core::primitive::str);
    let meta = match &args.meta {
        // Spanned by the user's type, so an unsuitable type is underlined where written.
        Some(meta) => quote_spanned!(meta.span()=> #meta),
        None => quote!(::presence_core::__private::JsonMap),
    };
    let extra = match &args.fetch {
        Some(key) => {
            quote_spanned!(key.span()=> <#ident as ::presence_core::presence::Fetch>::Extra)
        }
        None => quote!(()),
    };
    let state = match &args.init {
        Some(key) => {
            quote_spanned!(key.span()=> <#ident as ::presence_core::presence::Init>::State)
        }
        None => quote!(()),
    };
    let name = match &args.name {
        Some(name) => quote!(#name),
        None => {
            let ident = ident.to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #ident))
        }
    };
    let fetches = args.fetch.is_some();
    let handles_metas = args.handle_metas.is_some();
    let pubsub = &args.pubsub;
    // The check and the call are spanned by the user's expression, so a value that is not a
    // pub/sub server is underlined where it was written. They share one body so that the
    // compiler reports the unmet bound once.
    let pubsub_call = quote_spanned! {pubsub.span()=>
        let server = &(#pubsub);
        ::presence_core::__private::assert_pubsub_server(server);
        ::presence_core::__private::pubsub(registry, server)
    };
    let options = args.options.iter().map(|option| {
        let method = format_ident!("{}", option.key, span = option.key.span());
        let value = &option.value;
        quote!(.#method(#value))
    });
    let fetch = args.fetch.as_ref().map(|key| {
        quote_spanned! {key.span()=>
            fn fetch(
                &self,
                topic: &#str_ty,
                presences: ::presence_core::presence::PresenceMap<Self::Extra>,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<
                    ::presence_core::presence::PresenceMap<Self::Extra>,
                    ::presence_core::presence::FetchError,
                >,
            > + ::core::marker::Send {
                <#ident as ::presence_core::presence::Fetch>::fetch(self, topic, presences)
            }
        }
    });
    let init = match &args.init {
        Some(key) => quote_spanned! {key.span()=>
            fn init(&self) -> Self::State {
                <#ident as ::presence_core::presence::Init>::init(self)
            }
        },
        None => quote! {
            fn init(&self) -> Self::State {}
        },
    };
    let handle_metas = args.handle_metas.as_ref().map(|key| {
        quote_spanned! {key.span()=>
            fn handle_metas(
                &self,
                topic: &#str_ty,
                diff: &::presence_core::presence::PresenceDiff<Self::Extra>,
                presences: &::presence_core::presence::TopicMetas,
                state: Self::State,
            ) -> impl ::core::future::Future<Output = Self::State> + ::core::marker::Send {
                <#ident as ::presence_core::presence::HandleMetas>::handle_metas(
                    self, topic, diff, presences, state,
                )
            }
        }
    });
    quote! {
        #[automatically_derived]
        impl ::presence_core::presence::Presence for #ident {
            type Meta = #meta;
            type Extra = #extra;
            type State = #state;
            const NAME: &'static #str_ty = #name;
            const FETCHES: ::core::primitive::bool = #fetches;
            const HANDLES_METAS: ::core::primitive::bool = #handles_metas;

            fn pubsub(
                registry: &::presence_core::registry::Registry,
            ) -> ::core::result::Result<
                ::presence_core::PubSub,
                ::presence_core::registry::RegistryError,
            > {
                #pubsub_call
            }

            fn options() -> ::presence_core::presence::PresenceOptions {
                ::presence_core::presence::PresenceOptions::new() #(#options)*
            }

            #fetch
            #init
            #handle_metas
        }
    }
}

/// The typed helpers, inherent on the struct, with the struct's visibility.
fn helpers(input: &Input) -> TokenStream {
    let item = &input.item;
    let ident = &item.ident;
    let vis = &item.vis;
    let str_ty = quote!(::core::primitive::str);
    let result = quote!(::core::result::Result);
    let error = quote!(::presence_core::presence::PresenceError);
    let registry = quote!(::presence_core::registry::Registry);
    let socket = quote!(::presence_core::presence::PresenceSocket);
    let meta = quote!(<Self as ::presence_core::presence::Presence>::Meta);
    let extra = quote!(<Self as ::presence_core::presence::Presence>::Extra);
    let not_running = format!(
        "`PresenceError::Registry` when `{ident}` (or its pub/sub) is not running in the registry"
    );
    let track_errors = format!(
        "{not_running}; `PresenceError::Track` when the owner already tracks `key` there, the \
         tracker stopped or the meta does not serialize to JSON."
    );
    let update_errors = format!(
        "{not_running}; `PresenceError::Update` when the owner tracks nothing under `key` \
         there, the tracker stopped or the meta does not serialize to JSON."
    );
    let not_running = format!("{not_running}.");
    quote! {
        #[allow(dead_code, unreachable_pub, clippy::all, clippy::pedantic, clippy::nursery)]
        impl #ident {
            /// A supervisor child that starts this presence, with `options` merged over the
            /// ones its `#[presence]` attribute sets.
            #[must_use = "a child spec does nothing until it is added to a `Supervisor`"]
            #vis fn child_spec(
                self,
                options: ::presence_core::presence::PresenceOptions,
            ) -> ::presence_core::supervisor::PresenceSpec<Self> {
                ::presence_core::supervisor::PresenceSpec::new(self, options)
            }

            /// The running presence in `registry`.
            ///
            /// # Errors
            ///
            #[doc = #not_running]
            #vis fn handle(
                registry: &#registry,
            ) -> #result<::presence_core::presence::PresenceHandle<Self>, #error> {
                #result::map_err(
                    ::presence_core::presence::PresenceHandle::<Self>::from_registry(registry),
                    ::core::convert::From::from,
                )
            }

            /// Tracks the socket's owner under `key` in the socket's topic.
            ///
            /// # Errors
            ///
            #[doc = #track_errors]
            #vis fn track(
                socket: &impl #socket,
                key: &#str_ty,
                meta: &#meta,
            ) -> #result<::presence_core::PhxRef, #error> {
                ::presence_core::__private::track::<Self>(socket, key, meta)
            }

            /// Stops tracking the socket's owner under `key` in the socket's topic; nothing
            /// happens when it was not tracked.
            ///
            /// # Errors
            ///
            #[doc = #not_running]
            #vis fn untrack(socket: &impl #socket, key: &#str_ty) -> #result<(), #error> {
                ::presence_core::__private::untrack::<Self>(socket, key)
            }

            /// Replaces the meta of the socket owner's presence under `key` in the socket's
            /// topic.
            ///
            /// # Errors
            ///
            #[doc = #update_errors]
            #vis fn update(
                socket: &impl #socket,
                key: &#str_ty,
                meta: &#meta,
            ) -> #result<::presence_core::PhxRef, #error> {
                ::presence_core::__private::update::<Self>(socket, key, meta)
            }

            /// Tracks `owner` under `key` in `topic`.
            ///
            /// # Errors
            ///
            #[doc = #track_errors]
            #vis fn track_owner(
                registry: &#registry,
                owner: &::presence_core::Owner,
                topic: &#str_ty,
                key: &#str_ty,
                meta: &#meta,
            ) -> #result<::presence_core::PhxRef, #error> {
                ::presence_core::__private::track_owner::<Self>(registry, owner, topic, key, meta)
            }

            /// Stops tracking `owner` under `key` in `topic`; nothing happens when it was not
            /// tracked.
            ///
            /// # Errors
            ///
            #[doc = #not_running]
            #vis fn untrack_owner(
                registry: &#registry,
                owner: &::presence_core::Owner,
                topic: &#str_ty,
                key: &#str_ty,
            ) -> #result<(), #error> {
                ::presence_core::__private::untrack_owner::<Self>(registry, owner, topic, key)
            }

            /// Replaces the meta of `owner`'s presence under `key` in `topic`.
            ///
            /// # Errors
            ///
            #[doc = #update_errors]
            #vis fn update_owner(
                registry: &#registry,
                owner: &::presence_core::Owner,
                topic: &#str_ty,
                key: &#str_ty,
                meta: &#meta,
            ) -> #result<::presence_core::PhxRef, #error> {
                ::presence_core::__private::update_owner::<Self>(registry, owner, topic, key, meta)
            }

            /// How many keys and presences `topic` has, cluster-wide, without listing it
            /// (O(1) while no peer is down).
            ///
            /// # Errors
            ///
            #[doc = #not_running]
            #vis fn count(
                registry: &#registry,
                topic: &#str_ty,
            ) -> #result<::presence_core::tracker::PresenceCount, #error> {
                ::presence_core::__private::count::<Self>(registry, topic)
            }

            /// The presences of `topic` on this node, grouped by key and fetched.
            ///
            /// # Errors
            ///
            #[doc = #not_running]
            ///
            /// # Cancel safety
            ///
            /// Cancel safe: it only reads.
            #vis async fn list(
                registry: &#registry,
                topic: &#str_ty,
            ) -> #result<::presence_core::presence::PresenceMap<#extra>, #error> {
                ::presence_core::__private::list::<Self>(registry, topic).await
            }

            /// The entry of `key` in `topic`, fetched; `None` when nobody is there.
            ///
            /// # Errors
            ///
            #[doc = #not_running]
            ///
            /// # Cancel safety
            ///
            /// Cancel safe: it only reads.
            #vis async fn get_by_key(
                registry: &#registry,
                topic: &#str_ty,
                key: &#str_ty,
            ) -> #result<
                ::core::option::Option<::presence_core::presence::PresenceEntry<#extra>>,
                #error,
            > {
                ::presence_core::__private::get_by_key::<Self>(registry, topic, key).await
            }
        }
    }
}
