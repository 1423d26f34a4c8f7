//! Per-user access rules of the embedded broker (pure). rumqttd 0.20 authenticates but has no
//! topic ACL, so printgate's front door applies these to every PUBLISH and to the will message:
//!
//! - `printgate/<printer>/cmd/<kind>`: control users only; it becomes a [`Decision::Command`].
//! - everything else under `printgate/`, the discovery prefix and `$…`: only the gateway itself
//!   publishes there (no spoofed state, availability or discovery) — except `<prefix>/status`,
//!   Home Assistant's birth message, which every signed-in client may send. (The front door
//!   refuses a `$…` publish without closing the connection, as Mosquitto refuses `$SYS`.)
//! - `<instance>/…` of a configured Moonraker printer: only that printer's own login (and the
//!   gateway itself, which does not come through the front door). Nobody else can send JSON-RPC
//!   to a printer (every start goes through the dispatcher) or fake its status.
//! - any other topic: control users yes, read-only users no.
//!
//! A printer's login ([`may_publish_scoped`], [`may_subscribe`]) may publish and subscribe only
//! under its own `<instance>/`, never to `<instance>/moonraker/api/request` (it answers, the
//! gateway asks). Other subscriptions are not restricted: nothing secret is ever published.

use crate::broker::config::Access;
use crate::broker::topics::{self, CommandKind, ROOT};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    Allow,
    /// A command for the printer with this topic id.
    Command(&'a str, CommandKind),
    Deny,
}

pub fn may_publish<'a>(
    access: Access,
    topic: &'a str,
    discovery_prefix: &str,
    printer_instances: &[String],
) -> Decision<'a> {
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        return Decision::Deny;
    }
    let under = |root: &str| topic == root || topic.starts_with(&format!("{root}/"));
    if printer_instances.iter().any(|i| under(i)) {
        return Decision::Deny;
    }
    if topic == format!("{discovery_prefix}/status") {
        return Decision::Allow;
    }
    if under(ROOT) || under(discovery_prefix) || topic.starts_with('$') {
        return match (access, topics::parse_cmd_topic(topic)) {
            (Access::Control, Some((printer, kind))) => Decision::Command(printer, kind),
            _ => Decision::Deny,
        };
    }
    match access {
        Access::Control => Decision::Allow,
        Access::Read => Decision::Deny,
    }
}

/// What the login of the Moonraker printer with `instance` may publish.
pub fn may_publish_scoped(instance: &str, topic: &str) -> bool {
    !topic.contains(['+', '#', '\0'])
        && topic
            .strip_prefix(instance)
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty() && rest != "moonraker/api/request")
}

/// Whether a client may subscribe to `filter`: a printer's login (`scope`) only under its own
/// `<instance>/`, with a literal first level; everybody else anywhere.
pub fn may_subscribe(scope: Option<&str>, filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    match scope {
        None => true,
        Some(instance) => filter
            .strip_prefix(instance)
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        use Access::*;
        let p = "homeassistant";
        assert_eq!(
            may_publish(Control, "printgate/P1/cmd/stop", p, &[]),
            Decision::Command("P1", CommandKind::Stop)
        );
        assert_eq!(
            may_publish(Read, "printgate/P1/cmd/stop", p, &[]),
            Decision::Deny
        );
        for spoof in [
            "printgate/P1/state",
            "printgate/availability",
            "printgate/P1/cmd/stop/result",
            "printgate",
            "homeassistant/sensor/x/y/config",
            "$SYS/x",
            "printgate/P1/cmd/explode",
        ] {
            assert_eq!(
                may_publish(Control, spoof, p, &[]),
                Decision::Deny,
                "{spoof}"
            );
        }
        assert_eq!(
            may_publish(Read, "homeassistant/status", p, &[]),
            Decision::Allow
        );
        assert_eq!(
            may_publish(Control, "home/lights/kitchen", p, &[]),
            Decision::Allow
        );
        assert_eq!(
            may_publish(Read, "home/lights/kitchen", p, &[]),
            Decision::Deny
        );
        assert_eq!(
            may_publish(Control, "printgateway/x", p, &[]),
            Decision::Allow
        );
        assert_eq!(may_publish(Control, "a/#", p, &[]), Decision::Deny);
        let printers = ["voron".to_string()];
        for t in [
            "voron/moonraker/api/request",
            "voron/klipper/status",
            "voron",
        ] {
            assert_eq!(may_publish(Control, t, p, &printers), Decision::Deny, "{t}");
        }
        assert_eq!(
            may_publish(Control, "voronoi/x", p, &printers),
            Decision::Allow
        );
    }

    #[test]
    fn printer_logins_stay_in_their_instance() {
        for ok in [
            "voron/moonraker/status",
            "voron/moonraker/api/response",
            "voron/klipper/status",
            "voron/klipper/state/extruder/temperature",
        ] {
            assert!(may_publish_scoped("voron", ok), "{ok}");
        }
        for bad in [
            "voron/moonraker/api/request",
            "ender/moonraker/api/response",
            "voronoi/klipper/status",
            "printgate/voron/cmd/stop",
            "homeassistant/status",
            "voron",
            "voron/",
            "voron/#",
        ] {
            assert!(!may_publish_scoped("voron", bad), "{bad}");
        }
        assert!(may_subscribe(Some("voron"), "voron/moonraker/api/request"));
        assert!(may_subscribe(Some("voron"), "voron/#"));
        for bad in [
            "#",
            "+/klipper/status",
            "ender/#",
            "voronoi/#",
            "printgate/#",
            "voron",
            "$SYS/#",
        ] {
            assert!(!may_subscribe(Some("voron"), bad), "{bad}");
        }
        assert!(may_subscribe(None, "#"));
    }
}
