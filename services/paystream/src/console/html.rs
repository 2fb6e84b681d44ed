//! The console's HTML: escaping, the page frame (navigation, who is signed in), tables, and the
//! one stylesheet, all inside the binary. No script anywhere: the Content-Security-Policy forbids
//! it, and confirmation of an action is a second page, not a dialog.

use std::fmt::Write as _;

/// The stylesheet, served at `/static/console.css`.
pub const CSS: &str = r#"
body{font-family:system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:center}
header a{color:#cfe0ff;text-decoration:none}header a:hover{text-decoration:underline}
header .who{margin-left:auto;font-size:.9rem}
header form{display:inline}
main{padding:1rem 1.4rem;max-width:1300px}
h1{font-size:1.35rem}h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;background:#fff;width:100%;font-size:.88rem}
th,td{border:1px solid #dde1e8;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#eef1f6}
td:first-child{white-space:nowrap}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}
.card{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:.7rem 1rem;min-width:12rem}
.card b{display:block;font-size:1.4rem}
.error{background:#fff0f0;border:1px solid #e0a0a0;padding:1rem;border-radius:6px}
.notice{background:#eefaf0;border:1px solid #9fd3a8;padding:.6rem 1rem;border-radius:6px}
.muted{color:#6b7385}
form.inline{display:inline}
input,select,button,textarea{font:inherit;padding:.25rem .4rem}
button{cursor:pointer}
button.danger{background:#b3261e;color:#fff;border:0;border-radius:4px;padding:.35rem .8rem}
button.primary{background:#1f5fbf;color:#fff;border:0;border-radius:4px;padding:.35rem .8rem}
pre{background:#fff;border:1px solid #dde1e8;padding:.6rem;overflow:auto;font-size:.85rem}
.k-state{color:#1f5fbf}.k-psp_attempt{color:#7a3fb0}.k-dead_letter,.k-delivery_failed{color:#b3261e}
.k-redrive,.k-resolution,.k-correction{color:#1b7a3a}
nav.pages{margin:.8rem 0}
"#;

/// Text made safe for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string component.
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Who is signed in, for the frame.
pub struct Frame<'a> {
    pub user: &'a str,
    pub csrf: &'a str,
    pub may_act: bool,
}

/// A whole page: frame, navigation, `body`.
pub fn page(title: &str, frame: Option<&Frame>, body: &str) -> String {
    let nav = match frame {
        Some(f) => format!(
            r#"<a href="/">Overview</a><a href="/dead-letters">Dead letters</a><a href="/recon">Reconciliation</a><a href="/payments">Payments</a><a href="/audit">Audit trail</a>
<span class="who">{} ({})
<form method="post" action="/signout"><input type="hidden" name="csrf" value="{}"><button type="submit">Sign out</button></form></span>"#,
            esc(f.user),
            if f.may_act { "operator" } else { "read-only" },
            esc(f.csrf)
        ),
        None => String::new(),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{} · paystream console</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<link rel="stylesheet" href="/static/console.css"></head>
<body><header><strong>paystream</strong>{nav}</header><main>
<h1>{}</h1>
{body}
</main></body></html>"#,
        esc(title),
        esc(title)
    )
}

/// A table of escaped cells (cells given as already-safe HTML where `raw` says so).
pub fn table(headers: &[&str], rows: &[Vec<Cell>]) -> String {
    let mut out = String::from("<table><thead><tr>");
    for h in headers {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for c in row {
            match c {
                Cell::Text(t) => {
                    let _ = write!(out, "<td>{}</td>", esc(t));
                }
                Cell::Html(h) => {
                    let _ = write!(out, "<td>{h}</td>");
                }
            }
        }
        out.push_str("</tr>");
    }
    if rows.is_empty() {
        let _ = write!(
            out,
            r#"<tr><td colspan="{}" class="muted">nothing here</td></tr>"#,
            headers.len()
        );
    }
    out.push_str("</tbody></table>");
    out
}

pub enum Cell {
    Text(String),
    /// Already escaped.
    Html(String),
}

pub fn t(s: impl Into<String>) -> Cell {
    Cell::Text(s.into())
}

/// A link cell.
pub fn link(href: &str, text: &str) -> Cell {
    Cell::Html(format!(r#"<a href="{}">{}</a>"#, esc(href), esc(text)))
}

/// `application/x-www-form-urlencoded` pairs, repeated names kept (`ids=1&ids=2`).
pub fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or(""), 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_decodes_forms() {
        assert_eq!(
            esc(r#"<script>"a"&'b'"#),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;"
        );
        assert_eq!(url("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(
            form_pairs(b"ids=1&ids=2&note=a+b%21&x=%zz&y=%4"),
            vec![
                ("ids".into(), "1".into()),
                ("ids".into(), "2".into()),
                ("note".into(), "a b!".into()),
                ("x".into(), "%zz".into()),
                ("y".into(), "%4".into()),
            ]
        );
    }
}
