//! Home Assistant MQTT discovery (pure): the retained config messages under the discovery prefix
//! that make every printer a device with sensors, binary sensors, buttons and (with a relay) a
//! power switch, plus one device for the gateway itself. Removing a printer publishes an empty
//! retained payload on each of its config topics, which makes Home Assistant delete the entities.
//!
//! Field names follow Home Assistant's MQTT discovery documentation (sensor.mqtt,
//! binary_sensor.mqtt, button.mqtt, switch.mqtt); full names, no abbreviations. Entities are
//! per-entity discovery messages (`<prefix>/<component>/<node_id>/<object_id>/config`), which
//! every Home Assistant version with MQTT discovery understands.

use crate::broker::topics::{self, CommandKind, OFFLINE, ONLINE};
use serde_json::{Value, json};

/// What discovery needs to know about one printer. No secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaPrinter {
    /// Configured name (the device name in Home Assistant).
    pub name: String,
    /// Segment in `printgate/<printer>/…` (see [`topics::topic_ids`]).
    pub topic_id: String,
    /// Stable device identity (the serial for Bambu printers, `klipper-<instance>` for Klipper
    /// ones); names the Home Assistant device and every entity's unique id.
    pub unique_id: String,
    /// The printer's serial number, when it has one (Bambu printers).
    pub serial: Option<String>,
    /// `Bambu Lab`; `None` where printgate cannot know the maker (Klipper printers).
    pub manufacturer: Option<String>,
    /// Model display name, e.g. `P1S`.
    pub model: String,
    pub has_chamber_sensor: bool,
    /// A relay switches this printer's power.
    pub has_relay: bool,
    pub firmware: Option<String>,
}

/// The gateway device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaGateway {
    /// Distinguishes several gateways on one Home Assistant: `[a-zA-Z0-9_-]` only.
    pub id: String,
    pub name: String,
    pub version: String,
    /// Web interface, shown as the device's "Visit" link.
    pub configuration_url: Option<String>,
    /// The gateway's topic tree; in a fleet its gateway id is part of every printer's node id
    /// and unique ids, so printers of several gateways never collide in Home Assistant.
    pub tree: topics::Tree,
}

/// One discovery message.
#[derive(Debug, Clone, PartialEq)]
pub struct HaMessage {
    pub topic: String,
    pub payload: Value,
}

/// Keep only characters Home Assistant allows in node and object ids.
pub fn id_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn node_id(p: &HaPrinter, g: &HaGateway) -> String {
    node_for_unique_id(g, &p.unique_id)
}

fn node_for_unique_id(g: &HaGateway, unique_id: &str) -> String {
    match g.tree.gateway_id() {
        Some(gateway) => format!("printgate_{}_{}", id_safe(gateway), id_safe(unique_id)),
        None => format!("printgate_{}", id_safe(unique_id)),
    }
}

fn gateway_node(g: &HaGateway) -> String {
    format!("printgate_gateway_{}", id_safe(&g.id))
}

fn origin(g: &HaGateway) -> Value {
    json!({
        "name": "printgate",
        "sw_version": g.version,
        "support_url": "https://github.com/printgate/printgate",
    })
}

fn printer_device(p: &HaPrinter, g: &HaGateway) -> Value {
    let mut d = json!({
        "identifiers": [node_id(p, g)],
        "name": p.name,
        "model": p.model,
        "via_device": gateway_node(g),
    });
    if let Some(maker) = &p.manufacturer {
        d["manufacturer"] = json!(maker);
    }
    if let Some(serial) = &p.serial {
        d["serial_number"] = json!(serial);
    }
    if let Some(fw) = &p.firmware {
        d["sw_version"] = json!(fw);
    }
    if let Some(url) = &g.configuration_url {
        d["configuration_url"] = json!(url);
    }
    d
}

fn gateway_device(g: &HaGateway) -> Value {
    let mut d = json!({
        "identifiers": [gateway_node(g)],
        "name": g.name,
        "manufacturer": "printgate",
        "model": "printgate gateway",
        "sw_version": g.version,
    });
    if let Some(url) = &g.configuration_url {
        d["configuration_url"] = json!(url);
    }
    d
}

/// Entity keys of a printer, by component; the optional ones are listed too so that removal
/// clears everything that might have been published.
const SENSORS: [&str; 9] = [
    "gcode_state",
    "progress",
    "remaining_time",
    "eta",
    "layer",
    "nozzle_temperature",
    "bed_temperature",
    "chamber_temperature",
    "current_job",
];
const BINARY_SENSORS: [&str; 4] = ["online", "plate_clear", "safety_tripped", "error"];
const BUTTONS: [CommandKind; 4] = [
    CommandKind::Pause,
    CommandKind::Resume,
    CommandKind::Stop,
    CommandKind::PlateClear,
];
const SWITCHES: [&str; 1] = ["power"];

fn config_topic(prefix: &str, component: &str, node: &str, object: &str) -> String {
    format!("{prefix}/{component}/{node}/{object}/config")
}

/// Every config topic the printer with this unique id may have (for removal).
pub fn printer_config_topics(prefix: &str, g: &HaGateway, unique_id: &str) -> Vec<String> {
    let node = node_for_unique_id(g, unique_id);
    let mut v = Vec::new();
    for s in SENSORS {
        v.push(config_topic(prefix, "sensor", &node, s));
    }
    for s in BINARY_SENSORS {
        v.push(config_topic(prefix, "binary_sensor", &node, s));
    }
    for b in BUTTONS {
        v.push(config_topic(prefix, "button", &node, b.as_str()));
    }
    for s in SWITCHES {
        v.push(config_topic(prefix, "switch", &node, s));
    }
    v
}

/// Discovery messages for one printer.
pub fn printer_configs(prefix: &str, p: &HaPrinter, g: &HaGateway) -> Vec<HaMessage> {
    let node = node_id(p, g);
    let tree = &g.tree;
    let state = tree.state(&p.topic_id);
    let gateway_avail = json!({"topic": tree.gateway_availability(), "payload_available": ONLINE, "payload_not_available": OFFLINE});
    let printer_avail = json!({"topic": tree.availability(&p.topic_id), "payload_available": ONLINE, "payload_not_available": OFFLINE});
    let device = printer_device(p, g);
    let origin = origin(g);
    let base = |component: &str, key: &str, name: &str, needs_printer: bool| -> (String, Value) {
        let availability = if needs_printer {
            json!([gateway_avail, printer_avail])
        } else {
            json!([gateway_avail])
        };
        (
            config_topic(prefix, component, &node, key),
            json!({
                "name": name,
                "unique_id": format!("{node}_{component}_{key}"),
                "device": device,
                "origin": origin,
                "availability": availability,
                "availability_mode": "all",
            }),
        )
    };
    let mut out = Vec::new();
    let mut push = |(topic, mut payload): (String, Value), extra: Value| {
        if let (Some(obj), Some(extra)) = (payload.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        out.push(HaMessage { topic, payload });
    };

    let states: Vec<&str> = [
        "IDLE", "PREPARE", "SLICING", "RUNNING", "PAUSE", "FINISH", "FAILED", "UNKNOWN",
    ]
    .to_vec();
    push(
        base("sensor", "gcode_state", "Print state", true),
        json!({"state_topic": state, "value_template": "{{ value_json.gcode_state }}", "device_class": "enum", "options": states, "icon": "mdi:printer-3d"}),
    );
    push(
        base("sensor", "progress", "Progress", true),
        json!({"state_topic": state, "value_template": "{{ value_json.percent }}", "unit_of_measurement": "%", "state_class": "measurement", "icon": "mdi:progress-clock"}),
    );
    push(
        base("sensor", "remaining_time", "Remaining time", true),
        json!({"state_topic": state, "value_template": "{{ value_json.remaining_minutes }}", "device_class": "duration", "unit_of_measurement": "min"}),
    );
    push(
        base("sensor", "eta", "Print end", true),
        json!({"state_topic": state, "value_template": "{{ value_json.eta }}", "device_class": "timestamp"}),
    );
    push(
        base("sensor", "layer", "Layer", true),
        json!({"state_topic": state, "value_template": "{{ value_json.layer }}", "state_class": "measurement", "icon": "mdi:layers-triple", "json_attributes_topic": state, "json_attributes_template": "{{ {'total_layers': value_json.total_layers} | tojson }}"}),
    );
    let mut temps = vec![
        ("nozzle_temperature", "Nozzle temperature", "nozzle_temp"),
        ("bed_temperature", "Bed temperature", "bed_temp"),
    ];
    if p.has_chamber_sensor {
        temps.push(("chamber_temperature", "Chamber temperature", "chamber_temp"));
    }
    for (key, name, field) in temps {
        push(
            base("sensor", key, name, true),
            json!({"state_topic": state, "value_template": format!("{{{{ value_json.{field} }}}}"), "device_class": "temperature", "unit_of_measurement": "°C", "state_class": "measurement", "suggested_display_precision": 0}),
        );
    }
    push(
        base("sensor", "current_job", "Current job", true),
        json!({"state_topic": state, "value_template": "{{ value_json.job_name }}", "icon": "mdi:file-cad"}),
    );

    push(
        base("binary_sensor", "online", "Online", false),
        json!({"state_topic": tree.availability(&p.topic_id), "payload_on": ONLINE, "payload_off": OFFLINE, "device_class": "connectivity", "entity_category": "diagnostic"}),
    );
    let flag = |field: &str| format!("{{{{ 'ON' if value_json.{field} else 'OFF' }}}}");
    push(
        base("binary_sensor", "plate_clear", "Plate clear", false),
        json!({"state_topic": state, "value_template": flag("plate_clear"), "payload_on": "ON", "payload_off": "OFF", "icon": "mdi:checkbox-marked-circle-outline"}),
    );
    push(
        base("binary_sensor", "safety_tripped", "Safety tripped", false),
        json!({"state_topic": state, "value_template": flag("safety_tripped"), "payload_on": "ON", "payload_off": "OFF", "device_class": "safety"}),
    );
    push(
        base("binary_sensor", "error", "Printer error", true),
        json!({"state_topic": state, "value_template": flag("error"), "payload_on": "ON", "payload_off": "OFF", "device_class": "problem"}),
    );

    for (kind, name, icon) in [
        (CommandKind::Pause, "Pause", "mdi:pause"),
        (CommandKind::Resume, "Resume", "mdi:play"),
        (CommandKind::Stop, "Stop", "mdi:stop"),
        (CommandKind::PlateClear, "Plate clear", "mdi:check-bold"),
    ] {
        // Plate clear is a person's statement about the bed: it needs no live printer link.
        let needs_printer = kind != CommandKind::PlateClear;
        push(
            base("button", kind.as_str(), name, needs_printer),
            json!({"command_topic": tree.cmd(&p.topic_id, kind), "payload_press": "PRESS", "icon": icon}),
        );
    }
    if p.has_relay {
        push(
            base("switch", "power", "Power", false),
            json!({"command_topic": tree.cmd(&p.topic_id, CommandKind::Power), "state_topic": state, "value_template": flag("power_on"), "payload_on": "ON", "payload_off": "OFF", "state_on": "ON", "state_off": "OFF", "device_class": "outlet"}),
        );
    }
    out
}

/// Discovery messages for the gateway device.
pub fn gateway_configs(prefix: &str, g: &HaGateway) -> Vec<HaMessage> {
    let node = gateway_node(g);
    let device = gateway_device(g);
    let status = g.tree.gateway_status();
    let common = |key: &str, name: &str| {
        json!({
            "name": name,
            "unique_id": format!("{node}_{key}"),
            "device": device,
            "origin": origin(g),
            "availability": [{"topic": g.tree.gateway_availability(), "payload_available": ONLINE, "payload_not_available": OFFLINE}],
        })
    };
    let mut online = common("printers_online", "Printers online");
    let mut tripped = common("safety_tripped", "Safety tripped");
    if let (Some(o), Some(t)) = (online.as_object_mut(), tripped.as_object_mut()) {
        o.insert("state_topic".into(), json!(status));
        o.insert(
            "value_template".into(),
            json!("{{ value_json.printers_online }}"),
        );
        o.insert("state_class".into(), json!("measurement"));
        o.insert("icon".into(), json!("mdi:printer-3d"));
        t.insert("state_topic".into(), json!(status));
        t.insert(
            "value_template".into(),
            json!("{{ 'ON' if value_json.safety_tripped else 'OFF' }}"),
        );
        t.insert("payload_on".into(), json!("ON"));
        t.insert("payload_off".into(), json!("OFF"));
        t.insert("device_class".into(), json!("safety"));
    }
    vec![
        HaMessage {
            topic: config_topic(prefix, "sensor", &node, "printers_online"),
            payload: online,
        },
        HaMessage {
            topic: config_topic(prefix, "binary_sensor", &node, "safety_tripped"),
            payload: tripped,
        },
    ]
}

/// Check one discovery message against the parts of Home Assistant's MQTT discovery schema that
/// printgate uses; returns every problem found. Used by the tests and in debug builds.
pub fn schema_problems(msg: &HaMessage) -> Vec<String> {
    let mut problems = Vec::new();
    let parts: Vec<&str> = msg.topic.split('/').collect();
    let component = parts.get(1).copied().unwrap_or("");
    if parts.len() != 5 || parts.last() != Some(&"config") {
        problems.push(format!(
            "topic {} is not <prefix>/<component>/<node_id>/<object_id>/config",
            msg.topic
        ));
    }
    for id in parts.iter().skip(2).take(2) {
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            problems.push(format!(
                "id {id:?} has characters Home Assistant does not allow"
            ));
        }
    }
    let Some(obj) = msg.payload.as_object() else {
        return vec!["payload is not a JSON object".into()];
    };
    let common: &[&str] = &[
        "name",
        "unique_id",
        "device",
        "origin",
        "availability",
        "availability_mode",
        "icon",
        "entity_category",
        "json_attributes_topic",
        "json_attributes_template",
        "enabled_by_default",
        "qos",
        "encoding",
        "default_entity_id",
    ];
    let specific: &[&str] = match component {
        "sensor" => &[
            "state_topic",
            "value_template",
            "device_class",
            "unit_of_measurement",
            "state_class",
            "suggested_display_precision",
            "options",
            "expire_after",
            "force_update",
        ],
        "binary_sensor" => &[
            "state_topic",
            "value_template",
            "device_class",
            "payload_on",
            "payload_off",
            "expire_after",
            "off_delay",
        ],
        "button" => &[
            "command_topic",
            "payload_press",
            "device_class",
            "retain",
            "command_template",
        ],
        "switch" => &[
            "command_topic",
            "state_topic",
            "value_template",
            "payload_on",
            "payload_off",
            "state_on",
            "state_off",
            "device_class",
            "optimistic",
            "retain",
        ],
        other => {
            problems.push(format!(
                "component {other:?} is not one printgate publishes"
            ));
            &[]
        }
    };
    for key in obj.keys() {
        if !common.contains(&key.as_str()) && !specific.contains(&key.as_str()) {
            problems.push(format!("{component}: unknown field {key:?}"));
        }
    }
    let required: &[&str] = match component {
        "sensor" | "binary_sensor" => &["state_topic"],
        "button" => &["command_topic"],
        "switch" => &["command_topic"],
        _ => &[],
    };
    for r in required
        .iter()
        .chain(["unique_id", "device", "name"].iter())
    {
        if !obj.contains_key(*r) {
            problems.push(format!("{component}: required field {r:?} missing"));
        }
    }
    let device_classes: &[&str] = match component {
        "sensor" => &["enum", "duration", "timestamp", "temperature"],
        "binary_sensor" => &["connectivity", "safety", "problem"],
        "switch" => &["outlet", "switch"],
        "button" => &["identify", "restart", "update"],
        _ => &[],
    };
    if let Some(dc) = obj.get("device_class")
        && !dc.as_str().is_some_and(|d| device_classes.contains(&d))
    {
        problems.push(format!("{component}: device_class {dc} not valid here"));
    }
    if let Some(sc) = obj.get("state_class")
        && !sc
            .as_str()
            .is_some_and(|s| ["measurement", "total", "total_increasing"].contains(&s))
    {
        problems.push(format!("state_class {sc} not valid"));
    }
    match obj.get("device_class").and_then(Value::as_str) {
        Some("temperature") if obj.get("unit_of_measurement") != Some(&json!("°C")) => {
            problems.push("temperature needs °C".into())
        }
        Some("duration")
            if !obj
                .get("unit_of_measurement")
                .and_then(Value::as_str)
                .is_some_and(|u| ["s", "min", "h", "d"].contains(&u)) =>
        {
            problems.push("duration needs a time unit".into())
        }
        Some("enum") if !obj.get("options").is_some_and(Value::is_array) => {
            problems.push("enum needs options".into())
        }
        Some("timestamp" | "enum")
            if obj.contains_key("state_class") || obj.contains_key("unit_of_measurement") =>
        {
            problems.push("timestamp/enum sensors take no unit or state_class".into())
        }
        _ => {}
    }
    if let Some(ec) = obj.get("entity_category")
        && !ec
            .as_str()
            .is_some_and(|e| ["config", "diagnostic"].contains(&e))
    {
        problems.push(format!("entity_category {ec} not valid"));
    }
    if let Some(mode) = obj.get("availability_mode")
        && !mode
            .as_str()
            .is_some_and(|m| ["all", "any", "latest"].contains(&m))
    {
        problems.push(format!("availability_mode {mode} not valid"));
    }
    match obj.get("availability").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            for a in list {
                let ok = a.as_object().is_some_and(|a| {
                    a.get("topic")
                        .and_then(Value::as_str)
                        .is_some_and(|t| !t.is_empty())
                        && a.keys().all(|k| {
                            [
                                "topic",
                                "payload_available",
                                "payload_not_available",
                                "value_template",
                            ]
                            .contains(&k.as_str())
                        })
                });
                if !ok {
                    problems.push(format!("availability entry {a} not valid"));
                }
            }
        }
        _ => problems.push("availability must be a non-empty list".into()),
    }
    match obj.get("device").and_then(Value::as_object) {
        Some(d) => {
            if d.get("identifiers")
                .and_then(Value::as_array)
                .is_none_or(|i| i.is_empty())
            {
                problems.push("device.identifiers must be a non-empty list".into());
            }
            for k in d.keys() {
                if ![
                    "identifiers",
                    "connections",
                    "name",
                    "manufacturer",
                    "model",
                    "model_id",
                    "serial_number",
                    "sw_version",
                    "hw_version",
                    "suggested_area",
                    "via_device",
                    "configuration_url",
                ]
                .contains(&k.as_str())
                {
                    problems.push(format!("device: unknown field {k:?}"));
                }
            }
        }
        None => problems.push("device must be an object".into()),
    }
    match obj.get("origin").and_then(Value::as_object) {
        Some(o)
            if o.get("name").is_some_and(Value::is_string)
                && o.keys()
                    .all(|k| ["name", "sw_version", "support_url"].contains(&k.as_str())) => {}
        _ => problems.push("origin must be an object with a name".into()),
    }
    for key in ["state_topic", "command_topic", "json_attributes_topic"] {
        if let Some(t) = obj.get(key)
            && !t
                .as_str()
                .is_some_and(|t| !t.is_empty() && !t.contains(['+', '#']))
        {
            problems.push(format!("{key} must be a topic without wildcards"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway() -> HaGateway {
        HaGateway {
            id: "printgate".into(),
            name: "printgate".into(),
            version: "0.1.0".into(),
            configuration_url: Some("http://printgate.local:8080/".into()),
            tree: topics::Tree::default(),
        }
    }

    fn printer(chamber: bool, relay: bool) -> HaPrinter {
        HaPrinter {
            name: "Garage P1S".into(),
            topic_id: "Garage_P1S".into(),
            unique_id: "01P00A451200318".into(),
            serial: Some("01P00A451200318".into()),
            manufacturer: Some("Bambu Lab".into()),
            model: "P1S".into(),
            has_chamber_sensor: chamber,
            has_relay: relay,
            firmware: Some("01.08.02.00".into()),
        }
    }

    #[test]
    fn every_entity_passes_the_schema_check() {
        let g = gateway();
        for (chamber, relay) in [(false, false), (true, true)] {
            let msgs = printer_configs("homeassistant", &printer(chamber, relay), &g);
            let expected = 8 + usize::from(chamber) + 4 + 4 + usize::from(relay);
            assert_eq!(msgs.len(), expected);
            for m in msgs
                .iter()
                .chain(gateway_configs("homeassistant", &g).iter())
            {
                let p = schema_problems(m);
                assert!(p.is_empty(), "{}: {p:?}\n{}", m.topic, m.payload);
            }
        }
    }

    #[test]
    fn unique_ids_are_unique_and_removal_covers_everything() {
        let g = gateway();
        let p = printer(true, true);
        let msgs = printer_configs("ha", &p, &g);
        let mut ids: Vec<&str> = msgs
            .iter()
            .map(|m| m.payload["unique_id"].as_str().unwrap())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), msgs.len());
        let removal = printer_config_topics("ha", &g, &p.unique_id);
        for m in &msgs {
            assert!(removal.contains(&m.topic), "{}", m.topic);
            assert!(m.topic.starts_with("ha/"));
        }
    }

    #[test]
    fn topics_point_into_the_printer_tree() {
        let msgs = printer_configs("homeassistant", &printer(false, true), &gateway());
        let find = |t: &str| msgs.iter().find(|m| m.topic.ends_with(t)).unwrap();
        assert_eq!(
            find("/button/printgate_01P00A451200318/stop/config").payload["command_topic"],
            "printgate/Garage_P1S/cmd/stop"
        );
        assert_eq!(
            find("/switch/printgate_01P00A451200318/power/config").payload["command_topic"],
            "printgate/Garage_P1S/cmd/power"
        );
        assert_eq!(
            find("/sensor/printgate_01P00A451200318/progress/config").payload["state_topic"],
            "printgate/Garage_P1S/state"
        );
        assert_eq!(
            find("/binary_sensor/printgate_01P00A451200318/online/config").payload["state_topic"],
            "printgate/Garage_P1S/availability"
        );
        let dev = &find("/sensor/printgate_01P00A451200318/progress/config").payload["device"];
        assert_eq!(dev["via_device"], "printgate_gateway_printgate");
        assert_eq!(dev["serial_number"], "01P00A451200318");
    }

    #[test]
    fn fleet_gateways_never_share_an_id_or_a_topic() {
        let p = printer(true, true);
        let mut seen = std::collections::HashSet::new();
        for id in ["farm-a", "farm-b"] {
            let g = HaGateway {
                id: id.into(),
                tree: topics::Tree::new("printgate", Some(id)),
                ..gateway()
            };
            let msgs = printer_configs("homeassistant", &p, &g);
            let removal = printer_config_topics("homeassistant", &g, &p.unique_id);
            for m in &msgs {
                assert!(schema_problems(m).is_empty(), "{}", m.topic);
                assert!(removal.contains(&m.topic));
                assert!(seen.insert(m.topic.clone()), "{}", m.topic);
                assert!(seen.insert(m.payload["unique_id"].as_str().unwrap().to_string()));
                for key in ["state_topic", "command_topic"] {
                    if let Some(t) = m.payload.get(key).and_then(|v| v.as_str()) {
                        assert!(t.starts_with(&format!("printgate/{id}/")), "{t}");
                    }
                }
            }
        }
    }

    #[test]
    fn klipper_printer_has_its_own_device_without_serial_or_maker() {
        let klipper = HaPrinter {
            name: "Workbench Voron".into(),
            topic_id: "Workbench_Voron".into(),
            unique_id: "klipper-voron".into(),
            serial: None,
            manufacturer: None,
            model: "Klipper".into(),
            has_chamber_sensor: false,
            has_relay: false,
            firmware: None,
        };
        let msgs = printer_configs("homeassistant", &klipper, &gateway());
        for m in &msgs {
            assert!(m.topic.contains("/printgate_klipper-voron/"), "{}", m.topic);
            assert!(schema_problems(m).is_empty(), "{}", m.topic);
            let dev = &m.payload["device"];
            assert!(dev.get("serial_number").is_none() && dev.get("manufacturer").is_none());
        }
        let bambu = printer_configs("homeassistant", &printer(false, false), &gateway());
        assert!(
            msgs.iter()
                .all(|k| bambu.iter().all(|b| b.topic != k.topic))
        );
    }

    #[test]
    fn schema_check_catches_mistakes() {
        let mut m = printer_configs("homeassistant", &printer(false, false), &gateway()).remove(0);
        m.payload["stat_t"] = json!("x");
        m.payload["device_class"] = json!("bogus");
        m.payload.as_object_mut().unwrap().remove("state_topic");
        assert_eq!(schema_problems(&m).len(), 3, "{:?}", schema_problems(&m));
    }
}
