//! What a virtual printer's clients read on `device/<serial>/report`: the real printer's own
//! payloads from printgate's one session, passed on with the real serial replaced by the
//! virtual one (and the printer's address in `net.info` replaced by the virtual printer's, so
//! that a tool reading the address from the report comes back to printgate), and the merged
//! document (Bambu Studio's merge rule, `printer/bambu/report.rs`)
//! that answers a client's `pushall` without asking the printer. Pure: bytes in, bytes out.
//!
//! Not passed on: acknowledgements and version answers, which answer printgate's own requests
//! (a client gets the answers to its own requests from the virtual printer), duplicates and
//! payloads that are not JSON objects.

use crate::printer::Model;
use crate::printer::bambu::report::{Ingested, ReportMerger};
use bytes::Bytes;
use serde_json::{Value, json};
use std::net::Ipv4Addr;

/// One virtual printer's view of its real printer's reports.
pub struct Mirror {
    merger: ReportMerger,
    /// The printer's last `get_version` answer (to printgate), decoded.
    version: Option<Value>,
    real_serial: String,
    virtual_serial: String,
    model: Model,
    /// The virtual printer's own IPv4 address, written into `net.info` (when known).
    address: Option<Ipv4Addr>,
}

impl Mirror {
    pub fn new(model: Model, real_serial: &str, virtual_serial: &str) -> Self {
        Self {
            merger: ReportMerger::new(),
            version: None,
            real_serial: real_serial.to_string(),
            virtual_serial: virtual_serial.to_string(),
            model,
            address: None,
        }
    }

    /// Reports name `address` as the printer's address (`net.info`); an unspecified address
    /// (`0.0.0.0`: every address of the gateway) names none and leaves `net.info` as the
    /// printer sent it.
    pub fn with_address(mut self, address: Ipv4Addr) -> Self {
        self.address = (!address.is_unspecified()).then_some(address);
        self
    }

    /// Take one payload of the real printer; returns what the clients get, if anything.
    pub fn on_printer_payload(&mut self, payload: &[u8]) -> Option<Bytes> {
        match self.merger.ingest(payload) {
            Ok(Ingested::Full | Ingested::Delta { .. } | Ingested::Ignored) => {
                Some(self.rewrite(payload))
            }
            Ok(Ingested::Version { .. }) => {
                self.version = crate::printer::bambu::report::decode(payload)
                    .ok()
                    .map(Value::Object);
                None
            }
            Ok(Ingested::Ack(_) | Ingested::Duplicate) | Err(_) => None,
        }
    }

    /// Some payloads were missed (a slow mirror): forget the document until the next full report.
    pub fn lost_payloads(&mut self) {
        self.merger = ReportMerger::new();
    }

    /// A full report (`msg` 0) built from the merged document, or `None` while no full report
    /// of the printer has been seen.
    pub fn full_report(&self) -> Option<Bytes> {
        if !self.merger.have_full_report() {
            return None;
        }
        let mut doc = self.merger.doc()?.clone();
        if let Some(print) = doc.get_mut("print").and_then(Value::as_object_mut) {
            print.insert("command".into(), "push_status".into());
            print.insert("msg".into(), 0.into());
        }
        Some(self.rewrite(doc.to_string().as_bytes()))
    }

    /// The answer to a client's `info.get_version`: the printer's own answer with the client's
    /// `sequence_id`, or (before the printer has answered printgate) one with the firmware
    /// version printgate knows.
    pub fn version_answer(&self, sequence_id: &Value, firmware: Option<&str>) -> Bytes {
        let mut answer = self.version.clone().unwrap_or_else(|| {
            json!({"info": {
                "command": "get_version",
                "module": [{
                    "name": "ota",
                    "sw_ver": firmware.unwrap_or(""),
                    "hw_ver": "OTA",
                    "sn": self.real_serial,
                    "product_name": format!("Bambu Lab {}", self.model.display_name()),
                    "visible": true,
                    "flag": 0,
                }],
                "result": "success",
                "reason": "",
            }})
        });
        if let Some(info) = answer.get_mut("info").and_then(Value::as_object_mut) {
            info.insert("sequence_id".into(), sequence_id.clone());
        }
        self.rewrite(answer.to_string().as_bytes())
    }

    fn rewrite(&self, payload: &[u8]) -> Bytes {
        let renamed = replace_all(payload, &self.real_serial, &self.virtual_serial);
        match self.address {
            Some(address) if contains(&renamed, b"\"net\"") => {
                with_address(&renamed, address).unwrap_or(renamed)
            }
            _ => renamed,
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `payload` with every non-zero `print.net.info[].ip` set to `address` (the printer's
/// encoding: the four octets as a little-endian u32); `None` when there is nothing to change.
fn with_address(payload: &[u8], address: Ipv4Addr) -> Option<Bytes> {
    let mut doc: Value = serde_json::from_slice(payload).ok()?;
    let infos = doc
        .get_mut("print")?
        .get_mut("net")?
        .get_mut("info")?
        .as_array_mut()?;
    let ip = u32::from_le_bytes(address.octets());
    let mut changed = false;
    for info in infos {
        if let Some(slot) = info.get_mut("ip")
            && slot.as_u64().is_some_and(|v| v != 0 && v != u64::from(ip))
        {
            *slot = ip.into();
            changed = true;
        }
    }
    changed.then(|| Bytes::from(doc.to_string()))
}

/// `payload` with every occurrence of `from` replaced by `to`.
pub fn replace_all(payload: &[u8], from: &str, to: &str) -> Bytes {
    let from = from.as_bytes();
    if from.is_empty() || payload.len() < from.len() {
        return Bytes::copy_from_slice(payload);
    }
    let mut out = Vec::with_capacity(payload.len());
    let mut i = 0;
    while i < payload.len() {
        if payload[i..].starts_with(from) {
            out.extend_from_slice(to.as_bytes());
            i += from.len();
        } else {
            out.push(payload[i]);
            i += 1;
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = "01P00A391800001";
    const VIRT: &str = "01P0PG000000042";

    fn mirror() -> Mirror {
        Mirror::new(Model::P1S, REAL, VIRT)
    }

    #[test]
    fn pushes_are_passed_on_with_the_serial_rewritten_and_acks_are_not() {
        let mut m = mirror();
        let full = format!(
            r#"{{"print":{{"command":"push_status","msg":0,"sequence_id":"1","gcode_state":"IDLE","sn":"{REAL}","nozzle_temper":21.0}}}}"#
        );
        let out = m.on_printer_payload(full.as_bytes()).expect("passed on");
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.contains(VIRT) && !text.contains(REAL), "{text}");
        let ack = r#"{"print":{"command":"pause","sequence_id":"20001","result":"success"}}"#;
        assert!(m.on_printer_payload(ack.as_bytes()).is_none());
        assert!(m.on_printer_payload(b"not json").is_none());
        assert!(m.on_printer_payload(full.as_bytes()).is_none(), "duplicate");
    }

    #[test]
    fn pushall_is_answered_from_the_merged_document() {
        let mut m = mirror();
        assert!(m.full_report().is_none(), "nothing known yet");
        m.on_printer_payload(
            br#"{"print":{"command":"push_status","msg":0,"sequence_id":"1","gcode_state":"IDLE","bed_temper":20.0}}"#,
        );
        m.on_printer_payload(
            br#"{"print":{"command":"push_status","msg":1,"sequence_id":"2","bed_temper":55.5}}"#,
        );
        let full: Value = serde_json::from_slice(&m.full_report().unwrap()).unwrap();
        assert_eq!(full["print"]["msg"], 0);
        assert_eq!(full["print"]["bed_temper"], 55.5);
        assert_eq!(full["print"]["gcode_state"], "IDLE");
        m.lost_payloads();
        assert!(m.full_report().is_none(), "untrusted after a gap");
    }

    #[test]
    fn get_version_is_the_printers_answer_with_the_clients_sequence_id() {
        let mut m = mirror();
        let synthesized: Value =
            serde_json::from_slice(&m.version_answer(&json!("7"), Some("01.08.00.00"))).unwrap();
        assert_eq!(synthesized["info"]["module"][0]["sw_ver"], "01.08.00.00");
        assert_eq!(synthesized["info"]["module"][0]["sn"], VIRT);
        let real = format!(
            r#"{{"info":{{"command":"get_version","sequence_id":"20000","module":[{{"name":"ota","sw_ver":"01.09.01.00","sn":"{REAL}"}}],"result":"success","reason":""}}}}"#
        );
        assert!(m.on_printer_payload(real.as_bytes()).is_none());
        let answer: Value = serde_json::from_slice(&m.version_answer(&json!("7"), None)).unwrap();
        assert_eq!(answer["info"]["sequence_id"], "7");
        assert_eq!(answer["info"]["module"][0]["sw_ver"], "01.09.01.00");
        assert_eq!(answer["info"]["module"][0]["sn"], VIRT);
    }

    #[test]
    fn the_printers_address_in_net_info_becomes_the_virtual_printers() {
        let vp: Ipv4Addr = "192.168.1.61".parse().unwrap();
        let mut m = mirror().with_address(vp);
        // 192.168.1.57 as the printer encodes it (little-endian), and an unused second entry.
        let printer_ip = u32::from_le_bytes([192, 168, 1, 57]);
        let full = format!(
            r#"{{"print":{{"command":"push_status","msg":0,"sequence_id":"1","sn":"{REAL}","net":{{"conf":0,"info":[{{"ip":{printer_ip},"mask":16777215}},{{"ip":0,"mask":0}}]}}}}}}"#
        );
        let out: Value =
            serde_json::from_slice(&m.on_printer_payload(full.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            out["print"]["net"]["info"][0]["ip"],
            u32::from_le_bytes(vp.octets())
        );
        assert_eq!(out["print"]["net"]["info"][1]["ip"], 0, "unused entry kept");
        assert_eq!(out["print"]["sn"], VIRT);
        let again: Value = serde_json::from_slice(&m.full_report().unwrap()).unwrap();
        assert_eq!(
            again["print"]["net"]["info"][0]["ip"],
            u32::from_le_bytes(vp.octets())
        );
        // Listening on every address: no single address to name, the report is passed as is.
        let mut any = mirror().with_address(Ipv4Addr::UNSPECIFIED);
        let out: Value =
            serde_json::from_slice(&any.on_printer_payload(full.as_bytes()).unwrap()).unwrap();
        assert_eq!(out["print"]["net"]["info"][0]["ip"], printer_ip);
        // A delta without `net` is passed byte for byte.
        let delta =
            br#"{"print":{"command":"push_status","msg":1,"sequence_id":"2","bed_temper":30.0}}"#;
        assert_eq!(&m.on_printer_payload(delta).unwrap()[..], &delta[..]);
    }

    #[test]
    fn replace_all_handles_edges() {
        assert_eq!(&replace_all(b"abcabc", "abc", "x")[..], b"xx");
        assert_eq!(&replace_all(b"ab", "abc", "x")[..], b"ab");
        assert_eq!(&replace_all(b"aab", "ab", "Z")[..], b"aZ");
    }
}
