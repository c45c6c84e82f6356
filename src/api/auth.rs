//! API keys: `Authorization: Bearer <token>`, checked against the SHA-256
//! hashes of `[[api.keys]]` (the token is never stored, logged or
//! compared in a way that leaks timing). A missing or unknown key is 401,
//! a key without the route's scope 403.

use axum::http::{header, HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

use super::problem::Problem;
use super::reasons;
use crate::config::{ApiKeyConfig, ApiScope};

/// Longest bearer token looked at; a longer header is refused unhashed.
pub const MAX_TOKEN_BYTES: usize = 512;
/// Random bytes of a token made by [`new_token`].
pub const TOKEN_RANDOM_BYTES: usize = 32;
/// Prefix of tokens made by [`new_token`], so a leaked one is recognisable.
pub const TOKEN_PREFIX: &str = "mtl_";

/// A key that authenticated a request.
#[derive(Debug, Clone)]
pub struct Caller<'k> {
    pub key: &'k ApiKeyConfig,
}

impl Caller<'_> {
    /// Whether the key has `scope` (admin has every scope).
    pub fn has(&self, scope: ApiScope) -> bool {
        self.key.scopes.contains(&scope) || self.key.scopes.contains(&ApiScope::Admin)
    }

    /// Whether this key may ingest events of `source`.
    pub fn may_ingest(&self, source: &str) -> bool {
        self.key.sources.is_empty() || self.key.sources.iter().any(|p| pattern_matches(p, source))
    }

    /// Whether this key may read `customer_id`'s data.
    pub fn may_read(&self, customer_id: &str) -> bool {
        self.key.customers.is_empty() || self.key.customers.iter().any(|c| c == customer_id)
    }

    /// Whether this key lists `source` by name or prefix (not merely "any").
    pub fn lists_source(&self, source: &str) -> bool {
        self.key.sources.iter().any(|p| pattern_matches(p, source))
    }
}

fn pattern_matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

/// Hex SHA-256 of a token: what `sha256_hex` holds.
pub fn token_hash_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token (for `meterline api key-new`).
pub fn new_token() -> String {
    let bytes: [u8; TOKEN_RANDOM_BYTES] = rand::random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// Equal slices, compared in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer token of a request, when it has a plausible one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_BYTES)
}

/// The key of the request, if it has the scope.
pub fn authorize<'k>(
    keys: &'k [ApiKeyConfig],
    headers: &HeaderMap,
    scope: ApiScope,
) -> Result<Caller<'k>, Problem> {
    let caller = authenticate(keys, headers)?;
    if !caller.has(scope) {
        tracing::info!(key = %caller.key.name, ?scope, "API key refused: scope missing");
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            reasons::FORBIDDEN,
            "Forbidden",
            format!("the key {:?} lacks the {scope:?} scope", caller.key.name),
        ));
    }
    Ok(caller)
}

/// The key of the request, whatever its scopes (401 when none matches).
pub fn authenticate<'k>(
    keys: &'k [ApiKeyConfig],
    headers: &HeaderMap,
) -> Result<Caller<'k>, Problem> {
    let unauthorized = |detail: &str| {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            reasons::UNAUTHORIZED,
            "Unauthorized",
            detail,
        )
    };
    let token = bearer(headers)
        .ok_or_else(|| unauthorized("send an API key as Authorization: Bearer <key>"))?;
    let hash = Sha256::digest(token.as_bytes());
    let mut found = None;
    for k in keys {
        let want = hex::decode(&k.sha256_hex).unwrap_or_default();
        if constant_time_eq(&want, hash.as_slice()) && found.is_none() {
            found = Some(k);
        }
    }
    let key = found.ok_or_else(|| unauthorized("the API key is not one of api.keys"))?;
    Ok(Caller { key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn key(name: &str, token: &str, scopes: &[ApiScope]) -> ApiKeyConfig {
        ApiKeyConfig {
            name: name.into(),
            sha256_hex: token_hash_hex(token),
            scopes: scopes.to_vec(),
            sources: vec!["app/*".into()],
            customers: vec![],
            actor: None,
        }
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    #[test]
    fn keys_are_checked_by_hash_and_scope_and_both_rotation_keys_work() {
        let keys = [
            key("old", "tok-old", &[ApiScope::Ingest]),
            key("new", "tok-new", &[ApiScope::Ingest]),
            key("reader", "tok-read", &[ApiScope::Read]),
        ];
        for t in ["tok-old", "tok-new"] {
            let c = authorize(&keys, &bearer(t), ApiScope::Ingest).unwrap();
            assert!(c.may_ingest("app/web") && !c.may_ingest("other"));
        }
        let none = authorize(&keys, &HeaderMap::new(), ApiScope::Ingest).unwrap_err();
        assert_eq!(
            (none.status, none.code),
            (StatusCode::UNAUTHORIZED, "unauthorized")
        );
        let wrong = authorize(&keys, &bearer("tok-nope"), ApiScope::Ingest).unwrap_err();
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        let scope = authorize(&keys, &bearer("tok-read"), ApiScope::Ingest).unwrap_err();
        assert_eq!(
            (scope.status, scope.code),
            (StatusCode::FORBIDDEN, "forbidden")
        );
        assert!(
            !scope.body_json().contains("tok-read"),
            "no token in a body"
        );
    }

    #[test]
    fn new_tokens_are_random_and_prefixed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(token_hash_hex(&a).len(), 64);
    }
}
