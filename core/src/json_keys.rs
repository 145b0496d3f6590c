//! JSON object keys matched case-insensitively, as the original service's decoder (Go's
//! `encoding/json`) matched them.
//!
//! Clients written for the original send `{"SDP": ..., "Type": "offer", "apikey": ...}` and
//! dialog commands such as `{"Type": "tts.speak", "Text": ...}`; Go accepted them because it
//! matches a key to a field without regard to case. serde matches exactly, so before a
//! serde type reads such an object, [`fold_keys`] renames each key that equals one of the type's
//! field names but for case to that field name. The values are kept byte for byte (a dial
//! `payload` travels on as the text the client sent), keys that name no field are dropped (the
//! types ignore unknown fields anyway), and when two keys name the same field the later one
//! wins, as in Go, where each key in turn decodes into the field it matches.
//!
//! Only the top level of an object is folded; a caller folds a nested object it knows (the
//! dialog commands' `meta`) with a second call.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// A JSON object's members in the order they came, each value as its raw text.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The JSON object `text` with its keys folded onto `fields` (see the module doc), as JSON text
/// for a serde type whose fields are `fields` to read. An error if `text` is not a JSON object.
pub fn fold_keys(text: &str, fields: &[&str]) -> Result<String, serde_json::Error> {
    let Members(members) = serde_json::from_str(text)?;
    // One slot per field; a later key for the same field replaces the earlier value.
    let mut slots: Vec<Option<Box<RawValue>>> = vec![None; fields.len()];
    for (key, value) in members {
        if let Some(i) = fields.iter().position(|f| f.eq_ignore_ascii_case(&key)) {
            slots[i] = Some(value);
        }
    }
    let mut out = String::with_capacity(text.len());
    out.push('{');
    for (field, value) in fields.iter().zip(slots) {
        if let Some(value) = value {
            if out.len() > 1 {
                out.push(',');
            }
            // A field name is one of ours (plain ASCII), so quoting it needs no escaping.
            out.push('"');
            out.push_str(field);
            out.push_str("\":");
            out.push_str(value.get());
        }
    }
    out.push('}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: [&str; 4] = ["sdp", "type", "apiKey", "payload"];

    #[test]
    fn keys_fold_onto_the_fields_whatever_their_case() {
        let folded = fold_keys(
            r#"{"SDP": "v=0", "Type": "offer", "apikey": "k", "other": 1}"#,
            &FIELDS,
        )
        .unwrap();
        assert_eq!(folded, r#"{"sdp":"v=0","type":"offer","apiKey":"k"}"#);
    }

    #[test]
    fn values_are_kept_byte_for_byte() {
        let folded = fold_keys(r#"{"Payload": {"b": 1,  "a": [1, 2.50]}}"#, &FIELDS).unwrap();
        assert_eq!(folded, r#"{"payload":{"b": 1,  "a": [1, 2.50]}}"#);
    }

    #[test]
    fn the_later_of_two_keys_for_one_field_wins() {
        let folded = fold_keys(r#"{"sdp": "a", "SDP": "b"}"#, &FIELDS).unwrap();
        assert_eq!(folded, r#"{"sdp":"b"}"#);
    }

    #[test]
    fn anything_but_an_object_is_an_error() {
        for text in ["[]", "\"sdp\"", "1", "null", "{", "{\"sdp\": }", ""] {
            assert!(fold_keys(text, &FIELDS).is_err(), "{text:?}");
        }
        assert_eq!(fold_keys("{}", &FIELDS).unwrap(), "{}");
    }
}
