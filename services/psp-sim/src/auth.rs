//! Bearer-token authentication of `/v1` requests, when the simulator is given an API key.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

/// Whether `headers` carry `Authorization: Bearer <expected>`; always true without a key.
pub(crate) fn authorized(expected: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    headers
        .get(AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|token| same_bytes(token, expected.as_bytes()))
}

/// Compares without stopping at the first difference, so timing does not reveal the key.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn no_key_lets_everything_in() {
        assert!(authorized(None, &HeaderMap::new()));
    }

    #[test]
    fn key_must_match_exactly() {
        assert!(authorized(Some("k1"), &with_auth("Bearer k1")));
        assert!(!authorized(Some("k1"), &with_auth("Bearer k2")));
        assert!(!authorized(Some("k1"), &with_auth("Bearer k1x")));
        assert!(!authorized(Some("k1"), &with_auth("k1")));
        assert!(!authorized(Some("k1"), &HeaderMap::new()));
    }
}
