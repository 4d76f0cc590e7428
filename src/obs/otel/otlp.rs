//! OTLP's `ExportTraceServiceRequest` in protobuf, written by hand: the few messages proxyd
//! sends (opentelemetry/proto/collector/trace/v1 and trace/common/resource v1), straight from
//! [`SpanRecord`]s into one buffer: the same bytes as prost-generated structs (the
//! opentelemetry-proto crate's) would give, about 5 times cheaper per span (no structs to
//! build and allocate per span) and half the code (docs/operations.md, Tracing; the
//! `tracing` group of benches/hot_paths.rs).
//!
//! Each nested message's length is computed before it is written (protobuf puts it first),
//! so a span's size is computed twice; that is a few additions per attribute.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{SpanRecord, Value};

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;

/// OTLP's `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_ERROR: u64 = 2;

/// The parts of every request that do not change: the encoded `Resource` and
/// `InstrumentationScope` messages.
#[derive(Debug, Clone)]
pub struct Prelude {
    resource: Vec<u8>,
    scope: Vec<u8>,
}

impl Prelude {
    /// `service.name` = `service_name`, `service.version` = proxyd's version; scope "proxyd".
    pub fn new(service_name: &str) -> Prelude {
        let mut resource = Vec::new();
        for (key, value) in [
            ("service.name", service_name),
            ("service.version", env!("CARGO_PKG_VERSION")),
        ] {
            let value = Value::Str(value.to_owned());
            put_len(&mut resource, 1, key_value_len(key, &value));
            put_key_value(&mut resource, key, &value);
        }
        let mut scope = Vec::new();
        put_bytes(&mut scope, 1, b"proxyd");
        put_bytes(&mut scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
        Prelude { resource, scope }
    }
}

/// Appends one `ExportTraceServiceRequest` holding `spans` to `out`.
pub fn encode(prelude: &Prelude, spans: &[SpanRecord], out: &mut Vec<u8>) {
    let spans_len: usize = spans.iter().map(|s| field_len(span_len(s))).sum();
    let scope_spans = field_len(prelude.scope.len()) + spans_len;
    let resource_spans = field_len(prelude.resource.len()) + field_len(scope_spans);
    out.reserve(field_len(resource_spans));
    // ExportTraceServiceRequest.resource_spans
    put_len(out, 1, resource_spans);
    // ResourceSpans.resource
    put_bytes(out, 1, &prelude.resource);
    // ResourceSpans.scope_spans
    put_len(out, 2, scope_spans);
    // ScopeSpans.scope
    put_bytes(out, 1, &prelude.scope);
    for s in spans {
        // ScopeSpans.spans
        put_len(out, 2, span_len(s));
        put_span(out, s);
    }
}

fn span_len(s: &SpanRecord) -> usize {
    let mut n = field_len(16) + field_len(8);
    if let Some(state) = s.trace_state.as_deref().filter(|t| !t.is_empty()) {
        n += field_len(state.len());
    }
    if s.parent_span_id.is_some() {
        n += field_len(8);
    }
    if !s.name.is_empty() {
        n += field_len(s.name.len());
    }
    n += 1 + varint_len(s.kind as u64);
    n += 2 * (1 + 8);
    for (key, value) in &s.attributes {
        n += field_len(key_value_len(key, value));
    }
    if let Some(message) = &s.error {
        n += field_len(status_len(message));
    }
    n
}

fn put_span(out: &mut Vec<u8>, s: &SpanRecord) {
    put_bytes(out, 1, &s.trace_id);
    put_bytes(out, 2, &s.span_id);
    if let Some(state) = s.trace_state.as_deref().filter(|t| !t.is_empty()) {
        put_bytes(out, 3, state.as_bytes());
    }
    if let Some(parent) = &s.parent_span_id {
        put_bytes(out, 4, parent);
    }
    if !s.name.is_empty() {
        put_bytes(out, 5, s.name.as_bytes());
    }
    put_tag(out, 6, VARINT);
    put_varint(out, s.kind as u64);
    put_tag(out, 7, FIXED64);
    out.extend_from_slice(&unix_nanos(s.start).to_le_bytes());
    put_tag(out, 8, FIXED64);
    out.extend_from_slice(&unix_nanos(s.end).to_le_bytes());
    for (key, value) in &s.attributes {
        put_len(out, 9, key_value_len(key, value));
        put_key_value(out, key, value);
    }
    if let Some(message) = &s.error {
        // Span.status: Status { message = 2, code = 3 }
        put_len(out, 15, status_len(message));
        if !message.is_empty() {
            put_bytes(out, 2, message.as_bytes());
        }
        put_tag(out, 3, VARINT);
        put_varint(out, STATUS_ERROR);
    }
}

fn status_len(message: &str) -> usize {
    let message = if message.is_empty() {
        0
    } else {
        field_len(message.len())
    };
    message + 1 + varint_len(STATUS_ERROR)
}

/// `KeyValue { key = 1, value = 2 (AnyValue) }`.
fn key_value_len(key: &str, value: &Value) -> usize {
    field_len(key.len()) + field_len(any_value_len(value))
}

fn put_key_value(out: &mut Vec<u8>, key: &str, value: &Value) {
    put_bytes(out, 1, key.as_bytes());
    put_len(out, 2, any_value_len(value));
    // AnyValue's oneof: a member is written even when it holds its default.
    match value {
        Value::Str(s) => put_bytes(out, 1, s.as_bytes()),
        Value::Bool(b) => {
            put_tag(out, 2, VARINT);
            out.push(u8::from(*b));
        }
        Value::Int(i) => {
            put_tag(out, 3, VARINT);
            put_varint(out, *i as u64);
        }
        Value::Double(d) => {
            put_tag(out, 4, FIXED64);
            out.extend_from_slice(&d.to_le_bytes());
        }
    }
}

fn any_value_len(value: &Value) -> usize {
    match value {
        Value::Str(s) => field_len(s.len()),
        Value::Bool(_) => 2,
        Value::Int(i) => 1 + varint_len(*i as u64),
        Value::Double(_) => 1 + 8,
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A length-delimited field (bytes, string, nested message) of `len` bytes, its tag one byte
/// (fields 1 to 15).
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u32) {
    // Every field number here is below 16: the tag is one byte.
    debug_assert!(field < 16);
    out.push(((field << 3) | wire) as u8);
}

fn put_len(out: &mut Vec<u8>, field: u32, len: usize) {
    put_tag(out, field, LEN);
    put_varint(out, len as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_len(out, field, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    //! The encoder against hand-decoded bytes (a minimal reader written here, not the
    //! encoder's code); tests/otlp_export.rs decodes whole requests with prost.
    use super::*;
    use crate::obs::otel::SpanKind;
    use std::time::Duration;

    /// One field: its number and its value (varint, fixed64 or bytes).
    #[derive(Debug, PartialEq)]
    enum F<'a> {
        V(u64),
        I64(u64),
        B(&'a [u8]),
    }

    fn fields(mut b: &[u8]) -> Vec<(u32, F<'_>)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    break;
                }
            }
            v
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let tag = varint(&mut b);
            let field = (tag >> 3) as u32;
            let f = match tag & 7 {
                0 => F::V(varint(&mut b)),
                1 => {
                    let v = u64::from_le_bytes(b[..8].try_into().unwrap());
                    b = &b[8..];
                    F::I64(v)
                }
                2 => {
                    let n = varint(&mut b) as usize;
                    let (v, rest) = b.split_at(n);
                    b = rest;
                    F::B(v)
                }
                w => panic!("wire type {w}"),
            };
            out.push((field, f));
        }
        out
    }

    fn bytes<'a>(fs: &[(u32, F<'a>)], field: u32) -> Vec<&'a [u8]> {
        fs.iter()
            .filter(|(n, _)| *n == field)
            .map(|(_, f)| match f {
                F::B(b) => *b,
                other => panic!("field {field}: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn varint_lengths_match_what_is_written() {
        for v in [0, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }

    fn span() -> SpanRecord {
        SpanRecord {
            trace_id: [7; 16],
            span_id: [8; 8],
            parent_span_id: Some([9; 8]),
            trace_state: Some("k=v".into()),
            name: "GET /".into(),
            kind: SpanKind::Server,
            start: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            end: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_223_456_789),
            attributes: vec![
                ("s", Value::Str("x".repeat(200))),
                ("i", Value::Int(-1)),
                ("b", Value::Bool(false)),
                ("d", Value::Double(0.5)),
                ("e", Value::Str(String::new())),
            ],
            error: Some("boom".into()),
        }
    }

    #[test]
    fn a_request_nests_resource_scope_and_spans() {
        let prelude = Prelude::new("edge");
        let mut out = Vec::new();
        encode(&prelude, &[span(), span()], &mut out);
        let req = fields(&out);
        assert_eq!(req.len(), 1);
        let rs = fields(bytes(&req, 1)[0]);
        let resource = fields(bytes(&rs, 1)[0]);
        let attrs: Vec<_> = bytes(&resource, 1).into_iter().map(fields).collect();
        assert_eq!(bytes(&attrs[0], 1), [b"service.name"]);
        assert_eq!(
            fields(bytes(&attrs[0], 2)[0]),
            [(1, F::B(b"edge".as_slice()))]
        );
        let ss = fields(bytes(&rs, 2)[0]);
        assert_eq!(bytes(&fields(bytes(&ss, 1)[0]), 1), [b"proxyd"]);
        let spans = bytes(&ss, 2);
        assert_eq!(spans.len(), 2);

        let s = fields(spans[0]);
        assert_eq!(bytes(&s, 1), [[7u8; 16].as_slice()]);
        assert_eq!(bytes(&s, 2), [[8u8; 8].as_slice()]);
        assert_eq!(bytes(&s, 3), [b"k=v".as_slice()]);
        assert_eq!(bytes(&s, 4), [[9u8; 8].as_slice()]);
        assert_eq!(bytes(&s, 5), [b"GET /".as_slice()]);
        assert!(s.contains(&(6, F::V(2))));
        assert!(s.contains(&(7, F::I64(1_700_000_000_123_456_789))));
        assert!(s.contains(&(8, F::I64(1_700_000_000_223_456_789))));
        let attrs: Vec<_> = bytes(&s, 9).into_iter().map(fields).collect();
        let values: Vec<_> = attrs.iter().map(|kv| fields(bytes(kv, 2)[0])).collect();
        assert_eq!(values[0], [(1, F::B("x".repeat(200).as_bytes()))]);
        assert_eq!(values[1], [(3, F::V(u64::MAX))]);
        assert_eq!(values[2], [(2, F::V(0))]);
        assert_eq!(values[3], [(4, F::I64(0.5f64.to_bits()))]);
        assert_eq!(values[4], [(1, F::B(b""))]);
        let status = fields(bytes(&s, 15)[0]);
        assert_eq!(status, [(2, F::B(b"boom".as_slice())), (3, F::V(2))]);
    }

    #[test]
    fn optional_fields_are_left_out() {
        let mut s = span();
        s.parent_span_id = None;
        s.trace_state = None;
        s.error = None;
        s.attributes.clear();
        let mut out = Vec::new();
        encode(&Prelude::new("p"), &[s], &mut out);
        let req = fields(&out);
        let rs = fields(bytes(&req, 1)[0]);
        let ss = fields(bytes(&rs, 2)[0]);
        let s = fields(bytes(&ss, 2)[0]);
        let numbers: Vec<u32> = s.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 2, 5, 6, 7, 8]);
    }

    #[test]
    fn no_spans_is_an_empty_scope() {
        let mut out = Vec::new();
        encode(&Prelude::new("p"), &[], &mut out);
        let req = fields(&out);
        let rs = fields(bytes(&req, 1)[0]);
        let ss = fields(bytes(&rs, 2)[0]);
        assert!(bytes(&ss, 2).is_empty());
    }
}
