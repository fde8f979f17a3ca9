//! PURE: which sample fetches, converters and ACL keywords a config may
//! name. HAProxy's expressions (`hdr(host),lower`, `%[src]`, an ACL's
//! criterion) can read files (`map*`), the process's environment (`env`,
//! which holds the stats password), TLS secrets, or run Lua; those are
//! refused, and so is every name this list does not know.

/// Fetches that never read a file, the environment or a secret.
const FETCHES: &[&str] = &[
    "always_false",
    "always_true",
    "avg_queue",
    "base",
    "base32",
    "base32+src",
    "baseq",
    "bin",
    "bool",
    "connslots",
    "cook",
    "cook_cnt",
    "cook_val",
    "cookie",
    "cur_server_timeout",
    "cur_tunnel_timeout",
    "date",
    "date_us",
    "dst",
    "dst_conn",
    "dst_is_local",
    "dst_port",
    "hdr",
    "hdr_cnt",
    "hdr_ip",
    "hdr_val",
    "hostname",
    "http_first_req",
    "int",
    "ipv4",
    "ipv6",
    "last_rule_line",
    "meth",
    "method",
    "nbproc",
    "nbsrv",
    "path",
    "pathq",
    "payload",
    "payload_lv",
    "prio_class",
    "prio_offset",
    "proc",
    "query",
    "queue",
    "rand",
    "rdp_cookie",
    "rdp_cookie_cnt",
    "rep_ssl_hello_type",
    "req_len",
    "req_proto_http",
    "req_rdp_cookie",
    "req_rdp_cookie_cnt",
    "req_ssl_hello_type",
    "req_ssl_sni",
    "req_ssl_ver",
    "req_ver",
    "resp_ver",
    "scook",
    "scook_cnt",
    "scook_val",
    "shdr",
    "shdr_cnt",
    "shdr_ip",
    "shdr_val",
    "so_id",
    "so_name",
    "src",
    "status",
    "stopping",
    "str",
    "thread",
    "unique-id",
    "url",
    "url32",
    "url32+src",
    "url_ip",
    "url_param",
    "url_port",
    "urlp",
    "urlp_val",
    "uuid",
    "var",
    "wait_end",
];

/// Families of fetches about the request, the connection, the counters and
/// the proxies (`req.hdr`, `sc0_http_req_rate`, `ssl_fc_sni`, `be_conn` …).
const FETCH_FAMILIES: &[&str] = &[
    "req.", "res.", "capture.", "sc_", "sc0_", "sc1_", "sc2_", "src_", "table_", "ssl_", "fc_",
    "bc_", "be_", "fe_", "srv_", "cpu_", "lat_",
];

/// Suffixes that turn a fetch into an ACL keyword (`path_beg`, `hdr_sub`).
const ACL_SUFFIXES: &[&str] = &[
    "_beg", "_dir", "_dom", "_end", "_len", "_reg", "_sub", "_cnt", "_found", "_ip", "_val",
    "_str", "_int",
];

/// Converters that never read a file or run code.
const CONVERTERS: &[&str] = &[
    "add",
    "add_item",
    "and",
    "b64dec",
    "base64",
    "be2dec",
    "be2hex",
    "bool",
    "bytes",
    "capture-req",
    "capture-res",
    "concat",
    "cpl",
    "crc32",
    "crc32c",
    "cut_crlf",
    "digest",
    "div",
    "djb2",
    "even",
    "field",
    "fix_is_valid",
    "fix_tag_value",
    "hex",
    "hex2i",
    "hmac",
    "host_only",
    "htonl",
    "http_date",
    "iif",
    "in_table",
    "ipmask",
    "json",
    "json_query",
    "jwt_header_query",
    "jwt_payload_query",
    "language",
    "length",
    "lower",
    "ltime",
    "ltrim",
    "mod",
    "mqtt_field_value",
    "mqtt_is_valid",
    "mul",
    "nbsrv",
    "neg",
    "not",
    "odd",
    "or",
    "port_only",
    "protobuf",
    "regsub",
    "rtrim",
    "sdbm",
    "secure_memcmp",
    "set-var",
    "sha1",
    "sha2",
    "srv_queue",
    "strcmp",
    "sub",
    "ub64dec",
    "ub64enc",
    "ungrpc",
    "unset-var",
    "upper",
    "url_dec",
    "url_enc",
    "utime",
    "word",
    "wt6",
    "xor",
    "xxh3",
    "xxh32",
    "xxh64",
];

/// Actions written as calls (`set-var(txn.x)`, `sc-inc-gpc0(0)`), and the
/// data types a stick table stores (`store http_req_rate(10s)`).
const OTHER_CALLS: &[&str] = &[
    "set-var",
    "set-var-fmt",
    "unset-var",
    "sc-inc-gpc",
    "sc-inc-gpc0",
    "sc-inc-gpc1",
    "sc-set-gpt",
    "sc-set-gpt0",
    "sc-add-gpc",
    "conn_rate",
    "sess_rate",
    "http_req_rate",
    "http_err_rate",
    "http_fail_rate",
    "bytes_in_rate",
    "bytes_out_rate",
    "gpc",
    "gpc_rate",
    "gpc0_rate",
    "gpc1_rate",
    "gpt",
];

/// Why a fetch or converter name is refused, when it is a known danger.
fn danger(name: &str) -> Option<&'static str> {
    if name == "env" {
        Some("reads HAProxy's environment, which holds credentials")
    } else if name.starts_with("map") {
        Some("reads a map file")
    } else if name.starts_with("lua.") {
        Some("runs Lua")
    } else if name.contains("secret") || name.contains("session_key") {
        Some("reads TLS secrets")
    } else if name.starts_with("http_auth") {
        Some("needs a userlist section, which lbpool does not allow")
    } else if name == "jwt_verify" {
        Some("reads a key or certificate file")
    } else if name == "last_rule_file" || name.starts_with("internal.") {
        Some("exposes HAProxy's internals")
    } else {
        None
    }
}

fn is_fetch(name: &str) -> bool {
    danger(name).is_none()
        && (FETCHES.contains(&name) || FETCH_FAMILIES.iter().any(|f| name.starts_with(f)))
}

/// A fetch, or a fetch with an ACL match suffix.
fn is_acl_keyword(name: &str) -> bool {
    is_fetch(name)
        || ACL_SUFFIXES
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(is_fetch))
}

/// Checks a function-call name (`name(` in any word): a fetch, an ACL
/// keyword, a converter or an action written as a call.
pub fn call(name: &str) -> Result<(), String> {
    if let Some(why) = danger(name) {
        return Err(format!("'{name}(…)' {why}"));
    }
    if is_acl_keyword(name) || CONVERTERS.contains(&name) || OTHER_CALLS.contains(&name) {
        Ok(())
    } else {
        Err(format!(
            "'{name}(…)' is not a sample fetch, converter or action lbpool allows"
        ))
    }
}

/// Checks an ACL criterion (`path_beg`, `req.hdr(host),lower`): its fetch
/// must be allowed; calls inside are checked by [`calls`].
pub fn criterion(word: &str) -> Result<(), String> {
    let fetch = word.split(['(', ',']).next().unwrap_or(word);
    if let Some(why) = danger(fetch) {
        return Err(format!("'{fetch}' {why}"));
    }
    if is_acl_keyword(fetch) {
        Ok(())
    } else {
        Err(format!(
            "'{fetch}' is not a sample fetch or ACL keyword lbpool allows"
        ))
    }
}

/// Checks every `name(` in `word`, as HAProxy's expression parser would
/// find it (identifier characters, then an opening parenthesis), and the
/// fetch that starts each `%[…]` expression, with or without arguments.
pub fn calls(word: &str) -> Result<(), String> {
    for (_, expr) in word.match_indices("%[").map(|(i, _)| ((), &word[i + 2..])) {
        let fetch: String = expr
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
            .collect();
        if !fetch.is_empty() {
            criterion(&fetch)?;
        }
    }
    let is_id = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+');
    let bytes: Vec<char> = word.chars().collect();
    for (i, &c) in bytes.iter().enumerate() {
        if c != '(' {
            continue;
        }
        // Back over spaces, then over the identifier.
        let mut end = i;
        while end > 0 && bytes[end - 1] == ' ' {
            end -= 1;
        }
        let mut start = end;
        while start > 0 && is_id(bytes[start - 1]) {
            start -= 1;
        }
        if start < end {
            let name: String = bytes[start..end].iter().collect();
            call(&name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_calls_are_refused_by_name() {
        for word in [
            "%[env(STATS_PASSWORD)]",
            "%[req.hdr(host),map_dom(/etc/passwd)]",
            "%[src,map(/x)]",
            "lua.foo(1)",
            "%[ssl_fc_session_key(x)]",
            "%[str(a),jwt_verify(RS256,/etc/key.pem)]",
            "env (X)",
            "%[nosuchfetch(1)]",
        ] {
            assert!(calls(word).is_err(), "{word} passed");
        }
        for word in [
            "%[src]",
            "%[req.hdr(host),lower]",
            "set-var(txn.x)",
            "hdr_beg(host)",
            "%[sc0_http_req_rate(t)]",
            "(plain text)",
        ] {
            assert_eq!(calls(word), Ok(()), "{word}");
        }
    }

    #[test]
    fn acl_criteria_are_fetches_or_their_match_forms() {
        for ok in [
            "path_beg",
            "req.hdr(host),lower",
            "src",
            "hdr_sub(x)",
            "ssl_fc_sni",
        ] {
            assert_eq!(criterion(ok), Ok(()), "{ok}");
        }
        for bad in ["env(X)", "lua.x", "map_str", "nonsense", "http_auth(users)"] {
            assert!(criterion(bad).is_err(), "{bad}");
        }
    }
}
