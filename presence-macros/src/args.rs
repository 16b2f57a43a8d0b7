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
    pub(crate) const HANDLE_METAS: &str = "handle_metas";
    /// No longer an argument: `init` is part of `HandleMetas`.
    pub(crate) const INIT: &str = "init";
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

/// The tracker options that are durations.
const DURATION_OPTIONS: [&str; 4] = [
    "broadcast_period",
    "down_period",
    "permdown_period",
    "diff_window",
];

/// Whether `expr` is a literal for which `pred` holds (a negative number counts).
fn is_literal(expr: &Expr, pred: impl Fn(&syn::Lit) -> bool) -> bool {
    match expr {
        Expr::Lit(lit) => pred(&lit.lit),
        Expr::Unary(unary) => is_literal(&unary.expr, pred),
        Expr::Group(group) => is_literal(&group.expr, pred),
        Expr::Paren(paren) => is_literal(&paren.expr, pred),
        _ => false,
    }
}

/// Every valid argument, for the "unknown argument" message.
fn valid_arguments() -> String {
    let mut names = vec![
        "pubsub = <expr>".to_owned(),
        "meta = <type>".to_owned(),
        "name = <&str>".to_owned(),
        "fetch".to_owned(),
        "handle_metas".to_owned(),
    ];
    names.extend(TRACKER_OPTIONS.iter().map(|o| format!("{o} = <expr>")));
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every argument name, for "did you mean".
fn argument_names() -> impl Iterator<Item = &'static str> {
    [kw::PUBSUB, kw::META, kw::NAME, kw::FETCH, kw::HANDLE_METAS]
        .into_iter()
        .chain(TRACKER_OPTIONS)
}

/// The valid argument closest to `name`, when it is close enough to be a typo.
fn did_you_mean(name: &str) -> Option<&'static str> {
    argument_names()
        .map(|valid| (edit_distance(name, valid), valid))
        .filter(|(d, valid)| *d <= (valid.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, valid)| valid)
}

/// Levenshtein distance, by bytes (argument names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::{did_you_mean, edit_distance};

    #[test]
    fn typos_get_a_suggestion_and_strangers_do_not() {
        assert_eq!(edit_distance("pubsub", "pubsub"), 0);
        assert_eq!(edit_distance("pubsbu", "pubsub"), 2);
        assert_eq!(edit_distance("", "meta"), 4);
        assert_eq!(did_you_mean("pubsbu"), Some("pubsub"));
        assert_eq!(did_you_mean("pub_sub"), Some("pubsub"));
        assert_eq!(did_you_mean("handle_meta"), Some("handle_metas"));
        assert_eq!(did_you_mean("fetches"), Some("fetch"));
        assert_eq!(did_you_mean("pool"), None);
        assert_eq!(did_you_mean("color"), None);
    }
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
    handle_metas: Option<Arg<()>>,
    options: [Option<Arg<Expr>>; TRACKER_OPTIONS.len()],
    /// The first key written, where mistakes about the arguments as a whole are reported.
    first_key: Option<Ident>,
    /// Whether a mistake about `pubsub` was already reported (`pubsub` without a value, a
    /// misspelled `pubsub`), so that it is not reported again as missing.
    pubsub_reported: bool,
}

/// The arguments that were written correctly. When there were mistakes, they are still used
/// to declare the presence (without `pubsub` if it was wrong), so that the struct's other
/// uses do not add errors to the ones reported.
pub(crate) struct Args {
    /// The pub/sub server expression; `None` only after a reported mistake.
    pub(crate) pubsub: Option<Expr>,
    /// The meta type, `None` for a JSON object.
    pub(crate) meta: Option<Type>,
    /// The tracker name, `None` for the struct's name.
    pub(crate) name: Option<Expr>,
    /// The `fetch` flag's key, when given.
    pub(crate) fetch: Option<Ident>,
    /// The `handle_metas` flag's key, when given.
    pub(crate) handle_metas: Option<Ident>,
    /// The tracker options given, as (builder method, value), in [`TRACKER_OPTIONS`] order.
    pub(crate) options: Vec<Arg<Expr>>,
    /// Where to report a hook implemented but not named: the first argument's key.
    pub(crate) span: Span,
    /// The arguments as written, for messages that show the attribute to write.
    pub(crate) written: String,
}

/// Collects the arguments of one or more `#[presence(...)]` lists.
#[derive(Default)]
pub(crate) struct ArgsParser {
    raw: RawArgs,
    written: Vec<String>,
    malformed: bool,
}

impl ArgsParser {
    /// Notes that the arguments as a whole were already reported as wrong (`#[presence]`
    /// without a list), so that `pubsub` is not reported missing as well.
    pub(crate) fn reported(&mut self) {
        self.raw.pubsub_reported = true;
    }

    /// Parses one list's arguments, pushing every problem to `errors`.
    pub(crate) fn parse(&mut self, tokens: TokenStream, errors: &mut Errors) {
        let text = tokens.to_string();
        if !text.trim().is_empty() {
            self.written.push(text);
        }
        let raw = &mut self.raw;
        let parser = syn::meta::parser(|meta| raw.parse_one(&meta, errors));
        if let Err(error) = parser.parse2(tokens) {
            // Malformed syntax: the rest cannot be trusted (e.g. `pubsub` may be "missing"
            // only because parsing stopped before it).
            errors.push(error);
            self.malformed = true;
        }
    }

    /// The arguments written correctly, or `None` when their syntax is broken; a missing
    /// `pubsub` is reported spanning `missing_at` (the arguments, or the attribute's name).
    pub(crate) fn finish(self, missing_at: TokenStream, errors: &mut Errors) -> Option<Args> {
        if self.malformed {
            return None;
        }
        let written = self.written.join(", ");
        self.raw.validate(missing_at, written, errors)
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
        if self.first_key.is_none() {
            self.first_key = Some(key.clone());
        }
        match name.as_str() {
            kw::PUBSUB => match value(meta, &key, "AppPubSub", errors)? {
                Some(value) => set_once(&mut self.pubsub, key, value, errors),
                None => self.pubsub_reported = true,
            },
            kw::META => {
                if let Some(value) = value(meta, &key, "<type>", errors)? {
                    set_once(&mut self.meta, key, value, errors);
                }
            }
            kw::NAME => {
                if let Some(value) = value::<Expr>(meta, &key, "\"RoomPresence\"", errors)? {
                    if is_literal(&value, |lit| !matches!(lit, syn::Lit::Str(_))) {
                        errors.spanned(
                            &value,
                            "`name` is a string: write `name = \"RoomPresence\"`",
                        );
                    } else {
                        set_once(&mut self.name, key, value, errors);
                    }
                }
            }
            kw::FETCH | kw::HANDLE_METAS => {
                flag(meta, &key, errors)?;
                let slot = match name.as_str() {
                    kw::FETCH => &mut self.fetch,
                    _ => &mut self.handle_metas,
                };
                set_once(slot, key, (), errors);
            }
            kw::INIT => {
                skip_value(meta.input)?;
                errors.spanned(
                    &key,
                    "`init` is no longer an argument: it is a method of `HandleMetas`; write \
                     `handle_metas` and implement `HandleMetas` (with `init` and `handle_metas`)",
                );
            }
            option => match TRACKER_OPTIONS.iter().position(|o| *o == option) {
                Some(i) => {
                    if let Some(value) = value::<Expr>(meta, &key, "<expr>", errors)? {
                        let bare_number = DURATION_OPTIONS.contains(&option)
                            && is_literal(&value, |lit| {
                                matches!(lit, syn::Lit::Int(_) | syn::Lit::Float(_))
                            });
                        if bare_number {
                            errors.spanned(
                                &value,
                                format!(
                                    "`{option}` is a `Duration`, and a bare number has no unit: \
                                     write e.g. `{option} = std::time::Duration::from_millis({})`",
                                    quote::ToTokens::to_token_stream(&value)
                                ),
                            );
                        } else {
                            set_once(&mut self.options[i], key, value, errors);
                        }
                    }
                }
                None => {
                    skip_value(meta.input)?;
                    let suggestion = did_you_mean(&name);
                    if suggestion == Some(kw::PUBSUB) {
                        self.pubsub_reported = true;
                    }
                    let message = match suggestion {
                        Some(valid) => {
                            format!("unknown presence argument `{name}`; did you mean `{valid}`?")
                        }
                        None => format!(
                            "unknown presence argument `{name}`; expected one of: {}",
                            valid_arguments()
                        ),
                    };
                    errors.spanned(&key, message);
                }
            },
        }
        Ok(())
    }

    fn validate(
        self,
        missing_at: TokenStream,
        written: String,
        errors: &mut Errors,
    ) -> Option<Args> {
        if let Some(meta) = &self.meta {
            check_meta_type(&meta.value, errors);
        }
        let first_span = missing_at
            .clone()
            .into_iter()
            .next()
            .map_or_else(Span::call_site, |t| t.span());
        if self.pubsub.is_none() && !self.pubsub_reported {
            errors.spanned(
                missing_at,
                "missing `pubsub` argument: write `#[presence(pubsub = AppPubSub)]`, naming a \
                 server declared with `presence_core::pubsub_server!(pub AppPubSub);`",
            );
        }
        let span = self.first_key.map_or(first_span, |k| k.span());
        Some(Args {
            pubsub: self.pubsub.map(|a| a.value),
            meta: self.meta.map(|a| a.value),
            name: self.name.map(|a| a.value),
            fetch: self.fetch.map(|a| a.key),
            handle_metas: self.handle_metas.map(|a| a.key),
            options: self.options.into_iter().flatten().collect(),
            span,
            written,
        })
    }
}

/// Reports meta types that cannot serialize to a JSON object (Phoenix puts `phx_ref` in
/// every meta): scalars, strings, sequences, tuples, arrays and references to those. Types
/// the macro cannot see through are checked when tracked.
fn check_meta_type(ty: &Type, errors: &mut Errors) {
    const NOT_OBJECTS: [&str; 25] = [
        "bool",
        "char",
        "str",
        "String",
        "i8",
        "i16",
        "i32",
        "i64",
        "i128",
        "isize",
        "u8",
        "u16",
        "u32",
        "u64",
        "u128",
        "usize",
        "f32",
        "f64",
        "Vec",
        "VecDeque",
        "HashSet",
        "BTreeSet",
        "Option",
        "PhantomData",
        "Cow",
    ];
    let not_object = match ty {
        Type::Tuple(_) | Type::Array(_) | Type::Slice(_) => true,
        Type::Reference(r) => {
            check_meta_type(&r.elem, errors);
            return;
        }
        Type::Paren(p) => {
            check_meta_type(&p.elem, errors);
            return;
        }
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|last| NOT_OBJECTS.contains(&last.ident.to_string().as_str())),
        _ => false,
    };
    if not_object {
        errors.spanned(
            ty,
            format!(
                "`{}` cannot be a meta: a meta must serialize to a JSON object (Phoenix puts \
                 `phx_ref` in it); use a struct with named fields, e.g. \
                 `#[derive(Serialize, Deserialize)] struct UserMeta {{ status: String }}`, \
                 or a map",
                quote::ToTokens::to_token_stream(ty)
                    .to_string()
                    .replace(' ', "")
            ),
        );
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
