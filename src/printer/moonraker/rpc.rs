//! JSON-RPC 2.0 as Moonraker speaks it over MQTT: requests published on
//! `{instance}/moonraker/api/request`, responses (same `id`) on
//! `{instance}/moonraker/api/response`. Every request carries a unique `mqtt_timestamp`
//! (microseconds since the epoch) so Moonraker discards a duplicate delivery instead of
//! executing it twice. Pure: encoding, decoding and topic names.

use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};

/// The topics of one Moonraker instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub request: String,
    pub response: String,
    /// Retained `{"server":"online"|"offline"}`; the offline value is Moonraker's will.
    pub availability: String,
    pub klipper_status: String,
    /// Prefix of `publish_split_status` topics (`…/klipper/state/<object>/<field>`).
    pub klipper_state_prefix: String,
}

impl Topics {
    pub fn new(instance: &str) -> Self {
        Topics {
            request: format!("{instance}/moonraker/api/request"),
            response: format!("{instance}/moonraker/api/response"),
            availability: format!("{instance}/moonraker/status"),
            klipper_status: format!("{instance}/klipper/status"),
            klipper_state_prefix: format!("{instance}/klipper/state/"),
        }
    }

    /// The topic filters the gateway subscribes to.
    pub fn subscriptions(&self) -> [String; 4] {
        [
            self.availability.clone(),
            self.klipper_status.clone(),
            format!("{}#", self.klipper_state_prefix),
            self.response.clone(),
        ]
    }
}

/// Strictly increasing microsecond timestamps (never the same twice in this process).
#[derive(Debug, Default)]
pub struct Timestamps {
    last: AtomicU64,
}

impl Timestamps {
    pub fn next(&self) -> u64 {
        let now = u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or(0);
        let mut prev = self.last.load(Ordering::SeqCst);
        loop {
            let candidate = now.max(prev + 1);
            match self
                .last
                .compare_exchange(prev, candidate, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return candidate,
                Err(p) => prev = p,
            }
        }
    }
}

/// One request's payload. `params` must be an object (or null for none).
pub fn request(method: &str, params: Value, id: u64, mqtt_timestamp: u64) -> Vec<u8> {
    let mut params = match params {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    params.insert("mqtt_timestamp".into(), json!(mqtt_timestamp));
    let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
    body.to_string().into_bytes()
}

/// The objects query printgate sends for a full state.
pub fn objects_query_params(objects: &[&str]) -> Value {
    let map: serde_json::Map<String, Value> = objects
        .iter()
        .map(|o| ((*o).to_string(), Value::Null))
        .collect();
    json!({ "objects": map })
}

/// A decoded response.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// `None` for errors Moonraker could not tie to a request (parse errors).
    pub id: Option<u64>,
    pub outcome: Result<Value, RpcError>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON-RPC 2.0 response: {0}")]
    NotResponse(&'static str),
}

/// Decode a payload from the response topic.
pub fn decode_response(payload: &[u8]) -> Result<Response, DecodeError> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let Value::Object(obj) = v else {
        return Err(DecodeError::NotResponse("not an object"));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(DecodeError::NotResponse("\"jsonrpc\" is not \"2.0\""));
    }
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .ok_or(DecodeError::NotResponse("\"id\" is not a number"))?,
        ),
    };
    let outcome = match (obj.get("result"), obj.get("error")) {
        (Some(r), None) => Ok(r.clone()),
        (None, Some(e)) => Err(RpcError {
            code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: e
                .get("message")
                .and_then(Value::as_str)
                .map(|m| m.chars().take(300).collect())
                .unwrap_or_else(|| "error without a message".into()),
        }),
        _ => {
            return Err(DecodeError::NotResponse(
                "needs exactly one of \"result\" and \"error\"",
            ));
        }
    };
    Ok(Response { id, outcome })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_a_unique_timestamp() {
        let ts = Timestamps::default();
        let (a, b) = (ts.next(), ts.next());
        assert!(b > a);
        let body: Value = serde_json::from_slice(&request(
            "printer.print.start",
            json!({"filename": "pg-7.gcode"}),
            42,
            a,
        ))
        .unwrap();
        assert_eq!(body["jsonrpc"], "2.0");
        assert_eq!(body["method"], "printer.print.start");
        assert_eq!(body["params"]["filename"], "pg-7.gcode");
        assert_eq!(body["params"]["mqtt_timestamp"], a);
        assert_eq!(body["id"], 42);
        let q = objects_query_params(&["webhooks", "extruder"]);
        assert_eq!(q, json!({"objects": {"webhooks": null, "extruder": null}}));
    }

    #[test]
    fn responses() {
        let ok = decode_response(br#"{"jsonrpc":"2.0","result":"ok","id":7}"#).unwrap();
        assert_eq!(ok.id, Some(7));
        assert_eq!(ok.outcome, Ok(json!("ok")));
        let err = decode_response(
            br#"{"jsonrpc":"2.0","error":{"code":400,"message":"Print already in progress"},"id":"8"}"#,
        )
        .unwrap();
        assert_eq!(err.id, Some(8));
        assert_eq!(err.outcome.unwrap_err().code, 400);
        let parse = decode_response(
            br#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"}}"#,
        )
        .unwrap();
        assert_eq!(parse.id, None);
        for bad in [
            &b"garbage"[..],
            br#"[1]"#,
            br#"{"result":1,"id":1}"#,
            br#"{"jsonrpc":"2.0","id":1}"#,
            br#"{"jsonrpc":"2.0","result":1,"error":{},"id":1}"#,
            br#"{"jsonrpc":"2.0","result":1,"id":{"x":1}}"#,
        ] {
            assert!(
                decode_response(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
