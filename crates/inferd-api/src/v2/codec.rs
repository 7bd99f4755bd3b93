//! Triton's binary tensor extension, as pure functions over bytes: a body is a
//! JSON header of `Inference-Header-Content-Length` bytes followed by raw
//! little-endian tensor data (`BYTES` elements as a 4-byte length, then the
//! bytes). Kept apart from the routes so that every way a client can get the
//! framing wrong (a header length that lies, truncated data, too many elements,
//! a datatype with no binary form) is tested byte by byte.
//!
//! Errors are messages; the caller names the field they belong to.

use bytes::Bytes;
use serde_json::Value;

use super::wire::TensorData;

/// The header that gives the JSON part's length.
pub const HEADER_LENGTH_NAME: &str = "Inference-Header-Content-Length";

/// Splits a body into its JSON header and the tensor bytes after it. Without
/// the header, the whole body is JSON.
pub fn split_body(header_length: Option<&[u8]>, body: Bytes) -> Result<(Bytes, Bytes), String> {
    let Some(raw) = header_length else {
        return Ok((body, Bytes::new()));
    };
    let n: usize = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| "must be a byte count".to_string())?;
    if n > body.len() {
        return Err(format!(
            "says {n} bytes of JSON header, but the body has {}",
            body.len()
        ));
    }
    let tail = body.slice(n..);
    let mut head = body;
    head.truncate(n);
    Ok((head, tail))
}

/// Bytes per element of the numeric datatypes with a binary form.
pub fn element_size(datatype: &str) -> Option<usize> {
    match datatype {
        "FP32" | "INT32" => Some(4),
        "FP64" | "INT64" => Some(8),
        _ => None,
    }
}

/// Decodes `raw` as at most `count` elements of `datatype`, as JSON values (the
/// form the tasks validate). Fewer than `count` is left to the caller, who knows
/// the shape; more is refused here, before anything is allocated for them.
pub fn decode(datatype: &str, raw: &[u8], count: usize) -> Result<Vec<Value>, String> {
    let too_many = || format!("has more elements than its shape's {count}");
    if datatype == "BYTES" {
        let mut out = Vec::with_capacity(count.min(raw.len() / 4));
        let mut rest = raw;
        while !rest.is_empty() {
            if out.len() == count {
                return Err(too_many());
            }
            let len = rest
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .filter(|&l| rest.len() - 4 >= l)
                .ok_or_else(|| "binary BYTES data is truncated".to_string())?;
            let s = std::str::from_utf8(&rest[4..4 + len])
                .map_err(|_| format!("element {} is not UTF-8 text", out.len()))?;
            out.push(Value::String(s.to_string()));
            rest = &rest[4 + len..];
        }
        return Ok(out);
    }
    let size = element_size(datatype)
        .ok_or_else(|| format!("datatype {datatype} has no binary form here"))?;
    if !raw.len().is_multiple_of(size) {
        return Err(format!(
            "{} bytes of binary data is not a whole number of {datatype} elements",
            raw.len()
        ));
    }
    if raw.len() / size > count {
        return Err(too_many());
    }
    raw.chunks_exact(size)
        .enumerate()
        .map(|(i, b)| {
            let x = match (datatype, b) {
                ("FP32", &[a, b, c, d]) => f32::from_le_bytes([a, b, c, d]) as f64,
                ("INT32", &[a, b, c, d]) => i32::from_le_bytes([a, b, c, d]) as f64,
                ("FP64", b) => f64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
                (_, b) => i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f64,
            };
            serde_json::Number::from_f64(x)
                .map(Value::Number)
                .ok_or_else(|| format!("element {i} is not a finite number"))
        })
        .collect()
}

/// A JSON `data` array, flat or nested, as its row-major elements; refuses more
/// than `count`. Moves the elements (texts can be large): no copy.
pub fn flatten(data: Vec<Value>, count: usize) -> Result<Vec<Value>, String> {
    fn walk(v: Value, out: &mut Vec<Value>, limit: usize) -> bool {
        match v {
            Value::Array(items) => items.into_iter().all(|x| walk(x, out, limit)),
            other => {
                out.push(other);
                out.len() <= limit
            }
        }
    }
    let mut flat = Vec::with_capacity(count);
    if data.into_iter().all(|v| walk(v, &mut flat, count)) {
        Ok(flat)
    } else {
        Err(format!("has more elements than its shape's {count}"))
    }
}

/// An output tensor's data in binary form.
pub fn encode(data: &TensorData) -> Vec<u8> {
    match data {
        TensorData::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Int64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bytes_elements(texts: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for t in texts {
            out.extend((t.len() as u32).to_le_bytes());
            out.extend(t.as_bytes());
        }
        out
    }

    #[test]
    fn split_without_header_is_all_json() {
        let (h, t) = split_body(None, Bytes::from_static(b"{}")).unwrap();
        assert_eq!((&h[..], t.len()), (&b"{}"[..], 0));
    }

    #[test]
    fn split_at_the_declared_length() {
        let body = Bytes::from_static(b"{\"a\":1}\x01\x02\x03");
        let (h, t) = split_body(Some(b"7"), body).unwrap();
        assert_eq!(&h[..], b"{\"a\":1}");
        assert_eq!(&t[..], &[1, 2, 3]);
        let (h, t) = split_body(Some(b" 10 "), Bytes::from_static(b"0123456789")).unwrap();
        assert_eq!((h.len(), t.len()), (10, 0));
    }

    #[test]
    fn a_header_length_that_lies_is_refused() {
        let e = split_body(Some(b"11"), Bytes::from_static(b"0123456789")).unwrap_err();
        assert!(e.contains("says 11 bytes") && e.contains("has 10"), "{e}");
        for bad in [&b"ten"[..], b"-1", b"", b"\xff"] {
            let e = split_body(Some(bad), Bytes::from_static(b"{}")).unwrap_err();
            assert_eq!(e, "must be a byte count");
        }
    }

    #[test]
    fn numbers_decode_little_endian() {
        let raw: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(
            decode("FP32", &raw, 2).unwrap(),
            vec![json!(1.5), json!(-2.0)]
        );
        let raw: Vec<u8> = [7i64, -3].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            decode("INT64", &raw, 2).unwrap(),
            vec![json!(7.0), json!(-3.0)]
        );
        let raw: Vec<u8> = [0.25f64].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(decode("FP64", &raw, 1).unwrap(), vec![json!(0.25)]);
        let raw: Vec<u8> = [-9i32].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(decode("INT32", &raw, 1).unwrap(), vec![json!(-9.0)]);
    }

    #[test]
    fn truncated_data_is_refused() {
        let e = decode("FP32", &[0, 0, 128], 1).unwrap_err();
        assert!(e.contains("not a whole number of FP32"), "{e}");
        let mut raw = bytes_elements(&["hello"]);
        raw.pop();
        assert_eq!(
            decode("BYTES", &raw, 1).unwrap_err(),
            "binary BYTES data is truncated"
        );
        assert_eq!(
            decode("BYTES", &[5, 0], 1).unwrap_err(),
            "binary BYTES data is truncated"
        );
        // A length prefix near u32::MAX must not overflow or allocate.
        let e = decode("BYTES", &[0xff, 0xff, 0xff, 0xff, b'a'], 1).unwrap_err();
        assert_eq!(e, "binary BYTES data is truncated");
    }

    #[test]
    fn more_elements_than_the_shape_are_refused() {
        let raw: Vec<u8> = [1.0f32; 3].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert!(decode("FP32", &raw, 2).unwrap_err().contains("shape's 2"));
        let raw = bytes_elements(&["a", "b", "c"]);
        assert!(decode("BYTES", &raw, 2).unwrap_err().contains("shape's 2"));
        assert_eq!(decode("BYTES", &raw, 3).unwrap().len(), 3);
        let e = flatten(vec![json!([1, 2]), json!([3])], 2).unwrap_err();
        assert!(e.contains("shape's 2"));
        assert_eq!(
            flatten(vec![json!([[1], [2]]), json!(3)], 3).unwrap(),
            vec![json!(1), json!(2), json!(3)]
        );
    }

    #[test]
    fn wrong_datatypes_and_bad_values_are_refused() {
        assert!(decode("BOOL", &[1], 1).unwrap_err().contains("BOOL"));
        assert!(decode("FP16", &[0, 0], 1).unwrap_err().contains("FP16"));
        let nan: Vec<u8> = f32::NAN.to_le_bytes().to_vec();
        assert_eq!(
            decode("FP32", &nan, 1).unwrap_err(),
            "element 0 is not a finite number"
        );
        let mut raw = bytes_elements(&["ok"]);
        raw.extend(bytes_elements(&["x"]));
        let last = raw.len() - 1;
        raw[last] = 0xff;
        assert_eq!(
            decode("BYTES", &raw, 2).unwrap_err(),
            "element 1 is not UTF-8 text"
        );
    }

    #[test]
    fn encode_round_trips_through_decode() {
        let data = TensorData::Fp32(vec![0.5, -1.25, 3.0]);
        let back = decode("FP32", &encode(&data), 3).unwrap();
        assert_eq!(back, vec![json!(0.5), json!(-1.25), json!(3.0)]);
        let data = TensorData::Int64(vec![1, -2]);
        assert_eq!(encode(&data).len(), 16);
        assert_eq!(
            decode("INT64", &encode(&data), 2).unwrap(),
            vec![json!(1.0), json!(-2.0)]
        );
    }
}
