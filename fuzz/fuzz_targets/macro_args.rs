//! The `#[derive(Presence)]` / `#[presence(...)]` argument parser (`ArgsParser`) and the
//! expansions (`expand::derive`, `expand::attribute`) on arbitrary token streams: they must
//! answer with code or compile errors, never panic, and what they answer must lex again.
//!
//! A proc-macro crate exports nothing but its macros, so this target compiles presence-macros'
//! own source modules against proc-macro2 (its fallback, outside a compiler), syn and quote.
//! The input is UTF-8 text: the macro arguments, then optionally a NUL and the item. Text that
//! does not lex as Rust tokens is skipped, as the compiler never hands it to a macro.
#![no_main]

use std::str::FromStr;

use proc_macro2::TokenStream;

#[allow(dead_code, unreachable_pub)]
#[path = "../../presence-macros/src/args.rs"]
mod args;
#[allow(dead_code, unreachable_pub)]
#[path = "../../presence-macros/src/errors.rs"]
mod errors;
#[allow(dead_code, unreachable_pub)]
#[path = "../../presence-macros/src/expand.rs"]
mod expand;
#[allow(dead_code, unreachable_pub)]
#[path = "../../presence-macros/src/input.rs"]
mod input;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (args_text, item_text) = text.split_once('\0').unwrap_or((text, "pub struct Fuzz;"));
    if let Ok(args) = TokenStream::from_str(args_text) {
        let mut errors = errors::Errors::default();
        let mut parser = args::ArgsParser::default();
        parser.parse(args.clone(), &mut errors);
        let _ = parser.finish(TokenStream::new(), &mut errors);
        let _ = errors.finish();
        if let Ok(item) = TokenStream::from_str(item_text) {
            lexes(&expand::attribute(args, item));
        }
    }
    // The same arguments in the derive's helper attribute, and the whole text as the derive's
    // input.
    if let Ok(input) = TokenStream::from_str(&format!("#[presence({args_text})] {item_text}")) {
        lexes(&expand::derive(input));
    }
    if let Ok(input) = TokenStream::from_str(text) {
        lexes(&expand::derive(input));
    }
});

/// What a macro returns must be tokens the compiler can read again.
fn lexes(out: &TokenStream) {
    let text = out.to_string();
    assert!(
        TokenStream::from_str(&text).is_ok(),
        "the expansion does not lex: {text}"
    );
}
