//! Which pages may open a socket: Phoenix's `check_origin`, on by default.
//!
//! A browser sends the page's origin with every websocket handshake, and sends the user's
//! cookies along whatever the page. Without a check, a page on any other site can open the
//! app's socket as the user (cross-site websocket hijacking). Clients that are not browsers
//! send no `Origin` header and are not checked.

use std::fmt;
use std::sync::Arc;

/// The origin check of a [`PhoenixSocket`](crate::PhoenixSocket); see
/// [`PhoenixSocketBuilder::check_origin`](crate::PhoenixSocketBuilder::check_origin).
///
/// # Examples
///
/// ```
/// use presence_poem::CheckOrigin;
///
/// let check = CheckOrigin::allow(["https://example.com", "//*.example.com"])?;
/// assert!(check.allows("https://example.com", "ignored"));
/// assert!(check.allows("http://app.example.com:8080", "ignored"));
/// assert!(!check.allows("https://example.com.evil.io", "ignored"));
/// # Ok::<(), presence_poem::InvalidOrigin>(())
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum CheckOrigin {
    /// The default: the origin's host and port must be the request's `Host`.
    #[default]
    SameHost,
    /// One of these origins (see [`CheckOrigin::allow`]).
    Allow(Vec<OriginPattern>),
    /// A predicate on the `Origin` header's value.
    Custom(Arc<dyn Fn(&str) -> bool + Send + Sync>),
    /// No check at all: any page may open a socket as its user. Only for sockets that
    /// authenticate with something a foreign page cannot send (a token, not a cookie).
    Off,
}

impl fmt::Debug for CheckOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckOrigin::SameHost => f.write_str("SameHost"),
            CheckOrigin::Allow(list) => f.debug_tuple("Allow").field(list).finish(),
            CheckOrigin::Custom(_) => f.write_str("Custom(..)"),
            CheckOrigin::Off => f.write_str("Off"),
        }
    }
}

/// An origin pattern that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid origin pattern {0:?}: expected \"scheme://host[:port]\" or \"//host[:port]\", the host optionally starting with \"*.\""
)]
pub struct InvalidOrigin(pub String);

/// One allowed origin, as Phoenix writes them: `"https://example.com"` (that scheme, its
/// default port), `"//example.com"` (any scheme, any port), `"//*.example.com"` (any
/// subdomain, not the domain itself), `"https://example.com:8443"` (that port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: Option<String>,
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl OriginPattern {
    /// Parses one pattern.
    ///
    /// # Errors
    ///
    /// [`InvalidOrigin`] when it is not of the forms above.
    pub fn parse(pattern: &str) -> Result<Self, InvalidOrigin> {
        let invalid = || InvalidOrigin(pattern.to_owned());
        let (scheme, rest) = match pattern.split_once("//") {
            Some(("", rest)) => (None, rest),
            Some((scheme, rest)) => {
                let scheme = scheme.strip_suffix(':').ok_or_else(invalid)?;
                if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(invalid());
                }
                (Some(scheme.to_ascii_lowercase()), rest)
            }
            None => return Err(invalid()),
        };
        let (host, port) = split_port(rest).ok_or_else(invalid)?;
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(host) => (true, host),
            None => (false, host),
        };
        let valid_host = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
        if !valid_host {
            return Err(invalid());
        }
        Ok(OriginPattern {
            scheme,
            host: host.to_ascii_lowercase(),
            wildcard,
            port,
        })
    }

    fn matches(&self, origin: &Origin<'_>) -> bool {
        if self.scheme.as_deref().is_some_and(|s| s != origin.scheme) {
            return false;
        }
        let host_ok = if self.wildcard {
            origin
                .host
                .strip_suffix(self.host.as_str())
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
        } else {
            origin.host == self.host
        };
        let port_ok = match (self.port, &self.scheme) {
            (Some(port), _) => origin.port == Some(port),
            // A scheme without a port means that scheme's default port.
            (None, Some(_)) => origin.port.is_none(),
            (None, None) => true,
        };
        host_ok && port_ok
    }
}

impl CheckOrigin {
    /// Allows exactly these origins (Phoenix's list form, see [`OriginPattern`]).
    ///
    /// # Errors
    ///
    /// [`InvalidOrigin`] naming the first pattern that does not parse.
    pub fn allow<I, S>(patterns: I) -> Result<Self, InvalidOrigin>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        patterns
            .into_iter()
            .map(|p| OriginPattern::parse(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(CheckOrigin::Allow)
    }

    /// A custom check on the `Origin` header's value.
    pub fn custom(check: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        CheckOrigin::Custom(Arc::new(check))
    }

    /// Whether a handshake with this `Origin` header, sent to this `Host`, may go on. (A
    /// request without an `Origin` header is not checked: see [`PhoenixSocketBuilder::check_origin`](crate::PhoenixSocketBuilder::check_origin).)
    pub fn allows(&self, origin: &str, host: &str) -> bool {
        match self {
            CheckOrigin::Off => true,
            CheckOrigin::Custom(check) => check(origin),
            CheckOrigin::SameHost => {
                let (Some(origin), Some((host, port))) = (Origin::parse(origin), split_port(host))
                else {
                    return false;
                };
                let port = port.filter(|p| Some(*p) != default_port(origin.scheme));
                origin.host == host.to_ascii_lowercase() && origin.port == port
            }
            CheckOrigin::Allow(patterns) => {
                Origin::parse(origin).is_some_and(|o| patterns.iter().any(|p| p.matches(&o)))
            }
        }
    }
}

/// A parsed `Origin` header: scheme, lowercased host, and the port unless it is the scheme's
/// default.
struct Origin<'a> {
    scheme: &'a str,
    host: String,
    port: Option<u16>,
}

impl<'a> Origin<'a> {
    fn parse(value: &'a str) -> Option<Self> {
        let (scheme, rest) = value.split_once("://")?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return None;
        }
        let (host, port) = split_port(rest)?;
        if host.is_empty() {
            return None;
        }
        let port = port.filter(|p| Some(*p) != default_port(scheme));
        Some(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// `host[:port]` (an IPv6 host in brackets); `None` when the port is not a number.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let port_at = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => Some(i),
        _ => None,
    };
    match port_at {
        Some(i) => Some((&authority[..i], Some(authority[i + 1..].parse().ok()?))),
        None => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_host_compares_host_and_port() {
        let check = CheckOrigin::SameHost;
        assert!(check.allows("http://127.0.0.1:4000", "127.0.0.1:4000"));
        assert!(check.allows("https://Example.com", "example.com"));
        assert!(check.allows("https://example.com", "example.com:443"));
        assert!(!check.allows("http://127.0.0.1:4001", "127.0.0.1:4000"));
        assert!(!check.allows("http://evil.io", "example.com"));
        assert!(!check.allows("http://example.com.evil.io", "example.com"));
        assert!(!check.allows("null", "example.com"));
        assert!(!check.allows("garbage", "example.com"));
        assert!(check.allows("http://[::1]:4000", "[::1]:4000"));
    }

    #[test]
    fn phoenix_style_lists() {
        let check = CheckOrigin::allow([
            "//example.com",
            "https://secure.io",
            "//*.apps.net",
            "http://local.dev:8080",
        ])
        .unwrap();
        assert!(check.allows("http://example.com", ""));
        assert!(check.allows("https://example.com:8443", ""));
        assert!(check.allows("https://secure.io", ""));
        assert!(
            !check.allows("http://secure.io", ""),
            "scheme given: that scheme"
        );
        assert!(
            !check.allows("https://secure.io:8443", ""),
            "scheme given: its port"
        );
        assert!(check.allows("https://a.apps.net", ""));
        assert!(check.allows("https://a.b.apps.net", ""));
        assert!(
            !check.allows("https://apps.net", ""),
            "the wildcard needs a subdomain"
        );
        assert!(!check.allows("https://evilapps.net", ""));
        assert!(check.allows("http://local.dev:8080", ""));
        assert!(!check.allows("http://local.dev", ""));
        assert!(!check.allows("http://other.com", ""));
    }

    #[test]
    fn bad_patterns_are_errors() {
        for bad in [
            "example.com",
            "https:/x",
            "//",
            "//*.",
            "//a:b",
            "ht tp://a",
        ] {
            assert!(CheckOrigin::allow([bad]).is_err(), "{bad}");
        }
        let custom = CheckOrigin::custom(|o| o.ends_with(".trusted"));
        assert!(custom.allows("https://x.trusted", ""));
        assert!(!custom.allows("https://x.untrusted.io", ""));
        assert!(CheckOrigin::Off.allows("anything", ""));
    }
}
