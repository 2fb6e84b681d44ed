//! One handler per console page or action. Each reads the session, asks a `paystream.*` endpoint
//! as the signed-in person, and renders the answer; an action is offered only to a person whose
//! NATS permissions allow it, confirmed on a page of its own, and decided by NATS in the end.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use paystream_common::config::Secret;
use paystream_common::nats::{self, Auth, ConnectError};
use serde_json::{Value, json};

use super::html::{self, Cell, Frame, esc, link, t, url};
use super::session::View;
use super::{COOKIE, Console, Failure, call, checked_form, names};

type Params = Query<HashMap<String, String>>;
type Page = Result<Response, Failure>;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn param<'a>(q: &'a HashMap<String, String>, k: &str) -> Option<&'a str> {
    q.get(k).map(String::as_str).filter(|s| !s.is_empty())
}

fn render(view: &View, title: &str, body: &str) -> Page {
    let frame = Frame {
        user: &view.user,
        csrf: &view.csrf,
        may_act: view.may_act,
    };
    Ok(Html(html::page(title, Some(&frame), body)).into_response())
}

fn csrf_input(view: &View) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(&view.csrf)
    )
}

// ---- sign-in ----

pub fn sign_in_page(message: Option<&str>, user: &str) -> String {
    let note = message
        .map(|m| format!(r#"<div class="error"><p>{}</p></div>"#, esc(m)))
        .unwrap_or_default();
    html::page(
        "Sign in",
        None,
        &format!(
            r#"{note}<p>Sign in with your NATS user and password, or a creds file: the console acts as you, with your NATS permissions, and the audit trail names you.</p>
<form method="post" action="/signin">
<p><label>NATS user<br><input name="user" autocomplete="username" value="{}"></label></p>
<p><label>Password<br><input name="password" type="password" autocomplete="current-password"></label></p>
<details><summary>Or sign in with a creds file (JWT and nkey seed)</summary>
<p><label>Paste the creds file<br><textarea name="creds" rows="8" cols="70" spellcheck="false" autocomplete="off"></textarea></label></p></details>
<p><button class="primary" type="submit">Sign in</button></p></form>"#,
            esc(user)
        ),
    )
}

pub async fn sign_in_form(State(c): State<Console>, headers: HeaderMap) -> Response {
    if c.session(&headers).is_ok() {
        return Redirect::to("/").into_response();
    }
    Html(sign_in_page(None, "")).into_response()
}

pub async fn sign_in(State(c): State<Console>, headers: HeaderMap, body: Bytes) -> Response {
    if super::same_origin(&headers).is_err() {
        return Failure::Forged.into_response();
    }
    let form: HashMap<String, String> = html::form_pairs(&body).into_iter().collect();
    let user = form.get("user").map(|u| u.trim()).unwrap_or("").to_owned();
    let password = form.get("password").cloned().unwrap_or_default();
    let creds = form.get("creds").map(|c| c.trim()).unwrap_or("").to_owned();
    let refused = |status: StatusCode, msg: &str, user: &str| {
        (status, Html(sign_in_page(Some(msg), user))).into_response()
    };
    let (auth, who) = if !creds.is_empty() {
        // A creds file pasted whole; the name shown is the one typed, if any (the audit trail's
        // is the server's).
        let who = if user.is_empty() {
            "creds user".to_owned()
        } else {
            user.clone()
        };
        (Auth::CredsText(Secret(creds)), who)
    } else if !user.is_empty() && !password.is_empty() && user.len() <= 128 {
        (
            Auth::UserPassword {
                user: user.clone(),
                password: Secret(password),
            },
            user.clone(),
        )
    } else {
        return refused(
            StatusCode::BAD_REQUEST,
            "Give a NATS user and password, or paste a creds file.",
            &user,
        );
    };
    let user = who;
    let (client, errors) = match nats::connect_with(&c.cfg, "paystream-console", &auth).await {
        Ok(c) => c,
        Err(ConnectError::Refused { .. }) => {
            metrics::counter!(names::SIGN_INS, "outcome" => "refused").increment(1);
            tracing::warn!(user = %paystream_common::text::bounded(&user, 64), "console sign-in refused by NATS");
            return refused(
                StatusCode::UNAUTHORIZED,
                "NATS refused these credentials.",
                &user,
            );
        }
        Err(e @ ConnectError::Credentials { .. }) => {
            metrics::counter!(names::SIGN_INS, "outcome" => "refused").increment(1);
            return refused(
                StatusCode::UNAUTHORIZED,
                &format!("Unusable creds: {e}"),
                "",
            );
        }
        Err(e) => {
            metrics::counter!(names::SIGN_INS, "outcome" => "error").increment(1);
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("Could not reach NATS: {e}"),
                &user,
            );
        }
    };
    // May this person act? Ask NATS with an empty redrive (a 400 if permitted, refused if not).
    let probe = View {
        user: user.clone(),
        client: client.clone(),
        errors: errors.clone(),
        csrf: String::new(),
        may_act: false,
    };
    let may_act = !matches!(
        call(&probe, "paystream.dlq.redrive", &json!({"ids": []})).await,
        Err(Failure::Service(
            crate::operator::OperatorError::NotPermitted(..)
        ))
    );
    let Some(id) = c
        .sessions
        .open(user.clone(), client, errors, may_act, c.ttl)
    else {
        metrics::counter!(names::SIGN_INS, "outcome" => "error").increment(1);
        return refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sessions are open; try again later.",
            &user,
        );
    };
    metrics::counter!(names::SIGN_INS, "outcome" => "ok").increment(1);
    tracing::info!(user = %user, may_act, "console sign-in");
    let mut res = Redirect::to("/").into_response();
    if let Ok(v) =
        HeaderValue::from_str(&format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict"))
    {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

pub async fn sign_out(State(c): State<Console>, headers: HeaderMap, body: Bytes) -> Page {
    let (id, view) = c.session(&headers)?;
    checked_form(&headers, &view, &body)?;
    c.sessions.close(&id);
    let mut res = Redirect::to("/signin").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "paystream_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(res)
}

// ---- overview ----

pub async fn overview(State(c): State<Console>, headers: HeaderMap) -> Page {
    let (_, view) = c.session(&headers)?;
    let o = call(&view, "paystream.console.overview", &json!({})).await?;
    let card = |label: &str, value: String| {
        format!(
            r#"<div class="card">{}<b>{}</b></div>"#,
            esc(label),
            esc(&value)
        )
    };
    let mut body = String::from(r#"<div class="cards">"#);
    body.push_str(&card(
        "completed in the last hour",
        text(&o["completed_last_hour"]),
    ));
    body.push_str(&card("UNKNOWN now", text(&o["unknown"])));
    body.push_str(&card(
        "oldest UNKNOWN",
        o["unknown_oldest_age_seconds"]
            .as_i64()
            .map_or("none".into(), |s| format!("{s} s")),
    ));
    body.push_str(&card("PSP circuit", text(&o["psp_circuit"])));
    body.push_str("</div>");
    let map_rows = |v: &Value| -> Vec<Vec<Cell>> {
        v.as_object()
            .map(|m| m.iter().map(|(k, n)| vec![t(k), t(text(n))]).collect())
            .unwrap_or_default()
    };
    body.push_str("<h2>Payments by state</h2>");
    body.push_str(&html::table(
        &["state", "payments"],
        &map_rows(&o["payments_by_state"]),
    ));
    body.push_str("<h2>Dead letters per consumer</h2>");
    let dl: Vec<Vec<Cell>> = o["dead_letters_by_consumer"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| {
                    vec![
                        link(&format!("/dead-letters?consumer={}", url(k)), k),
                        t(text(n)),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    body.push_str(&html::table(&["consumer", "dead letters"], &dl));
    body.push_str("<h2>Latest reconciliation</h2>");
    match o["latest_recon"].as_object() {
        Some(r) => {
            let date = text(&r["date"]);
            let _ = write!(
                body,
                r#"<p><a href="/recon/{}">{}</a> (run {}, {} for manual review)</p>"#,
                esc(&date),
                esc(&date),
                esc(&text(&r["run_id"])),
                esc(&text(&r["manual_review_total"]))
            );
            body.push_str(&html::table(&["class", "rows"], &map_rows(&r["counts"])));
        }
        None => body.push_str(r#"<p class="muted">No reconciliation has run yet.</p>"#),
    }
    render(&view, "Overview", &body)
}

// ---- dead letters ----

/// `YYYY-MM-DDTHH:MM` (a datetime-local input, UTC) or RFC 3339, as unix ms.
fn time_ms(s: &str) -> Option<i64> {
    let full = if s.len() == 16 {
        format!("{s}:00Z")
    } else {
        s.to_owned()
    };
    full.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

pub async fn dead_letters(State(c): State<Console>, headers: HeaderMap, Query(q): Params) -> Page {
    let (_, view) = c.session(&headers)?;
    let consumer = param(&q, "consumer");
    let reason = param(&q, "reason");
    let since = param(&q, "since");
    let until = param(&q, "until");
    let before = param(&q, "before").and_then(|b| b.parse::<i64>().ok());
    let answer = call(
        &view,
        "paystream.console.dead_letters",
        &json!({"consumer": consumer, "reason": reason, "since_ms": since.and_then(time_ms),
                "until_ms": until.and_then(time_ms), "before": before, "limit": 100}),
    )
    .await?;
    let mut body = format!(
        r#"<form method="get" action="/dead-letters">
<label>consumer <select name="consumer"><option value="">any</option>{}</select></label>
<label>reason contains <input name="reason" value="{}"></label>
<label>from (UTC) <input type="datetime-local" name="since" value="{}"></label>
<label>to <input type="datetime-local" name="until" value="{}"></label>
<button type="submit">Filter</button></form>"#,
        ["payment", "wallet", "ledger"]
            .iter()
            .map(|c| format!(
                r#"<option value="{c}"{}>{c}</option>"#,
                if consumer == Some(*c) {
                    " selected"
                } else {
                    ""
                }
            ))
            .collect::<String>(),
        esc(reason.unwrap_or("")),
        esc(since.unwrap_or("")),
        esc(until.unwrap_or(""))
    );
    let entries = answer["entries"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<Cell>> = entries
        .iter()
        .map(|e| {
            let id = text(&e["id"]);
            let mut row = Vec::new();
            if view.may_act {
                row.push(Cell::Html(format!(
                    r#"<input type="checkbox" name="ids" value="{}" aria-label="select {}">"#,
                    esc(&id),
                    esc(&id)
                )));
            }
            row.extend([
                link(&format!("/dead-letters/{id}"), &id),
                t(text(&e["consumer"])),
                t(format!("{}/{}", text(&e["stream"]), text(&e["stream_seq"]))),
                t(text(&e["subject"])),
                t(text(&e["deliveries"])),
                t(paystream_common::text::bounded(&text(&e["reason"]), 160)),
                t(text(&e["at"])),
            ]);
            row
        })
        .collect();
    let mut headers_row = vec![
        "id",
        "consumer",
        "original",
        "subject",
        "deliveries",
        "reason",
        "at",
    ];
    if view.may_act {
        headers_row.insert(0, "");
        let _ = write!(
            body,
            r#"<form method="post" action="/dead-letters/action">{}"#,
            csrf_input(&view)
        );
    }
    body.push_str(&html::table(&headers_row, &rows));
    if view.may_act {
        body.push_str(r#"<p><button type="submit" name="action" value="redrive" class="primary">Redrive selected…</button>
<button type="submit" name="action" value="purge" class="danger">Purge selected…</button></p></form>"#);
    }
    if let Some(next) = answer["next_before"].as_i64() {
        let mut keep: Vec<String> = ["consumer", "reason", "since", "until"]
            .iter()
            .filter_map(|k| param(&q, k).map(|v| format!("{k}={}", url(v))))
            .collect();
        keep.push(format!("before={next}"));
        let _ = write!(
            body,
            r#"<nav class="pages"><a href="/dead-letters?{}">Older →</a></nav>"#,
            esc(&keep.join("&"))
        );
    }
    render(&view, "Dead letters", &body)
}

pub async fn dead_letter(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Page {
    let (_, view) = c.session(&headers)?;
    let d = call(&view, "paystream.dlq.show", &json!({"id": id})).await?;
    let mut body = html::table(
        &["field", "value"],
        &[
            "consumer",
            "durable",
            "stream",
            "stream_seq",
            "subject",
            "deliveries",
            "kind",
            "reason",
            "at",
        ]
        .iter()
        .map(|k| vec![t(*k), t(text(&d[*k]))])
        .collect::<Vec<_>>(),
    );
    if let Some(pid) = d["payload"]["payment_id"].as_str() {
        let _ = write!(
            body,
            r#"<p>Payment: <a href="/payments/{}">{}</a> (its timeline)</p>"#,
            esc(pid),
            esc(pid)
        );
    }
    body.push_str("<h2>Headers</h2>");
    let hdrs: Vec<Vec<Cell>> = d["headers"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| vec![t(k), t(text(v))]).collect())
        .unwrap_or_default();
    body.push_str(&html::table(&["header", "values"], &hdrs));
    body.push_str("<h2>Payload (decoded)</h2>");
    let _ = write!(
        body,
        "<pre>{}</pre>",
        esc(&serde_json::to_string_pretty(&d["payload"]).unwrap_or_default())
    );
    body.push_str("<h2>Failed attempts</h2>");
    let attempts: Vec<Vec<Cell>> = d["attempts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    vec![
                        t(text(&x["delivered"])),
                        t(text(&x["at"])),
                        t(text(&x["error"])),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    body.push_str(&html::table(&["delivery", "at", "error"], &attempts));
    if view.may_act {
        let _ = write!(
            body,
            r#"<form method="post" action="/dead-letters/action">{}<input type="hidden" name="ids" value="{id}">
<p><button type="submit" name="action" value="redrive" class="primary">Redrive…</button>
<button type="submit" name="action" value="purge" class="danger">Purge…</button></p></form>"#,
            csrf_input(&view)
        );
    } else {
        body.push_str(
            r#"<p class="muted">Read-only: your NATS user may not redrive or purge.</p>"#,
        );
    }
    render(&view, &format!("Dead letter {id}"), &body)
}

pub async fn dead_letter_action(State(c): State<Console>, headers: HeaderMap, body: Bytes) -> Page {
    let (_, view) = c.session(&headers)?;
    let form = checked_form(&headers, &view, &body)?;
    let action = form
        .iter()
        .find(|(k, _)| k == "action")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let (subject, verb, done) = match action {
        "redrive" => ("paystream.dlq.redrive", "Redrive", "redriven"),
        "purge" => ("paystream.dlq.purge", "Purge", "purged"),
        _ => return Err(Failure::BadRequest("Choose redrive or purge.".into())),
    };
    let ids: Vec<u64> = form
        .iter()
        .filter(|(k, _)| k == "ids")
        .filter_map(|(_, v)| v.parse().ok())
        .take(500)
        .collect();
    if ids.is_empty() {
        return Err(Failure::BadRequest(
            "Select at least one dead letter.".into(),
        ));
    }
    let confirmed = form.iter().any(|(k, v)| k == "confirm" && v == "yes");
    if !confirmed {
        let hidden: String = ids
            .iter()
            .map(|i| format!(r#"<input type="hidden" name="ids" value="{i}">"#))
            .collect();
        let listed: String = ids
            .iter()
            .map(|i| format!(r#"<li><a href="/dead-letters/{i}">{i}</a></li>"#))
            .collect();
        let body = format!(
            r#"<p>{verb} {} dead letter(s)? {}</p><ul>{listed}</ul>
<form method="post" action="/dead-letters/action">{}{hidden}<input type="hidden" name="action" value="{}"><input type="hidden" name="confirm" value="yes">
<button type="submit" class="{}">Yes, {} {}</button> <a href="/dead-letters">Cancel</a></form>"#,
            ids.len(),
            if action == "redrive" {
                "Each original is published again for its consumer; effects stay exactly-once."
            } else {
                "The entries are removed from DEAD_LETTERS; the originals stay in their streams."
            },
            csrf_input(&view),
            esc(action),
            if action == "redrive" {
                "primary"
            } else {
                "danger"
            },
            action,
            ids.len()
        );
        return render(&view, &format!("Confirm: {verb}"), &body);
    }
    let answer = call(&view, subject, &json!({"ids": ids})).await?;
    let body = format!(
        r#"<div class="notice"><p>{} {} dead letter(s) as {}; the audit trail records it.</p></div><p><a href="/dead-letters">Back to the dead letters</a> · <a href="/audit">Audit trail</a></p>"#,
        esc(done),
        esc(&text(&answer[done])),
        esc(&view.user)
    );
    render(&view, &format!("{verb} done"), &body)
}

// ---- reconciliation ----

pub async fn recon_runs(State(c): State<Console>, headers: HeaderMap, Query(q): Params) -> Page {
    let (_, view) = c.session(&headers)?;
    if let Some(d) = param(&q, "date") {
        return Ok(Redirect::to(&format!("/recon/{}", url(d))).into_response());
    }
    let runs = call(
        &view,
        "paystream.console.recon_runs",
        &json!({"before": param(&q, "before"), "limit": 31}),
    )
    .await?;
    let list = runs.as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<Cell>> = list
        .iter()
        .map(|r| {
            let date = text(&r["date"]);
            let counts = r["counts"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, n)| n.as_u64() != Some(0))
                        .map(|(k, n)| format!("{k}: {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            vec![
                link(&format!("/recon/{date}"), &date),
                t(text(&r["run_id"])),
                t(text(&r["status"])),
                t(counts),
                t(text(&r["manual_review_total"])),
            ]
        })
        .collect();
    let mut body = String::from(
        r#"<form method="get" action="/recon"><label>Day <input type="date" name="date"></label> <button type="submit">Open</button></form>"#,
    );
    body.push_str(&html::table(
        &[
            "day",
            "latest run",
            "status",
            "rows per class",
            "manual review",
        ],
        &rows,
    ));
    if list.len() == 31
        && let Some(last) = list.last()
    {
        let _ = write!(
            body,
            r#"<nav class="pages"><a href="/recon?before={}">Earlier days →</a></nav>"#,
            esc(&text(&last["date"]))
        );
    }
    render(&view, "Reconciliation", &body)
}

pub async fn recon_rows(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(date): Path<String>,
    Query(q): Params,
) -> Page {
    let (_, view) = c.session(&headers)?;
    let after = param(&q, "after").and_then(|a| a.parse::<i64>().ok());
    let answer = call(
        &view,
        "paystream.console.recon_rows",
        &json!({"date": date, "after": after, "limit": 100}),
    )
    .await?;
    let mut body = String::new();
    if let Some(line) = param(&q, "resolved") {
        let _ = write!(
            body,
            r#"<div class="notice"><p>Row {} resolved; the audit trail records it.</p></div>"#,
            esc(line)
        );
    }
    let _ = write!(
        body,
        r#"<p>Run {} · <a href="/recon/{}/csv">Download the report's rows (CSV)</a></p><h2>Manual review, beside our record</h2>"#,
        esc(&text(&answer["run_id"])),
        esc(&date)
    );
    let rows: Vec<Vec<Cell>> = answer["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let pid = text(&r["payment_id"]);
            let line = text(&r["line"]);
            let resolution = match r["resolution"].as_object() {
                Some(res) => t(format!(
                    "resolved by {} at {}: {}",
                    text(&res["by"]),
                    text(&res["at"]),
                    text(&res["note"])
                )),
                None if view.may_act => Cell::Html(format!(
                    r#"<form method="post" action="/recon/{}/resolve">{}<input type="hidden" name="line" value="{}"><input type="hidden" name="payment_id" value="{}"><input name="note" placeholder="why it is resolved" required aria-label="note for line {}"> <button type="submit">Resolve</button></form>"#,
                    esc(&date),
                    csrf_input(&view),
                    esc(&line),
                    esc(&pid),
                    esc(&line)
                )),
                None => t("open"),
            };
            vec![
                t(line.clone()),
                t(text(&r["class"])),
                link(&format!("/payments/{pid}"), &pid),
                t(text(&r["type"])),
                t(text(&r["amount"])),
                t(text(&r["our_amount"])),
                t(text(&r["our_state"])),
                t(text(&r["currency"])),
                t(text(&r["detail"])),
                resolution,
            ]
        })
        .collect();
    body.push_str(&html::table(
        &[
            "line",
            "class",
            "payment",
            "type",
            "file amount",
            "our amount",
            "our state",
            "currency",
            "detail",
            "resolution",
        ],
        &rows,
    ));
    if let Some(next) = answer["next_after"].as_i64() {
        let _ = write!(
            body,
            r#"<nav class="pages"><a href="/recon/{}?after={next}">Next rows →</a></nav>"#,
            esc(&date)
        );
    }
    render(&view, &format!("Reconciliation of {date}"), &body)
}

pub async fn recon_resolve(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(date): Path<String>,
    body: Bytes,
) -> Page {
    let (_, view) = c.session(&headers)?;
    let form: HashMap<String, String> = checked_form(&headers, &view, &body)?.into_iter().collect();
    let line = form.get("line").and_then(|l| l.parse::<i64>().ok());
    let note = form.get("note").cloned().unwrap_or_default();
    let req = match line {
        Some(l) if l > 0 => json!({"date": date, "line": l, "note": note}),
        _ => json!({"date": date, "payment_id": form.get("payment_id"), "note": note}),
    };
    call(&view, "paystream.recon.resolve", &req).await?;
    Ok(Redirect::to(&format!(
        "/recon/{}?resolved={}",
        url(&date),
        line.map_or_else(|| "?".to_owned(), |l| l.to_string())
    ))
    .into_response())
}

const CSV_HEADER: &str = "line,class,psp_reference,payment_id,type,amount,our_amount,currency,correction,detail,resolved_by,resolved_at,note\n";

/// Every row of the day's latest run as CSV, page by page (a 1,000,000-row day streams).
pub async fn recon_csv(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(date): Path<String>,
) -> Page {
    let (_, view) = c.session(&headers)?;
    // The first page now, so a missing report is a clear page rather than a broken download.
    let first = call(
        &view,
        "paystream.console.recon_rows",
        &json!({"date": date, "which": "all", "limit": 500}),
    )
    .await?;
    let stream = futures::stream::unfold(
        (Some(first), true, view, date.clone()),
        |(page, first_chunk, view, date)| async move {
            let page = page?;
            let mut out = if first_chunk {
                CSV_HEADER.to_owned()
            } else {
                String::new()
            };
            for r in page["rows"].as_array().cloned().unwrap_or_default() {
                let cells = [
                    "line",
                    "class",
                    "psp_reference",
                    "payment_id",
                    "type",
                    "amount",
                    "our_amount",
                    "currency",
                    "correction",
                    "detail",
                ]
                .iter()
                .map(|k| text(&r[*k]))
                .chain(
                    ["by", "at", "note"]
                        .iter()
                        .map(|k| text(&r["resolution"][*k])),
                )
                .collect::<Vec<_>>();
                paystream_reconciler::report::csv_line(&mut out, &cells);
            }
            let next = match page["next_after"].as_i64() {
                Some(after) => call(
                    &view,
                    "paystream.console.recon_rows",
                    &json!({"date": date, "which": "all", "after": after, "limit": 500}),
                )
                .await
                .ok(),
                None => None,
            };
            Some((
                Ok::<_, std::io::Error>(Bytes::from(out)),
                (next, false, view, date),
            ))
        },
    );
    let mut res = Body::from_stream(stream).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"recon-{}.csv\"",
        date.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "")
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

// ---- payments ----

pub async fn payments(State(c): State<Console>, headers: HeaderMap, Query(q): Params) -> Page {
    let (_, view) = c.session(&headers)?;
    let by = param(&q, "by").unwrap_or("payment_id");
    let needle = param(&q, "q").map(str::trim).unwrap_or("");
    if by == "payment_id"
        && !needle.is_empty()
        && paystream_common::ids::PaymentId::parse(needle).is_ok()
    {
        return Ok(Redirect::to(&format!("/payments/{}", url(needle))).into_response());
    }
    let mut body = format!(
        r#"<form method="get" action="/payments"><label>Find by <select name="by">{}</select></label>
<input name="q" value="{}" placeholder="payment id, buyer or merchant" aria-label="search"> <button type="submit">Find</button></form>"#,
        [
            ("payment_id", "payment id"),
            ("buyer_id", "buyer"),
            ("merchant_id", "merchant")
        ]
        .iter()
        .map(|(v, l)| format!(
            r#"<option value="{v}"{}>{l}</option>"#,
            if by == *v { " selected" } else { "" }
        ))
        .collect::<String>(),
        esc(needle)
    );
    if !needle.is_empty() {
        if by == "payment_id" {
            body.push_str(r#"<div class="error"><p>That is not a payment id (a UUID).</p></div>"#);
        } else {
            let field = if by == "buyer_id" {
                "buyer_id"
            } else {
                "merchant_id"
            };
            let before = param(&q, "before").and_then(|b| b.parse::<i64>().ok());
            let found = call(
                &view,
                "paystream.console.find",
                &json!({field: needle, "before_ms": before, "limit": 100}),
            )
            .await?;
            let list = found.as_array().cloned().unwrap_or_default();
            let rows: Vec<Vec<Cell>> = list
                .iter()
                .map(|p| {
                    let pid = text(&p["payment_id"]);
                    vec![
                        link(&format!("/payments/{pid}"), &pid),
                        t(text(&p["buyer_id"])),
                        t(text(&p["merchant_id"])),
                        t(format!("{} {}", text(&p["amount"]), text(&p["currency"]))),
                        t(text(&p["state"])),
                        t(text(&p["created_at"])),
                    ]
                })
                .collect();
            body.push_str(&html::table(
                &["payment", "buyer", "merchant", "amount", "state", "created"],
                &rows,
            ));
            if list.len() == 100
                && let Some(last) = list.last()
            {
                let _ = write!(
                    body,
                    r#"<nav class="pages"><a href="/payments?by={by}&amp;q={}&amp;before={}">Older →</a></nav>"#,
                    esc(&url(needle)),
                    esc(&text(&last["created_at_ms"]))
                );
            }
        }
    }
    render(&view, "Payments", &body)
}

pub async fn timeline(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Params,
) -> Page {
    let (_, view) = c.session(&headers)?;
    let offset = param(&q, "offset")
        .and_then(|o| o.parse::<u64>().ok())
        .unwrap_or(0);
    let tl = call(
        &view,
        "paystream.timeline",
        &json!({"payment_id": id, "offset": offset, "limit": 200}),
    )
    .await?;
    let mut body = html::table(
        &["payment", "buyer", "merchant", "amount", "state", "request"],
        &[vec![
            t(text(&tl["payment_id"])),
            t(text(&tl["buyer_id"])),
            t(text(&tl["merchant_id"])),
            t(format!("{} {}", text(&tl["amount"]), text(&tl["currency"]))),
            t(text(&tl["state"])),
            t(format!(
                "{} seq {} at {}",
                text(&tl["request"]["stream"]),
                text(&tl["request"]["seq"]),
                text(&tl["request"]["at"])
            )),
        ]],
    );
    body.push_str("<h2>Timeline</h2>");
    let entries = tl["entries"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<Cell>> = entries
        .iter()
        .map(|e| {
            let kind = text(&e["kind"]);
            let mut what = esc(&text(&e["summary"]));
            if kind == "dead_letter"
                && e["fields"]["removed"].is_null()
                && let Some(dl) = e["fields"]["id"].as_i64()
            {
                let _ = write!(
                    what,
                    r#" · <a href="/dead-letters/{dl}">open dead letter {dl}</a>"#
                );
            }
            vec![
                t(text(&e["at"])),
                Cell::Html(format!(
                    r#"<span class="k-{}">{}</span>"#,
                    esc(&kind),
                    esc(&kind)
                )),
                Cell::Html(what),
            ]
        })
        .collect();
    body.push_str(&html::table(&["at", "kind", "what"], &rows));
    let total = tl["total"].as_u64().unwrap_or(0);
    let shown = offset + entries.len() as u64;
    if offset > 0 || shown < total {
        let _ = write!(
            body,
            r#"<nav class="pages">entries {}–{shown} of {total} "#,
            offset + 1
        );
        if offset > 0 {
            let _ = write!(
                body,
                r#"<a href="/payments/{}?offset={}">← earlier</a> "#,
                esc(&id),
                offset.saturating_sub(200)
            );
        }
        if shown < total {
            let _ = write!(
                body,
                r#"<a href="/payments/{}?offset={shown}">later →</a>"#,
                esc(&id)
            );
        }
        body.push_str("</nav>");
    }
    render(&view, &format!("Payment {id}"), &body)
}

// ---- audit ----

pub async fn audit(State(c): State<Console>, headers: HeaderMap, Query(q): Params) -> Page {
    let (_, view) = c.session(&headers)?;
    let before = param(&q, "before").and_then(|b| b.parse::<i64>().ok());
    let page = call(
        &view,
        "paystream.console.audit",
        &json!({"before": before, "limit": 100}),
    )
    .await?;
    let rows: Vec<Vec<Cell>> = page["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            ["at", "actor", "action", "target", "result"]
                .iter()
                .map(|k| t(text(&e[*k])))
                .collect()
        })
        .collect();
    let mut body = html::table(&["at", "actor", "action", "target", "result"], &rows);
    if let Some(next) = page["next_before"].as_i64() {
        let _ = write!(
            body,
            r#"<nav class="pages"><a href="/audit?before={next}">Older →</a></nav>"#
        );
    }
    render(&view, "Audit trail", &body)
}
