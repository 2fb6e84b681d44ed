//! Strings from outside (reasons, metadata, subject tokens) reach logs, reports and dead-letter
//! reasons: they are bounded in length and escaped so nothing can forge a log line.

/// At most `max_chars` characters of `s`, control characters escaped, `…` when cut.
pub fn bounded(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars * 2));
    for (i, c) in s.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// An error and its sources, `: `-separated, each said once: for errors that travel as text (a
/// report, a NATS service error, a TLS failure's detail), where a library's own message
/// ("error sending request for url …") would hide why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        let part = err.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        source = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::bounded;

    #[test]
    fn cuts_and_escapes() {
        assert_eq!(bounded("abc", 5), "abc");
        assert_eq!(bounded("abcdef", 3), "abc…");
        assert_eq!(bounded("a\nb", 5), "a\\nb");
    }
}
