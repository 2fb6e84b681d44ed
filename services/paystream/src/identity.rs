//! Who called a mutating operator endpoint, in a way the caller cannot forge.
//!
//! Operators and viewers live in the NATS account OPS and reach `paystream.>` through a service
//! import with `share: true` (nats/accounts.conf). For such a request the server sets the header
//! `Nats-Request-Info` to the caller's connection info (`{"acc": "OPS", "user": "operator", …}`),
//! replacing any header of that exact name the caller sent (verified on nats-server 2.15.1; a
//! differently-cased copy is passed through, so more than one copy of the name in any case is
//! refused). Nobody inside the services' account may publish on `paystream.>`, so a request
//! carrying the header came through the import and the header is the server's.
//!
//! A server without authorization (the test harness's, a developer's) stamps nothing and proves
//! nothing: callers are recorded as `anonymous`. With authorization on, a request without the
//! header is refused.

use async_nats::HeaderMap;
use serde::Deserialize;

pub const REQUEST_INFO: &str = "Nats-Request-Info";

/// The audit trail's name for callers on a server without authorization.
pub const ANONYMOUS: &str = "anonymous";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "no server-stamped caller identity (Nats-Request-Info): operator actions must come \
         through the OPS account's import of paystream.>"
    )]
    Missing,
    #[error("more than one Nats-Request-Info header: refused as forged")]
    Ambiguous,
    #[error("unreadable Nats-Request-Info header: {0}")]
    Unreadable(String),
}

#[derive(Deserialize)]
struct RequestInfo {
    #[serde(default)]
    acc: String,
    #[serde(default)]
    user: String,
}

/// The caller of a request with these headers, as `user` (or `user@ACCOUNT` outside OPS), on a
/// server whose `auth_required` is as given.
pub fn caller(headers: Option<&HeaderMap>, auth_required: bool) -> Result<String, IdentityError> {
    if !auth_required {
        return Ok(ANONYMOUS.to_owned());
    }
    let values: Vec<String> = headers
        .map(|h| {
            h.iter()
                .filter(|(name, _)| name.to_string().eq_ignore_ascii_case(REQUEST_INFO))
                .flat_map(|(_, vs)| vs.iter().map(|v| v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let info = match values.as_slice() {
        [] => return Err(IdentityError::Missing),
        [one] => one,
        _ => return Err(IdentityError::Ambiguous),
    };
    let info: RequestInfo =
        serde_json::from_str(info).map_err(|e| IdentityError::Unreadable(e.to_string()))?;
    let user = paystream_common::text::bounded(&info.user, 64);
    if user.is_empty() {
        // An import without `share: true` stamps only the account: not enough to name anyone.
        return Err(IdentityError::Missing);
    }
    Ok(if info.acc == "OPS" || info.acc.is_empty() {
        user
    } else {
        format!("{user}@{}", paystream_common::text::bounded(&info.acc, 64))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, *v);
        }
        h
    }

    #[test]
    fn the_stamped_user_is_the_caller() {
        let h = headers(&[(REQUEST_INFO, r#"{"acc":"OPS","user":"operator","rtt":1}"#)]);
        assert_eq!(caller(Some(&h), true), Ok("operator".into()));
        let h = headers(&[(REQUEST_INFO, r#"{"acc":"OTHER","user":"bob"}"#)]);
        assert_eq!(caller(Some(&h), true), Ok("bob@OTHER".into()));
    }

    #[test]
    fn missing_ambiguous_or_anonymous_identities_are_refused() {
        assert_eq!(caller(None, true), Err(IdentityError::Missing));
        let h = headers(&[(REQUEST_INFO, r#"{"acc":"OPS","rtt":1}"#)]);
        assert_eq!(caller(Some(&h), true), Err(IdentityError::Missing));
        let h = headers(&[
            ("nats-request-info", r#"{"user":"forged"}"#),
            (REQUEST_INFO, r#"{"acc":"OPS","user":"viewer"}"#),
        ]);
        assert_eq!(caller(Some(&h), true), Err(IdentityError::Ambiguous));
        let h = headers(&[(REQUEST_INFO, "not json")]);
        assert!(matches!(
            caller(Some(&h), true),
            Err(IdentityError::Unreadable(_))
        ));
        assert_eq!(caller(None, false), Ok(ANONYMOUS.into()));
    }
}
