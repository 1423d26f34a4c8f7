//! Per-model shape of a full `push_status` report: every key path with its JSON type, derived
//! from real captured full reports of each model (see `tests/fixtures/bambu/README.md` for the
//! captures, their origin and why only key names and types are kept, never values).
//!
//! The report builder ([`crate::sim::reports`]) fills the values it models, then
//! [`conform`] makes the document take the model's real shape: keys the model does not send
//! are removed, keys it sends that the simulator does not model are added with a neutral value
//! of their type (`""`, `0`, `false`, `[]`, `{}`), inside arrays of objects too. [`diff`] lists
//! what still differs (missing, extra, other type) for the shape tests.

use crate::config::Model;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Path → JSON type (`string`, `number`, `bool`, `array`, `object`); array elements are
/// written `path[]`.
pub type KeySet = BTreeMap<String, String>;

const X1C: &str = include_str!("shapes/X1C.json");
const P1P: &str = include_str!("shapes/P1P.json");
const A1: &str = include_str!("shapes/A1.json");
const P2S: &str = include_str!("shapes/P2S.json");
const H2D: &str = include_str!("shapes/H2D.json");

/// Which capture a model's shape comes from. P1S and A1 mini have no public full-report
/// capture: they run the P1P's and the A1's firmware line and take those shapes; X1E takes
/// the X1C's.
pub fn capture_for(model: Model) -> &'static str {
    match model {
        Model::X1C | Model::X1E => "X1C",
        Model::P1P | Model::P1S => "P1P",
        Model::A1 | Model::A1Mini => "A1",
        Model::P2S => "P2S",
        Model::H2D | Model::Klipper => "H2D",
    }
}

fn parse(text: &str) -> KeySet {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("paths").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// The key set of `model`'s full report (paths start with `print`).
pub fn keyset(model: Model) -> &'static KeySet {
    static SETS: OnceLock<BTreeMap<&'static str, KeySet>> = OnceLock::new();
    let sets = SETS.get_or_init(|| {
        [
            ("X1C", X1C),
            ("P1P", P1P),
            ("A1", A1),
            ("P2S", P2S),
            ("H2D", H2D),
        ]
        .into_iter()
        .map(|(k, t)| (k, parse(t)))
        .collect()
    });
    static EMPTY: OnceLock<KeySet> = OnceLock::new();
    sets.get(capture_for(model))
        .unwrap_or_else(|| EMPTY.get_or_init(KeySet::new))
}

/// JSON type name of a value, as in the key sets.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

fn neutral(kind: &str) -> Value {
    match kind {
        "string" => Value::String(String::new()),
        "number" => Value::from(0),
        "bool" => Value::Bool(false),
        "array" => Value::Array(Vec::new()),
        "null" => Value::Null,
        _ => Value::Object(Map::new()),
    }
}

/// Direct children of `path` in `keys`: `(name, type)`.
fn children<'a>(keys: &'a KeySet, path: &str) -> Vec<(&'a str, &'a str)> {
    let prefix = format!("{path}.");
    keys.range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter_map(|(k, t)| {
            let rest = k.get(prefix.len()..)?;
            (!rest.contains('.') && !rest.contains("[]")).then_some((rest, t.as_str()))
        })
        .collect()
}

/// Make the object at `path` take the shape of `keys`: drop keys the model does not send, add
/// the ones it sends with a neutral value, recursively (array elements at `path[]`).
pub fn conform(obj: &mut Map<String, Value>, keys: &KeySet, path: &str) {
    if keys.is_empty() {
        return;
    }
    obj.retain(|k, _| keys.contains_key(&format!("{path}.{k}")));
    for (name, kind) in children(keys, path) {
        obj.entry(name.to_string()).or_insert_with(|| neutral(kind));
    }
    for (k, v) in obj.iter_mut() {
        conform_value(v, keys, &format!("{path}.{k}"));
    }
}

fn conform_value(v: &mut Value, keys: &KeySet, path: &str) {
    match v {
        Value::Object(o) => conform(o, keys, path),
        Value::Array(items) => {
            // An array the capture had empty tells nothing about its elements (e.g. `hms` of
            // a healthy printer): the modelled elements stay as they are.
            let elem = format!("{path}[]");
            if keys.contains_key(&elem) {
                for item in items.iter_mut() {
                    conform_value(item, keys, &elem);
                }
            }
        }
        _ => {}
    }
}

/// Every `(path, type)` of a document (paths rooted at `root`).
pub fn paths(v: &Value, root: &str) -> BTreeMap<String, std::collections::BTreeSet<&'static str>> {
    let mut out = BTreeMap::new();
    walk(v, root.to_string(), &mut out);
    out
}

fn walk(
    v: &Value,
    path: String,
    out: &mut BTreeMap<String, std::collections::BTreeSet<&'static str>>,
) {
    out.entry(path.clone()).or_default().insert(kind(v));
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                walk(x, format!("{path}.{k}"), out);
            }
        }
        Value::Array(a) => {
            for x in a {
                walk(x, format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

/// What differs between a report's `print` object and the model's key set.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShapeDiff {
    /// In the real capture, not in the simulator's report (outside empty arrays).
    pub missing: Vec<String>,
    /// In the simulator's report, never in the real capture.
    pub extra: Vec<String>,
    /// Both have the path, with other JSON types: `path: sim type, real type`.
    pub wrong_type: Vec<String>,
    /// Paths below an array the report (or the capture) leaves empty (an empty list is a real
    /// value too, e.g. no HMS): not compared.
    pub unexercised: Vec<String>,
}

impl ShapeDiff {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.wrong_type.is_empty()
    }
}

/// Compare the `print` object of a report with the key set. With `delta`, keys the report
/// does not carry are fine (a delta carries only what changed), but everything it carries must
/// exist in the real shape with the same type.
pub fn diff(print: &Value, keys: &KeySet, delta: bool) -> ShapeDiff {
    let got = paths(print, "print");
    let mut d = ShapeDiff::default();
    for (p, kinds) in &got {
        match keys.get(p) {
            // Inside an array the capture had empty (no element to compare with).
            None if p.match_indices("[]").any(|(i, _)| {
                let arr = &p[..i];
                keys.contains_key(arr) && !keys.contains_key(&format!("{arr}[]"))
            }) =>
            {
                d.unexercised.push(p.clone())
            }
            None => d.extra.push(p.clone()),
            Some(t) if !kinds.iter().all(|k| k == t) => {
                let sim: Vec<&str> = kinds.iter().copied().collect();
                d.wrong_type
                    .push(format!("{p}: {} (real: {t})", sim.join("|")));
            }
            Some(_) => {}
        }
    }
    if !delta {
        for p in keys.keys() {
            if got.contains_key(p) {
                continue;
            }
            // Below an array that the report has but leaves empty (or holds scalars only)?
            let under_empty = p.match_indices("[]").any(|(i, _)| {
                let arr = &p[..i];
                got.contains_key(arr) && !got.contains_key(&format!("{arr}[]"))
            });
            if under_empty {
                d.unexercised.push(p.clone());
            } else {
                d.missing.push(p.clone());
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_model_has_a_shape() {
        for m in [
            Model::X1C,
            Model::P1P,
            Model::P1S,
            Model::A1,
            Model::A1Mini,
            Model::P2S,
            Model::H2D,
        ] {
            let k = keyset(m);
            assert!(k.len() > 100, "{m:?}: {} paths", k.len());
            assert_eq!(
                k.get("print.gcode_state").map(String::as_str),
                Some("string")
            );
        }
    }

    #[test]
    fn conform_drops_adds_and_recurses_into_arrays() {
        let keys: KeySet = [
            ("print", "object"),
            ("print.a", "string"),
            ("print.n", "object"),
            ("print.n.x", "number"),
            ("print.l", "array"),
            ("print.l[]", "object"),
            ("print.l[].id", "string"),
            ("print.l[].k", "number"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let mut v = json!({"a": "x", "zz": 1, "l": [{"id": "0"}]});
        let mut unknown = json!({"e": [{"attr": 1}]});
        let with_empty: KeySet = [("print.e", "array")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        conform(unknown.as_object_mut().unwrap(), &with_empty, "print");
        assert_eq!(unknown, json!({"e": [{"attr": 1}]}));
        conform(v.as_object_mut().unwrap(), &keys, "print");
        assert_eq!(
            v,
            json!({"a": "x", "n": {"x": 0}, "l": [{"id": "0", "k": 0}]})
        );
        assert!(diff(&v, &keys, false).is_empty());
        let d = diff(&json!({"a": 1, "q": true}), &keys, true);
        assert_eq!(d.extra, vec!["print.q"]);
        assert_eq!(d.wrong_type, vec!["print.a: number (real: string)"]);
        let d = diff(&json!({"a": "", "n": {"x": 1}, "l": []}), &keys, false);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(
            d.unexercised,
            vec!["print.l[]", "print.l[].id", "print.l[].k"]
        );
    }
}
