//! Bytes -> OTLP requests and back: content types, compression with a size cap, protobuf and
//! the OTLP/JSON mapping. Pure functions; the HTTP surface calls them.

use std::io::Read;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ExportError;

/// Wire encoding of an OTLP/HTTP body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Encoding::Protobuf => "protobuf",
            Encoding::Json => "JSON",
        }
    }
}

/// The encoding named by a `Content-Type` header (parameters such as `charset` are ignored).
pub fn encoding_of(content_type: Option<&str>) -> Result<Encoding, ExportError> {
    let Some(ct) = content_type else {
        return Err(ExportError::UnsupportedMediaType(
            "missing Content-Type; send application/x-protobuf or application/json".into(),
        ));
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(ExportError::UnsupportedMediaType(format!(
            "Content-Type `{ct}` is not supported; send application/x-protobuf or application/json"
        ))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression named by a `Content-Encoding` header.
pub fn compression_of(content_encoding: Option<&str>) -> Result<Compression, ExportError> {
    match content_encoding
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => Ok(Compression::None),
        Some("gzip") | Some("x-gzip") => Ok(Compression::Gzip),
        Some("zstd") => Ok(Compression::Zstd),
        Some(other) => Err(ExportError::UnsupportedMediaType(format!(
            "Content-Encoding `{other}` is not supported; use gzip, zstd or none"
        ))),
    }
}

/// Decompresses `body`, refusing output larger than `max_bytes` (a zip bomb costs at most that).
pub fn decompress(
    body: Bytes,
    compression: Compression,
    max_bytes: usize,
) -> Result<Bytes, ExportError> {
    fn read_capped(
        mut reader: impl Read,
        max_bytes: usize,
        what: &str,
    ) -> Result<Bytes, ExportError> {
        let mut out = Vec::new();
        let read = reader
            .by_ref()
            .take(max_bytes as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| ExportError::Malformed {
                encoding: "compressed",
                reason: format!("cannot decompress the {what} body: {e}"),
            })?;
        if read > max_bytes {
            return Err(ExportError::TooLarge {
                size: read,
                limit: max_bytes,
            });
        }
        Ok(Bytes::from(out))
    }
    match compression {
        Compression::None => Ok(body),
        Compression::Gzip => read_capped(
            flate2::read::MultiGzDecoder::new(&body[..]),
            max_bytes,
            "gzip",
        ),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(&body[..]).map_err(|e| {
                ExportError::Malformed {
                    encoding: "compressed",
                    reason: format!("cannot start zstd decoding: {e}"),
                }
            })?;
            read_capped(decoder, max_bytes, "zstd")
        }
    }
}

/// Decodes an OTLP export request in the given encoding.
pub fn decode<T>(body: &[u8], encoding: Encoding) -> Result<T, ExportError>
where
    T: prost::Message + Default + DeserializeOwned,
{
    match encoding {
        Encoding::Protobuf => T::decode(body).map_err(|e| ExportError::Malformed {
            encoding: encoding.name(),
            reason: e.to_string(),
        }),
        Encoding::Json => {
            if body.iter().all(|b| b.is_ascii_whitespace()) {
                // An empty body is an empty request, as it is in protobuf.
                return Ok(T::default());
            }
            serde_json::from_slice(body).map_err(|e| ExportError::Malformed {
                encoding: encoding.name(),
                reason: e.to_string(),
            })
        }
    }
}

/// Encodes a response in the encoding of the request.
pub fn encode<T>(message: &T, encoding: Encoding) -> Vec<u8>
where
    T: prost::Message + Serialize,
{
    match encoding {
        Encoding::Protobuf => message.encode_to_vec(),
        // Serialising these plain structs cannot fail; an empty object is still a valid answer.
        Encoding::Json => serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxeye_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
    use std::io::Write;

    const JSON: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},
        "scopeSpans":[{"scope":{"name":"lib"},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
        "parentSpanId":"","name":"GET","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
        "attributes":[{"key":"n","value":{"intValue":"42"}},{"key":"m","value":{"intValue":7}},{"key":"d","value":{"doubleValue":1.5}}],
        "status":{"code":2,"message":"bad"}}]}]}]}"#;

    #[test]
    fn json_mapping_is_understood() {
        let req: ExportTraceServiceRequest = decode(JSON.as_bytes(), Encoding::Json).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            hex::encode(&span.trace_id),
            "5b8efff798038103d269b633813fc60c"
        );
        assert_eq!(span.kind, 2);
        assert_eq!(span.start_time_unix_nano, 1544712660000000000);
        assert_eq!(span.end_time_unix_nano, 1544712661000000000);
        assert_eq!(span.status.as_ref().unwrap().code, 2);
        use oxeye_model::otlp::common::v1::any_value::Value;
        assert_eq!(
            span.attributes[0].value.as_ref().unwrap().value,
            Some(Value::IntValue(42))
        );
        assert_eq!(
            span.attributes[1].value.as_ref().unwrap().value,
            Some(Value::IntValue(7))
        );
    }

    #[test]
    fn gzip_and_caps() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&vec![b'a'; 10_000]).unwrap();
        let gz = Bytes::from(enc.finish().unwrap());
        assert_eq!(
            decompress(gz.clone(), Compression::Gzip, 10_000)
                .unwrap()
                .len(),
            10_000
        );
        assert!(matches!(
            decompress(gz, Compression::Gzip, 9_999),
            Err(ExportError::TooLarge { .. })
        ));
        assert!(matches!(
            decompress(Bytes::from_static(b"not gzip"), Compression::Gzip, 100),
            Err(ExportError::Malformed { .. })
        ));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            encoding_of(Some("application/json; charset=utf-8")).unwrap(),
            Encoding::Json
        );
        assert_eq!(
            encoding_of(Some("application/x-protobuf")).unwrap(),
            Encoding::Protobuf
        );
        assert!(encoding_of(Some("text/plain")).is_err());
        assert!(encoding_of(None).is_err());
        assert!(compression_of(Some("br")).is_err());
    }

    #[test]
    fn bad_bodies_are_malformed_not_panics() {
        let truncated = &[0x0a, 0xff, 0xff];
        assert!(matches!(
            decode::<ExportTraceServiceRequest>(truncated, Encoding::Protobuf),
            Err(ExportError::Malformed { .. })
        ));
        assert!(matches!(
            decode::<ExportTraceServiceRequest>(b"{not json", Encoding::Json),
            Err(ExportError::Malformed { .. })
        ));
        let empty: ExportTraceServiceRequest = decode(b"", Encoding::Json).unwrap();
        assert!(empty.resource_spans.is_empty());
    }
}
