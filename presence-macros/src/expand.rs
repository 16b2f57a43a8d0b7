//! Code generation from the validated arguments and struct.
//!
//! Everything is named by absolute path (`::presence_core::…`, `::core::…`), so the user's
//! imports and shadowing cannot change what the expansion means.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident, Item, Meta};

use crate::args::{Args, ArgsParser};
use crate::errors::Errors;
use crate::input::Input;

/// `#[presence(...)]` as an attribute: the user's item, then either the generated code or
/// the errors.
///
/// When anything is wrong, the item is still emitted unchanged, so that its uses do not
/// cascade into "cannot find type" errors, and the presence is still declared from the
/// arguments that were right (see [`generate`]).
pub(crate) fn attribute(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let mut parser = ArgsParser::default();
    parser.parse(args.clone(), &mut errors);
    // A missing `pubsub` is reported under the arguments written (at the attribute when
    // there are none).
    let args = parser.finish(args, &mut errors);
    let input = match syn::parse2::<Item>(item.clone()) {
        Ok(parsed) => Input::from_item(&parsed, &mut errors),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    let mut out = item;
    out.extend(generate(errors, args, input));
    out
}

/// `#[derive(Presence)]` with its `#[presence(...)]` helper attribute: the generated code or
/// the errors; the struct itself is the compiler's, untouched.
pub(crate) fn derive(item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let input = match syn::parse2::<DeriveInput>(item) {
        Ok(input) => input,
        Err(error) => return error.into_compile_error(),
    };
    // The arguments first, then the struct, so that errors come in source order.
    let mut parser = ArgsParser::default();
    let mut missing_at = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("presence")) {
        missing_at = Some(attr.path().to_token_stream());
        match &attr.meta {
            Meta::List(list) => parser.parse(list.tokens.clone(), &mut errors),
            Meta::Path(path) => {
                parser.reported();
                errors.spanned(
                    path,
                    "`#[presence]` needs arguments: write `#[presence(pubsub = AppPubSub)]`",
                );
            }
            Meta::NameValue(nv) => {
                parser.reported();
                errors.spanned(
                    nv,
                    "`#[presence]` takes a list: write `#[presence(pubsub = AppPubSub)]`",
                );
            }
        }
    }
    let args = missing_at.and_then(|at| parser.finish(at, &mut errors));
    let no_attribute = !input.attrs.iter().any(|a| a.path().is_ident("presence"));
    let model = Input::from_derive(&input, &mut errors);
    if no_attribute && model.is_some() {
        errors.at(
            Span::call_site(),
            "`#[derive(Presence)]` needs its settings: add `#[presence(pubsub = AppPubSub)]` \
             below it, naming a server declared with \
             `presence_core::pubsub_server!(pub AppPubSub);`",
        );
    }
    generate(errors, args, model)
}

/// The generated code, or the errors.
///
/// With errors, the presence is still declared from what was written correctly (when the
/// struct itself is fine), so that each mistake is reported once: the struct's `impl Fetch`,
/// its uses of the helpers... do not add "not a presence" errors. The hook checks are left
/// out then, since a misspelled or repeated flag would make them report the same mistake
/// again.
fn generate(errors: Errors, args: Option<Args>, input: Option<Input>) -> TokenStream {
    let (errors, checked) = match errors.finish() {
        Ok(()) => (TokenStream::new(), true),
        Err(error) => (error.into_compile_error(), false),
    };
    let declaration = match (args, input) {
        (Some(args), Some(input)) => expand(&args, &input, checked),
        _ => TokenStream::new(),
    };
    quote! {
        #errors
        #declaration
    }
}

/// The `Presence` impl, the hook checks (when `checked`) and the typed helpers.
fn expand(args: &Args, input: &Input, checked: bool) -> TokenStream {
    let ident = &input.ident;
    let presence_impl = presence_impl(args, ident);
    let checks = checked.then(|| hook_checks(args, ident));
    let helpers = helpers(input);
    quote! {
        const _: () = {
            #presence_impl
            #checks
            #helpers
        };
    }
}

/// A hook implemented but not named in `#[presence(...)]` would never run: each is a compile
/// error, raised by a constant that is true exactly when the struct implements the hook.
fn hook_checks(args: &Args, ident: &Ident) -> TokenStream {
    let hooks = [
        (args.fetch.is_none(), "FETCH", "Fetch", "fetch", "the fetch"),
        (
            args.handle_metas.is_none(),
            "HANDLE_METAS",
            "HandleMetas",
            "handle_metas",
            "`init` and `handle_metas`",
        ),
    ];
    let checks =
        hooks
            .into_iter()
            .filter(|(unnamed, ..)| *unnamed)
            .map(|(_, probe, tr, flag, what)| {
                let probe = Ident::new(probe, args.span);
                let message = format!(
                    "`{ident}` implements `{tr}`, but its `#[presence(...)]` does not name \
                 `{flag}`, so {what} would never run: write `#[presence({}, {flag})]`",
                    args.written
                );
                quote_spanned! {args.span=>
                    #[allow(unused_imports)]
                    use ::presence_core::__private::ProbeFallback as _;
                    if ::presence_core::__private::Probe::<#ident>::#probe {
                        ::core::panic!(#message)
                    }
                }
            });
    quote! {
        const _: () = { #(#checks)* };
    }
}

fn presence_impl(args: &Args, ident: &Ident) -> TokenStream {
    let str_ty = quote!(::core::primitive::str);
    let ctx_ty = quote!(::presence_core::presence::PresenceContext);
    let meta = match &args.meta {
        // Spanned by the user's type, so an unsuitable type is underlined where written, and
        // only there: the type is used as written, so no other item adds an error about it.
        Some(meta) => quote_spanned!(meta.span()=> #meta),
        None => quote!(::presence_core::__private::Value),
    };
    // A named hook the struct does not implement fails where the impl refers to the hook's
    // trait: every such reference is spanned by the flag (with `Self`, not the struct's name,
    // whose span is the struct's), so the compiler reports the one unmet bound once, there.
    // The impl itself is unconditional, so the struct's other uses add no error.
    let extra = match &args.fetch {
        Some(key) => quote_spanned! {key.span()=>
            type Extra = <Self as ::presence_core::presence::Fetch>::Extra;
        },
        None => quote!(
            type Extra = ();
        ),
    };
    // The hook's state is type-erased, so that the trait's method signatures (`state:
    // Self::State`) are checked without the hook's trait: a missing impl is reported only at
    // the flag, not again in presence-core's source.
    let state = match &args.handle_metas {
        Some(key) => quote_spanned! {key.span()=>
            type State = ::presence_core::__private::HookState;
        },
        None => quote!(
            type State = ();
        ),
    };
    let name = match &args.name {
        Some(name) => quote!(#name),
        None => {
            let ident = ident.to_string();
            quote!(#ident)
        }
    };
    let fetches = args.fetch.is_some();
    let handles_metas = args.handle_metas.is_some();
    // Spanned by the user's expression, so a value that is not a pub/sub server is
    // underlined where it was written; the unmet bound is the public `Registry::pubsub`'s.
    let pubsub_call = match &args.pubsub {
        Some(pubsub) => quote_spanned! {pubsub.span()=>
            ::presence_core::registry::Registry::pubsub(registry, &(#pubsub))
        },
        // Only after a reported mistake: nothing runs.
        None => quote! {
            let _ = registry;
            ::core::unreachable!()
        },
    };
    let options = args.options.iter().map(|option| {
        let method = format_ident!("{}", option.key, span = option.key.span());
        let value = &option.value;
        quote!(.#method(#value))
    });
    let fetch = args.fetch.as_ref().map(|key| {
        quote_spanned! {key.span()=>
            fn run_fetch(
                &self,
                ctx: &#ctx_ty,
                topic: &#str_ty,
                presences: ::presence_core::presence::PresenceMap<Self>,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<
                    ::presence_core::presence::PresenceMap<Self>,
                    ::presence_core::presence::FetchError,
                >,
            > + ::core::marker::Send {
                <Self as ::presence_core::presence::Fetch>::fetch(self, ctx, topic, presences)
            }
        }
    });
    let init = match &args.handle_metas {
        Some(key) => quote_spanned! {key.span()=>
            fn run_init(
                &self,
                ctx: &#ctx_ty,
            ) -> ::core::result::Result<Self::State, ::presence_core::presence::InitError> {
                ::core::result::Result::map(
                    <Self as ::presence_core::presence::HandleMetas>::init(self, ctx),
                    ::presence_core::__private::HookState::new,
                )
            }
        },
        None => quote! {
            fn run_init(
                &self,
                _: &#ctx_ty,
            ) -> ::core::result::Result<Self::State, ::presence_core::presence::InitError> {
                ::core::result::Result::Ok(())
            }
        },
    };
    let handle_metas = args.handle_metas.as_ref().map(|key| {
        quote_spanned! {key.span()=>
            fn run_handle_metas(
                &self,
                ctx: &#ctx_ty,
                topic: &#str_ty,
                diff: &::presence_core::presence::PresenceDiff<Self>,
                presences: &::presence_core::presence::TopicMetas,
                state: Self::State,
            ) -> impl ::core::future::Future<Output = Self::State> + ::core::marker::Send {
                async move {
                    let state = state.take::<<Self as ::presence_core::presence::HandleMetas>::State>();
                    ::presence_core::__private::HookState::new(
                        <Self as ::presence_core::presence::HandleMetas>::handle_metas(
                            self, ctx, topic, diff, presences, state,
                        )
                        .await,
                    )
                }
            }
        }
    });
    quote! {
        #[automatically_derived]
        #[allow(clippy::all, clippy::pedantic, clippy::nursery)]
        impl ::presence_core::presence::Presence for #ident {
            type Meta = #meta;
            #extra
            #state
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
    let ident = &input.ident;
    let vis = &input.vis;
    let str_ty = quote!(::core::primitive::str);
    let result = quote!(::core::result::Result);
    let error = quote!(::presence_core::presence::PresenceError);
    let registry = quote!(::presence_core::registry::Registry);
    let socket = quote!(::presence_core::presence::PresenceSocket);
    let meta = quote!(<Self as ::presence_core::presence::Presence>::Meta);
    let not_running = format!(
        "`PresenceError::Registry` when `{ident}` (or its pub/sub) is not running in the \
         socket's registry"
    );
    let track_errors = format!(
        "{not_running}; `PresenceError::Track` when the socket already tracks `key`, the \
         tracker stopped or the meta does not serialize to a JSON object."
    );
    let update_errors = format!(
        "{not_running}; `PresenceError::Update` when the socket tracks nothing under `key`, \
         the tracker stopped or the meta does not serialize to a JSON object."
    );
    let not_running = format!("{not_running}.");
    // `list` and `get_by_key` return the futures of `__private` rather than being `async fn`s:
    // an `async fn` here would lay out the presence's entries in the user's crate, and so add
    // a second error at the derive when a named `fetch` is not implemented.
    quote! {
        #[allow(dead_code, unreachable_pub, clippy::all, clippy::pedantic, clippy::nursery)]
        impl #ident {
            /// A supervisor child that starts this presence, with `options` merged over the
            /// ones its `#[presence(...)]` sets.
            #[must_use = "a child spec does nothing until it is added to a `Supervisor`"]
            #vis fn child_spec(
                self,
                options: ::presence_core::presence::PresenceOptions,
            ) -> ::presence_core::supervisor::PresenceSpec<Self> {
                ::presence_core::supervisor::PresenceSpec::new(self, options)
            }

            /// The running presence in `registry`: list, count, track for any owner and
            /// topic through it.
            ///
            /// # Errors
            ///
            /// `PresenceError::Registry` when it is not running in `registry`.
            #vis fn running(
                registry: &#registry,
            ) -> #result<::presence_core::presence::PresenceHandle<Self>, #error> {
                ::presence_core::__private::running::<Self>(registry)
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

            /// Replaces the meta of the socket's presence under `key`.
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

            /// Replaces the meta of the socket's presence under `key` with what `f` makes of
            /// the current one.
            ///
            /// # Errors
            ///
            #[doc = #update_errors]
            #vis fn update_with(
                socket: &impl #socket,
                key: &#str_ty,
                f: impl ::core::ops::FnOnce(#meta) -> #meta,
            ) -> #result<::presence_core::PhxRef, #error> {
                ::presence_core::__private::update_with::<Self>(socket, key, f)
            }

            /// The presences of the socket's topic, grouped by key and fetched.
            ///
            /// # Errors
            ///
            #[doc = #not_running]
            #vis fn list(
                socket: &impl #socket,
            ) -> impl ::core::future::Future<
                Output = #result<::presence_core::presence::PresenceMap<Self>, #error>,
            > {
                ::presence_core::__private::list::<Self>(socket)
            }

            /// The entry of `key` in the socket's topic, fetched; `None` when nobody is there.
            ///
            /// # Errors
            ///
            #[doc = #not_running]
            #vis fn get_by_key(
                socket: &impl #socket,
                key: &#str_ty,
            ) -> impl ::core::future::Future<
                Output = #result<
                    ::core::option::Option<::presence_core::presence::PresenceEntry<Self>>,
                    #error,
                >,
            > {
                ::presence_core::__private::get_by_key::<Self>(socket, key)
            }

            /// How many keys and presences the socket's topic has, cluster-wide, without
            /// listing it.
            ///
            /// # Errors
            ///
            #[doc = #not_running]
            #vis fn count(
                socket: &impl #socket,
            ) -> #result<::presence_core::tracker::PresenceCount, #error> {
                ::presence_core::__private::count::<Self>(socket)
            }
        }
    }
}
