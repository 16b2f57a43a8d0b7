//! The attribute's arguments, parsed with `syn::meta::parser`.
//!
//! Every argument is stored once by [`set_once`]; problems are pushed to [`Errors`] so that
//! one compile reports all of them.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::meta::ParseNestedMeta;
use syn::parse::{ParseStream, Parser};
use syn::{Expr, Ident, Token, Type};

use crate::errors::Errors;

/// The argument names, in one place.
mod kw {
    pub(crate) const PUBSUB: &str = "pubsub";
    pub(crate) const META: &str = "meta";
    pub(crate) const NAME: &str = "name";
    pub(crate) const FETCH: &str = "fetch";
    pub(crate) const INIT: &str = "init";
    pub(crate) const HANDLE_METAS: &str = "handle_metas";
}

/// The tracker options, each a `PresenceOptions` builder method of the same name.
pub(crate) const TRACKER_OPTIONS: [&str; 8] = [
    "pool_size",
    "broadcast_period",
    "max_silent_periods",
    "down_period",
    "permdown_period",
    "clock_sample_periods",
    "max_delta_sizes",
    "diff_window",
];

/// Every valid argument, for the "unknown argument" message.
fn valid_arguments() -> String {
    let mut names = vec![
        "pubsub = <expr>".to_owned(),
        "meta = <type>".to_owned(),
        "name = <&str>".to_owned(),
        "fetch".to_owned(),
        "init".to_owned(),
        "handle_metas".to_owned(),
    ];
    names.extend(TRACKER_OPTIONS.iter().map(|o| format!("{o} = <expr>")));
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One argument as written: its key (for spans) and its value.
pub(crate) struct Arg<T> {
    pub(crate) key: Ident,
    pub(crate) value: T,
}

/// The arguments as written, before the required ones are checked.
#[derive(Default)]
struct RawArgs {
    pubsub: Option<Arg<Expr>>,
    meta: Option<Arg<Type>>,
    name: Option<Arg<Expr>>,
    fetch: Option<Arg<()>>,
    init: Option<Arg<()>>,
    handle_metas: Option<Arg<()>>,
    options: [Option<Arg<Expr>>; TRACKER_OPTIONS.len()],
}

/// Valid arguments: `pubsub` is given, `handle_metas` comes with `init`.
pub(crate) struct Args {
    /// The pub/sub server expression.
    pub(crate) pubsub: Expr,
    /// The meta type, `None` for a JSON object.
    pub(crate) meta: Option<Type>,
    /// The tracker name, `None` for the struct's path.
    pub(crate) name: Option<Expr>,
    /// The `fetch` flag's key, when given.
    pub(crate) fetch: Option<Ident>,
    /// The `init` flag's key, when given.
    pub(crate) init: Option<Ident>,
    /// The `handle_metas` flag's key, when given.
    pub(crate) handle_metas: Option<Ident>,
    /// The tracker options given, as (builder method, value), in [`TRACKER_OPTIONS`] order.
    pub(crate) options: Vec<Arg<Expr>>,
}

impl Args {
    /// Parses the attribute's arguments, pushing every problem to `errors`.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Option<Args> {
        let mut raw = RawArgs::default();
        let parser = syn::meta::parser(|meta| raw.parse_one(&meta, errors));
        if let Err(error) = parser.parse2(tokens) {
            // Malformed syntax: the rest cannot be trusted (e.g. `pubsub` may be "missing"
            // only because parsing stopped before it).
            errors.push(error);
            return None;
        }
        raw.validate(errors)
    }
}

impl RawArgs {
    fn parse_one(&mut self, meta: &ParseNestedMeta<'_>, errors: &mut Errors) -> syn::Result<()> {
        let Some(key) = meta.path.get_ident().cloned() else {
            skip_value(meta.input)?;
            errors.spanned(
                &meta.path,
                format!(
                    "unknown presence argument; expected one of: {}",
                    valid_arguments()
                ),
            );
            return Ok(());
        };
        let name = key.to_string();
        match name.as_str() {
            kw::PUBSUB => {
                if let Some(value) = value(meta, &key, "<expr>", errors)? {
                    set_once(&mut self.pubsub, key, value, errors);
                }
            }
            kw::META => {
                if let Some(value) = value(meta, &key, "<type>", errors)? {
                    set_once(&mut self.meta, key, value, errors);
                }
            }
            kw::NAME => {
                if let Some(value) = value(meta, &key, "\"Name\"", errors)? {
                    set_once(&mut self.name, key, value, errors);
                }
            }
            kw::FETCH | kw::INIT | kw::HANDLE_METAS => {
                flag(meta, &key, errors)?;
                let slot = match name.as_str() {
                    kw::FETCH => &mut self.fetch,
                    kw::INIT => &mut self.init,
                    _ => &mut self.handle_metas,
                };
                set_once(slot, key, (), errors);
            }
            option => match TRACKER_OPTIONS.iter().position(|o| *o == option) {
                Some(i) => {
                    if let Some(value) = value(meta, &key, "<expr>", errors)? {
                        set_once(&mut self.options[i], key, value, errors);
                    }
                }
                None => {
                    skip_value(meta.input)?;
                    errors.spanned(
                        &key,
                        format!(
                            "unknown presence argument `{name}`; expected one of: {}",
                            valid_arguments()
                        ),
                    );
                }
            },
        }
        Ok(())
    }

    fn validate(self, errors: &mut Errors) -> Option<Args> {
        if let (Some(handle_metas), None) = (&self.handle_metas, &self.init) {
            errors.spanned(
                &handle_metas.key,
                "handle_metas needs init: write `#[presence(pubsub = ..., init, handle_metas)]` \
                 and implement `Init`",
            );
        }
        let Some(pubsub) = self.pubsub else {
            errors.at(
                Span::call_site(),
                "missing `pubsub` argument: expected `#[presence(pubsub = <expr>)]`, \
                 e.g. `#[presence(pubsub = AppPubSub)]`",
            );
            return None;
        };
        if self.handle_metas.is_some() && self.init.is_none() {
            return None;
        }
        Some(Args {
            pubsub: pubsub.value,
            meta: self.meta.map(|a| a.value),
            name: self.name.map(|a| a.value),
            fetch: self.fetch.map(|a| a.key),
            init: self.init.map(|a| a.key),
            handle_metas: self.handle_metas.map(|a| a.key),
            options: self.options.into_iter().flatten().collect(),
        })
    }
}

/// Stores an argument, or reports a repeat at its second key.
fn set_once<T>(slot: &mut Option<Arg<T>>, key: Ident, value: T, errors: &mut Errors) {
    if slot.is_some() {
        errors.spanned(
            &key,
            format!("duplicate `{key}` argument: it is already given; remove one"),
        );
    } else {
        *slot = Some(Arg { key, value });
    }
}

/// The value of `key = value`, or `None` (reported) when the key has none.
fn value<T: syn::parse::Parse>(
    meta: &ParseNestedMeta<'_>,
    key: &Ident,
    example: &str,
    errors: &mut Errors,
) -> syn::Result<Option<T>> {
    if meta.input.peek(Token![=]) {
        return meta.value()?.parse().map(Some);
    }
    skip_value(meta.input)?;
    errors.spanned(
        key,
        format!("`{key}` needs a value: write `{key} = {example}`"),
    );
    Ok(None)
}

/// Checks that a flag has no value (reported on the value when it has one).
fn flag(meta: &ParseNestedMeta<'_>, key: &Ident, errors: &mut Errors) -> syn::Result<()> {
    if meta.input.is_empty() || meta.input.peek(Token![,]) {
        return Ok(());
    }
    let eq = meta.input.parse::<Option<Token![=]>>()?;
    let rest = skip_value(meta.input)?;
    let mut value = TokenStream::new();
    quote::ToTokens::to_tokens(&eq, &mut value);
    value.extend(rest);
    errors.spanned(
        value,
        format!("`{key}` is a flag and takes no value: write just `{key}`"),
    );
    Ok(())
}

/// Consumes whatever follows a key, up to the next `,`.
fn skip_value(input: ParseStream<'_>) -> syn::Result<TokenStream> {
    let mut skipped = TokenStream::new();
    while !input.is_empty() && !input.peek(Token![,]) {
        skipped.extend([input.parse::<TokenTree>()?]);
    }
    Ok(skipped)
}
