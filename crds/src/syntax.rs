//! The syntax of every user value that reaches haproxy.cfg.
//!
//! Each rule exists twice, on purpose: as a regular expression for the CRD
//! schema (the API server rejects bad input and names the field) and as a
//! function the controller runs before rendering (a stored object may predate
//! the schema). A test holds the two equal. None of the allowed alphabets
//! contains white space, `#`, quotes, `\` or `$`: a value can never end an
//! HAProxy word, start a comment or expand a variable.

use std::time::Duration;

/// RFC 1035 label: a Service name.
pub const DNS_LABEL: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";
/// RFC 1123 subdomain: a Deployment, ConfigMap or Secret name.
pub const DNS_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// An HTTP path (with optional query) that is one HAProxy word.
pub const HTTP_PATH: &str = "^/[A-Za-z0-9._~!&()*+,;=:@%/?-]*$";
/// A plain HTTP path: unreserved characters and `/`, no query. Safe inside
/// an ACL (`{ path /metrics }`), where `(`, `)` and `,` would not be.
pub const PLAIN_PATH: &str = "^/[A-Za-z0-9._~/-]*$";
/// An HAProxy duration with a unit, positive, at most about four days so that
/// HAProxy's timers cannot overflow.
pub const DURATION: &str = "^([1-9][0-9]{0,5}(ms|s)|[1-9][0-9]{0,3}m|[1-9][0-9]?h)$";
/// An HTTP cookie name.
pub const COOKIE_NAME: &str = "^[A-Za-z0-9_.-]+$";
/// A ConfigMap data key.
pub const CONFIG_MAP_KEY: &str = "^[-._a-zA-Z0-9]+$";

fn alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// [`DNS_LABEL`], at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.ends_with(alnum_lower)
        && s.chars().all(|c| alnum_lower(c) || c == '-')
}

/// [`DNS_SUBDOMAIN`], at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            part.starts_with(alnum_lower)
                && part.ends_with(alnum_lower)
                && part.chars().all(|c| alnum_lower(c) || c == '-')
        })
}

/// [`HTTP_PATH`].
pub fn is_http_path(s: &str) -> bool {
    s.starts_with('/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._~!&()*+,;=:@%/?-".contains(c))
}

/// [`PLAIN_PATH`].
pub fn is_plain_path(s: &str) -> bool {
    s.starts_with('/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._~/-".contains(c))
}

/// [`COOKIE_NAME`].
pub fn is_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// [`CONFIG_MAP_KEY`].
pub fn is_config_map_key(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// Parses a [`DURATION`]; `None` for anything the pattern rejects.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = s.split_at(split);
    let max_digits = match unit {
        "ms" | "s" => 6,
        "m" => 4,
        "h" => 2,
        _ => return None,
    };
    if digits.is_empty() || digits.len() > max_digits || digits.starts_with('0') {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => Duration::from_secs(n * 3600),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use regex::Regex;

    type Rule = (&'static str, &'static str, fn(&str) -> bool);

    fn rules() -> Vec<Rule> {
        vec![
            ("DNS_LABEL", DNS_LABEL, |s| is_dns_label(s)),
            ("DNS_SUBDOMAIN", DNS_SUBDOMAIN, |s| is_dns_subdomain(s)),
            ("HTTP_PATH", HTTP_PATH, is_http_path),
            ("PLAIN_PATH", PLAIN_PATH, is_plain_path),
            ("COOKIE_NAME", COOKIE_NAME, is_cookie_name),
            ("CONFIG_MAP_KEY", CONFIG_MAP_KEY, is_config_map_key),
            ("DURATION", DURATION, |s| parse_duration(s).is_some()),
        ]
    }

    /// The functions add length limits that the CRD states with maxLength.
    fn within_length(name: &str, s: &str) -> bool {
        match name {
            "DNS_LABEL" => s.len() <= 63,
            "DNS_SUBDOMAIN" => s.len() <= 253,
            _ => true,
        }
    }

    fn assert_agree(s: &str) {
        for (name, pattern, f) in rules() {
            let re = Regex::new(pattern).expect("pattern compiles");
            let by_regex = re.is_match(s) && within_length(name, s);
            assert_eq!(f(s), by_regex, "{name} disagrees with its pattern on {s:?}");
        }
    }

    #[test]
    fn functions_match_patterns_on_chosen_inputs() {
        for s in [
            "",
            "a",
            "a-",
            "-a",
            "webapp",
            "web.app",
            "web..app",
            "Web",
            "9lives",
            "/",
            "/health",
            "/a b",
            "/#",
            "/\"",
            "/'",
            "/$x",
            "/ok?x=1",
            "/é",
            "SERVERID",
            "a b",
            "a\nb",
            "5s",
            "500ms",
            "0s",
            "05s",
            "1m",
            "9999m",
            "10000m",
            "99h",
            "100h",
            "1d",
            "s",
            "1.5s",
            "999999s",
            "1000000s",
            "haproxy.cfg.hbs",
            "key/with/slash",
        ] {
            assert_agree(s);
        }
    }

    proptest! {
        #[test]
        fn functions_match_patterns(s in "[ -~\n\té]{0,12}") {
            assert_agree(&s);
        }

        #[test]
        fn no_value_accepted_by_any_rule_can_break_an_haproxy_word(s in "\\PC{0,16}") {
            for (name, _, f) in rules() {
                if f(&s) {
                    prop_assert!(
                        !s.contains(|c: char| c.is_whitespace() || "#'\"\\$".contains(c) || !c.is_ascii()),
                        "{} accepted {:?}", name, s
                    );
                }
            }
        }
    }

    #[test]
    fn durations_parse_to_their_value() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("99h"), Some(Duration::from_secs(99 * 3600)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("5"), None);
    }
}
