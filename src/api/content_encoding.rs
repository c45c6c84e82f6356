//! The `Content-Encoding` of a submitted body: none (`identity`) or gzip,
//! which telemetry shippers' HTTP outputs (Vector, Fluent Bit) can send;
//! anything else is 415. A gzip body is inflated to at most
//! `api.max_body_bytes`, so the limit bounds what is parsed, not only what
//! crossed the wire (a small bomb is refused, never held in memory).

use std::io::Read;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use flate2::read::GzDecoder;

use super::problem::Problem;
use super::reasons;

/// The body as the client meant it: inflated when it is gzip.
pub fn decode(headers: &HeaderMap, body: Bytes, max_body_bytes: usize) -> Result<Bytes, Problem> {
    match coding(headers)?.as_deref() {
        None | Some("identity") => Ok(body),
        Some("gzip" | "x-gzip") => inflate(&body, max_body_bytes),
        Some(other) => Err(unsupported(format!(
            "Content-Encoding {}: send the body as is, or gzip",
            crate::ingest::reason::excerpt(other)
        ))),
    }
}

/// 415 `unsupported_content_encoding`, saying why.
fn unsupported(detail: String) -> Problem {
    Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        reasons::UNSUPPORTED_CONTENT_ENCODING,
        "Unsupported Content-Encoding",
        detail,
    )
}

/// The one coding named (lowercase), None when the header is absent.
fn coding(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let mut values = headers.get_all(header::CONTENT_ENCODING).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let refuse = |detail: &str| unsupported(detail.to_string());
    if values.next().is_some() {
        return Err(refuse("Content-Encoding given twice: name one coding"));
    }
    let text = value
        .to_str()
        .map_err(|_| refuse("Content-Encoding is not ASCII"))?;
    if text.contains(',') {
        return Err(refuse(
            "Content-Encoding names several codings: name one (gzip)",
        ));
    }
    Ok(Some(text.trim().to_ascii_lowercase()))
}

/// Inflates `body`, refusing more than `max_body_bytes` of output.
fn inflate(body: &[u8], max_body_bytes: usize) -> Result<Bytes, Problem> {
    let mut out = Vec::new();
    let limit = u64::try_from(max_body_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    GzDecoder::new(body)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                reasons::BODY_NOT_GZIP,
                "Body is not gzip",
                format!("Content-Encoding is gzip, but the body does not inflate: {e}"),
            )
        })?;
    if out.len() > max_body_bytes {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            reasons::BODY_TOO_LARGE,
            "Body too large",
            format!("api.max_body_bytes is {max_body_bytes}, and the gzip body inflates beyond it"),
        ));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use axum::http::HeaderValue;
    use flate2::write::GzEncoder;
    use flate2::Compression;

    use super::*;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    fn encoded(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::CONTENT_ENCODING, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn code(r: Result<Bytes, Problem>) -> Result<Bytes, (StatusCode, &'static str)> {
        r.map_err(|p| (p.status, p.code))
    }

    #[test]
    fn a_gzip_body_is_inflated_and_others_pass_as_they_are() {
        let body = br#"{"id":"a"}"#;
        for h in [
            encoded(&["gzip"]),
            encoded(&[" GZip "]),
            encoded(&["x-gzip"]),
        ] {
            assert_eq!(
                code(decode(&h, gzip(body), 100)),
                Ok(Bytes::from(&body[..]))
            );
        }
        for h in [HeaderMap::new(), encoded(&["identity"])] {
            let same = Bytes::from(&body[..]);
            assert_eq!(code(decode(&h, same.clone(), 100)), Ok(same));
        }
    }

    #[test]
    fn what_cannot_be_read_is_refused_with_a_reason() {
        let body = br#"{"id":"a"}"#;
        let unsupported = (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            reasons::UNSUPPORTED_CONTENT_ENCODING,
        );
        for h in [
            encoded(&["br"]),
            encoded(&["deflate"]),
            encoded(&["gzip, identity"]),
            encoded(&["gzip", "gzip"]),
        ] {
            assert_eq!(code(decode(&h, gzip(body), 100)), Err(unsupported));
        }
        let not_gzip = Bytes::from(&body[..]);
        assert_eq!(
            code(decode(&encoded(&["gzip"]), not_gzip, 100)),
            Err((StatusCode::BAD_REQUEST, reasons::BODY_NOT_GZIP))
        );
        // 10 bytes inflate within a limit of 10, not of 9; a megabyte of
        // zeros (about 1 KB of gzip) is refused at 100 bytes.
        let h = encoded(&["gzip"]);
        assert!(decode(&h, gzip(body), 10).is_ok());
        let too_large = (StatusCode::PAYLOAD_TOO_LARGE, reasons::BODY_TOO_LARGE);
        assert_eq!(code(decode(&h, gzip(body), 9)), Err(too_large));
        let bomb = gzip(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 4096);
        assert_eq!(code(decode(&h, bomb, 100)), Err(too_large));
    }
}
