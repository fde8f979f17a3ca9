//! PURE: splits haproxy.cfg into lines of words the way HAProxy's own
//! parser does (`parse_line()`), so the allowlist judges exactly the words
//! HAProxy will act on: quotes removed, escapes decoded, comments dropped.
//!
//! Where HAProxy would expand something at parse time, the lexer records it
//! instead of guessing: every `$` outside single quotes (environment
//! expansion, quoted or not) is reported with the variable it names, so the
//! allowlist can refuse all but the ones lbpool declares.

/// One configuration line, as HAProxy reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in the config.
    pub number: usize,
    /// The words, quotes removed and escapes decoded.
    pub words: Vec<String>,
    /// Environment variables the line expands (`"${NAME}"`, `"$NAME"`).
    pub env: Vec<String>,
}

/// Why a line cannot be read safely; the allowlist refuses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LexError {
    /// A control character (other than a tab) in the line or decoded from an escape.
    ControlCharacter,
    /// A quote opened and never closed.
    UnclosedQuote,
    /// A `$` outside single quotes that does not name a variable.
    BadExpansion,
    /// A backslash before a tab: HAProxy keeps the backslash and splits
    /// the word at the tab, so it cannot be read one way only.
    TabEscape,
}

impl std::fmt::Display for LexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LexError::ControlCharacter => "a control character is not allowed",
            LexError::UnclosedQuote => "a quote is never closed",
            LexError::TabEscape => "a backslash before a tab is not allowed (HAProxy splits the word there)",
            LexError::BadExpansion => {
                "a '$' outside single quotes expands a variable: write a literal '$' in single quotes"
            }
        })
    }
}

/// Splits `config` into its non-empty lines. An error names the line.
pub fn lines(config: &str) -> Result<Vec<Line>, (usize, LexError)> {
    let mut out = Vec::new();
    for (i, raw) in config.split('\n').enumerate() {
        let number = i + 1;
        let line = lex(raw).map_err(|e| (number, e))?;
        if !line.0.is_empty() {
            out.push(Line {
                number,
                words: line.0,
                env: line.1,
            });
        }
    }
    Ok(out)
}

fn is_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// One line: its words and the variables it expands.
fn lex(raw: &str) -> Result<(Vec<String>, Vec<String>), LexError> {
    if raw.chars().any(is_control) {
        return Err(LexError::ControlCharacter);
    }
    let mut words = Vec::new();
    let mut env = Vec::new();
    let mut word = String::new();
    // A word is under way (also an empty quoted one, `""`).
    let mut in_word = false;
    let (mut squote, mut dquote) = (false, false);
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if squote {
            // Nothing is interpreted inside single quotes.
            if c == '\'' {
                squote = false;
            } else {
                word.push(c);
            }
            continue;
        }
        match c {
            '\'' if !dquote => {
                squote = true;
                in_word = true;
            }
            '"' => {
                dquote = !dquote;
                in_word = true;
            }
            '#' if !dquote => break,
            ' ' | '\t' if !dquote => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                escape(&mut chars, &mut word)?;
            }
            // HAProxy expands variables outside single quotes, also unquoted;
            // a `$` that ends a word stays a `$` (a regex anchor).
            '$' if matches!(chars.peek(), None | Some(' ' | '\t')) && !dquote => {
                word.push('$');
                in_word = true;
            }
            '$' => {
                let name = expansion(&mut chars)?;
                word.push_str(&format!("${{{name}}}"));
                env.push(name);
                in_word = true;
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if squote || dquote {
        return Err(LexError::UnclosedQuote);
    }
    if in_word {
        words.push(word);
    }
    Ok((words, env))
}

/// The character after a backslash, decoded into `word` as HAProxy does.
fn escape(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    word: &mut String,
) -> Result<(), LexError> {
    match chars.peek().copied() {
        Some('\t') => return Err(LexError::TabEscape),
        Some(e @ (' ' | '#' | '"' | '\'' | '\\')) => {
            chars.next();
            word.push(e);
        }
        Some('r' | 'n') => return Err(LexError::ControlCharacter),
        Some('t') => {
            chars.next();
            word.push('\t');
        }
        Some('x') => {
            chars.next();
            let hex: String = (0..2).filter_map(|_| chars.next()).collect();
            let byte = u8::from_str_radix(&hex, 16).map_err(|_| LexError::ControlCharacter)?;
            let decoded = char::from(byte);
            // Only printable ASCII may be written as an escape: a decoded
            // byte is never a control character or half of a UTF-8 sequence.
            if !(decoded.is_ascii_graphic() || decoded == ' ') {
                return Err(LexError::ControlCharacter);
            }
            word.push(decoded);
        }
        // HAProxy keeps the backslash of any other escape.
        _ => word.push('\\'),
    }
    Ok(())
}

/// The variable named after a `$` in double quotes: `${NAME}` or `$NAME`.
fn expansion(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, LexError> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut name = String::new();
    if chars.peek() == Some(&'{') {
        chars.next();
        for c in chars.by_ref() {
            if c == '}' {
                break;
            }
            // `${NAME[*]}`, `${NAME-default}` and the like are refused with the rest.
            if !is_name(c) {
                return Err(LexError::BadExpansion);
            }
            name.push(c);
        }
    } else {
        while let Some(&c) = chars.peek().filter(|c| is_name(**c)) {
            name.push(c);
            chars.next();
        }
    }
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(LexError::BadExpansion);
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        lex(line).expect("lexes").0
    }

    #[test]
    fn words_are_split_unquoted_and_unescaped_as_haproxy_does() {
        assert_eq!(
            words("  server a 10.0.0.1:80 check"),
            ["server", "a", "10.0.0.1:80", "check"]
        );
        assert_eq!(
            words(r#"http-request set-header X "a b" # comment"#),
            ["http-request", "set-header", "X", "a b"]
        );
        assert_eq!(words(r"lua\x2dload x"), ["lua-load", "x"]);
        assert_eq!(
            words(r"a\ b 'c d' '$HOME' \q"),
            ["a b", "c d", "$HOME", r"\q"]
        );
        assert_eq!(words(r#"x "" y"#), ["x", "", "y"]);
        assert_eq!(words("a'b'c"), ["abc"]);
        assert!(words("# only a comment").is_empty());
    }

    #[test]
    fn expansions_are_reported() {
        let (w, env) = lex(r#"stats auth "${STATS_USERNAME}:$STATS_PASSWORD""#).unwrap();
        assert_eq!(w[2], "${STATS_USERNAME}:${STATS_PASSWORD}");
        assert_eq!(env, ["STATS_USERNAME", "STATS_PASSWORD"]);
        assert_eq!(lex(r#"x "${A[*]}""#), Err(LexError::BadExpansion));
        assert_eq!(lex(r#"x "${A-b}""#), Err(LexError::BadExpansion));
        assert_eq!(lex(r#"x "$""#), Err(LexError::BadExpansion));
        // HAProxy expands unquoted variables too.
        assert_eq!(lex("bind :$PORT").unwrap().1, ["PORT"]);
        // A dollar that ends an unquoted word, and single-quoted ones, are literal.
        let (w, env) = lex("x ^/a$ '$b'").unwrap();
        assert_eq!(
            (w, env),
            (vec!["x".into(), "^/a$".into(), "$b".into()], vec![])
        );
        assert_eq!(lex(r#"x "a$""#), Err(LexError::BadExpansion));
    }

    #[test]
    fn control_characters_and_open_quotes_are_errors() {
        assert_eq!(lex("a\rb"), Err(LexError::ControlCharacter));
        assert_eq!(
            lex("text/plain\\\tfile /etc/passwd"),
            Err(LexError::TabEscape)
        );
        assert_eq!(lex(r"a\nb"), Err(LexError::ControlCharacter));
        assert_eq!(lex(r"a\x0ab"), Err(LexError::ControlCharacter));
        assert_eq!(lex(r"a\xc3b"), Err(LexError::ControlCharacter));
        assert_eq!(lex(r"a\xzz"), Err(LexError::ControlCharacter));
        assert_eq!(lex("a \"b"), Err(LexError::UnclosedQuote));
        assert_eq!(lex("a 'b"), Err(LexError::UnclosedQuote));
        assert_eq!(lines("a\n\nb c\n").unwrap().len(), 2);
        assert_eq!(lines("a\nb\x00").unwrap_err().0, 2);
    }
}
