//! The JSON request bodies: every body is a JSON object of at most a route's limit,
//! counted by `Content-Length` and again as it arrives; parse errors never quote a value.

use std::pin::pin;

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use warp::filters::BoxedFilter;
use warp::Filter;

pub use crate::config::BODY_LIMIT;
use crate::error::AdminError;

/// A JSON body that may be absent or empty (then `T::default()`).
pub fn optional_json<T: DeserializeOwned + Default + Send + 'static>() -> BoxedFilter<(T,)> {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(|length: Option<u64>, body| async move {
            if length == Some(0) {
                return Ok(T::default());
            }
            read_json_or_default::<T, _, _>(length, body).await.map_err(warp::reject::custom)
        })
        .boxed()
}

/// serde_json's messages for a wrong type or value quote the offending input, which may
/// be a password: keep only their shape and position.
fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let at = format!(" at line {} column {}", e.line(), e.column());
    match e.classify() {
        Category::Eof => "the body is empty or ends early".to_owned(),
        Category::Syntax => format!("malformed JSON{at}"),
        Category::Io => "the body could not be read".to_owned(),
        Category::Data => {
            let message = e.to_string();
            let head = message.split(" at line ").next().unwrap_or_default();
            let names_only = ["unknown field", "missing field", "duplicate field", "unknown variant"];
            if names_only.iter().any(|p| head.starts_with(p)) {
                let head: String = head.chars().take(200).collect();
                format!("{head}{at}")
            } else {
                let kind = head.split(':').next().unwrap_or("invalid value");
                let expected = head.rsplit_once(", expected ").map(|(_, e)| format!(", expected {e}")).unwrap_or_default();
                format!("{kind}{expected}{at}")
            }
        }
    }
}

async fn read_json_or_default<T, S, B>(length: Option<u64>, body: S) -> Result<T, AdminError>
where
    T: DeserializeOwned + Default,
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let bytes = read_body(length, body, BODY_LIMIT).await?;
    // No body, an empty one, or JSON `null`: all mean "nothing given".
    if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
        return Ok(T::default());
    }
    parse_object(&bytes)
}

async fn read_json<T, S, B>(length: Option<u64>, body: S, limit: u64) -> Result<T, AdminError>
where
    T: DeserializeOwned,
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let bytes = read_body(length, body, limit).await?;
    parse_object(&bytes)
}

/// [`parse_object`], but a body of the wrong shape (not an object, a missing or unknown
/// field, a wrong type, a negative count) is an `invalid_request`, as the filters' protocol
/// routes say; only JSON that does not parse is `invalid_json`.
fn parse_shaped_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AdminError> {
    match parse_object(bytes) {
        Err(AdminError::InvalidJson(_)) if bytes.trim_ascii_start().first().is_some_and(|&b| b != b'{') => {
            Err(AdminError::InvalidRequest("the body must be a JSON object".to_owned()))
        }
        Err(AdminError::InvalidJson(message)) => match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => Err(AdminError::InvalidRequest(message)),
            Err(_) => Err(AdminError::InvalidJson(message)),
        },
        parsed => parsed,
    }
}

/// Every request body is a JSON object. serde would also build a struct from an array of
/// its fields in order (`["Acme"]`), which no client means and the API document forbids.
fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AdminError> {
    match bytes.trim_ascii_start().first() {
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| AdminError::InvalidJson(describe_json_error(&e))),
        Some(_) => Err(AdminError::InvalidJson("the body must be a JSON object".to_owned())),
        None => Err(AdminError::InvalidJson("the body is empty".to_owned())),
    }
}

async fn read_body<S, B>(length: Option<u64>, body: S, limit: u64) -> Result<Vec<u8>, AdminError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if length.is_some_and(|n| n > limit) {
        return Err(AdminError::PayloadTooLarge { limit });
    }
    // Chunked bodies carry no length: count as they arrive.
    let mut body = pin!(body);
    let mut bytes = Vec::with_capacity(length.unwrap_or(0).min(limit) as usize);
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|_| AdminError::InvalidRequest("the request body could not be read".to_owned()))?;
        if (bytes.len() as u64).saturating_add(chunk.remaining() as u64) > limit {
            return Err(AdminError::PayloadTooLarge { limit });
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            bytes.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(bytes)
}

/// A JSON body of at most [`BODY_LIMIT`] bytes, by `Content-Length` and by count.
pub fn json<T: DeserializeOwned + Send + 'static>() -> BoxedFilter<(T,)> {
    json_up_to(BODY_LIMIT)
}

/// A JSON body of at most `limit` bytes (the bulk import's and usage reports' larger caps).
pub fn json_up_to<T: DeserializeOwned + Send + 'static>(limit: u64) -> BoxedFilter<(T,)> {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(
            move |length: Option<u64>, body| async move { read_json::<T, _, _>(length, body, limit).await.map_err(warp::reject::custom) },
        )
        .boxed()
}

/// A JSON body of at most `limit` bytes whose wrong shape is an `invalid_request` (see
/// [`parse_shaped_object`]).
pub fn shaped_json_up_to<T: DeserializeOwned + Send + 'static>(limit: u64) -> BoxedFilter<(T,)> {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |length: Option<u64>, body| async move {
            let bytes = read_body(length, body, limit).await.map_err(warp::reject::custom)?;
            parse_shaped_object::<T>(&bytes).map_err(warp::reject::custom)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_do_not_echo_values() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            password: u64,
        }
        let e = serde_json::from_str::<T>(r#"{"password": "hunter2"}"#).err();
        let text = e.as_ref().map(describe_json_error).unwrap_or_default();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.starts_with("invalid type"), "{text}");
        let e = serde_json::from_str::<T>(r#"{"pass": 1}"#).err();
        let text = e.as_ref().map(describe_json_error).unwrap_or_default();
        assert!(text.starts_with("unknown field `pass`"), "{text}");
    }
}
