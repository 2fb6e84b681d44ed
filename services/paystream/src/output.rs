//! Printing results: a readable table for people, JSON for scripts.

use serde::Serialize;

/// Prints `value` as JSON when asked, else the table text.
pub fn emit<T: Serialize>(json: bool, value: &T, table: impl FnOnce() -> String) {
    if json {
        match serde_json::to_string_pretty(value) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: encoding JSON: {e}"),
        }
    } else {
        print!("{}", table());
    }
}

/// Most rows a table for people shows: the rest are counted, not printed (the JSON and the
/// report files have them all).
pub const TABLE_ROWS_MAX: usize = 50;

/// [`table`] of at most [`TABLE_ROWS_MAX`] of `rows`, then `… N more (where)`, N counted
/// against `total` (which may exceed `rows.len()` when the rows themselves are a bounded
/// sample, like a report's manual-review list).
pub fn capped_table(headers: &[&str], rows: &[Vec<String>], total: usize, more: &str) -> String {
    let shown = rows.len().min(TABLE_ROWS_MAX);
    let mut out = table(headers, &rows[..shown]);
    let hidden = total.max(rows.len()) - shown;
    if hidden > 0 {
        out.push_str(&format!("… {hidden} more {more}\n"));
    }
    out
}

/// Left-aligned columns sized to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", parts.join("  ").trim_end())
    };
    let mut out = line(headers.to_vec());
    out.push_str(&line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// An error and its causes, one per line — `error: top` then `  caused by: …` — each said once:
/// a message that ends with its cause's text (thiserror's `{source}`) is cut before it, and a
/// cause already spelled out inside the message above it is not repeated.
pub fn error_report(e: &anyhow::Error) -> String {
    let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
    let mut lines: Vec<&str> = Vec::new();
    for (i, msg) in chain.iter().enumerate() {
        let repeated = i > 0 && {
            let above = &chain[i - 1];
            above.contains(msg.as_str()) && !above.ends_with(msg.as_str())
        };
        let own = match chain.get(i + 1) {
            Some(cause) => msg
                .strip_suffix(cause.as_str())
                .map_or(msg.as_str(), |head| {
                    head.trim_end_matches([':', ' ', ';', ','])
                }),
            None => msg.as_str(),
        };
        if !repeated && !own.is_empty() {
            lines.push(own);
        }
    }
    let mut out = format!("error: {}\n", lines.first().copied().unwrap_or(&chain[0]));
    for cause in lines.iter().skip(1) {
        out.push_str(&format!("  caused by: {cause}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{TABLE_ROWS_MAX, capped_table, error_report};

    #[test]
    fn long_tables_are_capped_with_a_count() {
        let rows: Vec<Vec<String>> = (0..10_000).map(|i| vec![i.to_string()]).collect();
        let out = capped_table(&["N"], &rows, 10_023, "(see the report file)");
        assert_eq!(out.lines().count(), 2 + TABLE_ROWS_MAX + 1, "{out}");
        assert!(
            out.ends_with("… 9973 more (see the report file)\n"),
            "{out}"
        );
        let out = capped_table(&["N"], &rows[..3], 3, "(see the report file)");
        assert!(!out.contains("more"), "{out}");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connecting to NATS at nats://x:1: {source}")]
    struct Connect {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("starting the payment service")]
    struct Start(#[source] Connect);

    #[test]
    fn one_cause_per_line_each_said_once() {
        let io = std::io::Error::other("connection refused");
        let e = anyhow::Error::new(Start(Connect { source: io }));
        assert_eq!(
            error_report(&e),
            "error: starting the payment service\n  caused by: connecting to NATS at nats://x:1\n  caused by: connection refused\n"
        );
        let e = anyhow::anyhow!("no paystream service answered paystream.status");
        assert_eq!(
            error_report(&e),
            "error: no paystream service answered paystream.status\n"
        );
        // A context whose text already holds the cause: the cause is not printed again.
        let e = anyhow::Error::new(std::io::Error::other("disk full"))
            .context("writing data/nats.url: disk full (is the volume mounted?)");
        assert_eq!(
            error_report(&e),
            "error: writing data/nats.url: disk full (is the volume mounted?)\n"
        );
    }
}
