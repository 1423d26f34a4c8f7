//! How a printer reads a request on `device/<serial>/request` (docs/bambu-protocol.md §2.5,
//! §4): leniently, as the firmware does (trailing NUL and whitespace, Latin-1, raw control
//! characters inside strings as some clients send them), with the sections kept in message
//! order. Shared by the simulator and printgate's virtual printers so both read a client's
//! request alike. Pure.

use serde_json::Value;

/// Strip trailing NUL/whitespace and parse JSON, falling back to Latin-1 decoding.
pub fn parse_lenient(payload: &[u8]) -> Option<Value> {
    parse_lenient_as(payload)
}

/// [`parse_lenient`] into any type.
pub fn parse_lenient_as<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Option<T> {
    let end = payload
        .iter()
        .rposition(|b| !(*b == 0 || b.is_ascii_whitespace()))
        .map_or(0, |i| i + 1);
    let trimmed = payload.get(..end)?;
    serde_json::from_slice(trimmed)
        .ok()
        .or_else(|| {
            let latin1: String = trimmed.iter().map(|b| char::from(*b)).collect();
            serde_json::from_str(&latin1).ok()
        })
        .or_else(|| {
            // Raw control characters inside strings (a client that writes `"param": "G28\n"`
            // from a non-raw string sends a real newline): the firmware's parser takes them,
            // strict JSON does not, so escape them and try again.
            let text = String::from_utf8_lossy(trimmed);
            serde_json::from_str(&escape_controls_in_strings(&text)).ok()
        })
}

/// `text` with every control character inside a JSON string written as `\u00XX`.
fn escape_controls_in_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            } else if (c as u32) < 0x20 {
                out.push_str(&format!("\\u{:04x}", c as u32));
                continue;
            }
        } else if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    out
}

/// The top-level sections of a request (`print`, `info`, `pushing`, …) in message order.
/// `serde_json::Map` sorts its keys (the crate's `preserve_order` feature is off, and turning
/// it on would change the key order of every JSON document the gateway writes), so the
/// sections are read straight from the parser.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sections(pub Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Sections {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Sections;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of request sections")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Sections, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    out.push(entry);
                }
                Ok(Sections(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw newline inside a string (bambu-connect's `send_gcode`) still parses, as on the
    /// firmware; structure outside strings is untouched.
    #[test]
    fn raw_control_characters_inside_strings_are_tolerated() {
        let raw = b"{\"print\": {\"command\": \"gcode_line\", \"param\": \"M104 S230 \n\"},\n \"user_id\":\"1\"}";
        let v = parse_lenient(raw).expect("parses");
        assert_eq!(v["print"]["param"], "M104 S230 \n");
        assert_eq!(v["user_id"], "1");
        assert!(parse_lenient(b"{\"a\": \"x\\\"\n\"}").is_some());
        assert!(parse_lenient(b"{\"a\": ").is_none());
    }
}
