//! The `#[presence]` attribute macro. Use it through `presence_core::presence`.

use proc_macro::TokenStream;

/// Declares a presence. See `presence_core::presence`.
#[proc_macro_attribute]
pub fn presence(args: TokenStream, item: TokenStream) -> TokenStream {
    let _ = args;
    item
}
