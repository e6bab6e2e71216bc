//! Trace and span ids: validation and hex text.

/// Length of a trace id in bytes.
pub const TRACE_ID_LEN: usize = 16;
/// Length of a span id in bytes.
pub const SPAN_ID_LEN: usize = 8;

/// A trace id is valid when it has 16 bytes that are not all zero (OTLP and W3C trace context).
pub fn is_valid_trace_id(id: &[u8]) -> bool {
    id.len() == TRACE_ID_LEN && id.iter().any(|b| *b != 0)
}

/// A span id is valid when it has 8 bytes that are not all zero.
pub fn is_valid_span_id(id: &[u8]) -> bool {
    id.len() == SPAN_ID_LEN && id.iter().any(|b| *b != 0)
}

/// Lowercase hex, the form ids take in SQL, the APIs and the UI.
pub fn to_hex(id: &[u8]) -> String {
    hex::encode(id)
}

/// Parses a hex trace id (any case); `None` unless it is 32 hex digits.
pub fn parse_trace_id(text: &str) -> Option<[u8; TRACE_ID_LEN]> {
    let mut out = [0u8; TRACE_ID_LEN];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

/// Parses a hex span id (any case); `None` unless it is 16 hex digits.
pub fn parse_span_id(text: &str) -> Option<[u8; SPAN_ID_LEN]> {
    let mut out = [0u8; SPAN_ID_LEN];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity() {
        assert!(is_valid_trace_id(&[1; 16]));
        assert!(!is_valid_trace_id(&[0; 16]));
        assert!(!is_valid_trace_id(&[1; 5]));
        assert!(is_valid_span_id(&[1; 8]));
        assert!(!is_valid_span_id(&[0; 8]));
        assert!(!is_valid_span_id(&[]));
    }

    #[test]
    fn hex_round_trip() {
        let id = [0xab; 16];
        let text = to_hex(&id);
        assert_eq!(text, "abababababababababababababababab");
        assert_eq!(parse_trace_id(&text.to_uppercase()), Some(id));
        assert_eq!(parse_trace_id("abc"), None);
        assert_eq!(
            parse_span_id("0102030405060708"),
            Some([1, 2, 3, 4, 5, 6, 7, 8])
        );
    }
}
