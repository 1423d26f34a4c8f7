//! Per-user access rules of the embedded broker (pure). rumqttd 0.20 authenticates but has no
//! topic ACL, so printgate's front door applies these to every PUBLISH and to the will message:
//!
//! - `printgate/<printer>/cmd/<kind>`: control users only; it becomes a [`Decision::Command`].
//! - everything else under `printgate/`, the discovery prefix and `$…`: only the gateway itself
//!   publishes there (no spoofed state, availability or discovery) — except `<prefix>/status`,
//!   Home Assistant's birth message, which every signed-in client may send.
//! - any other topic: control users yes, read-only users no.
//!
//! Subscriptions are not restricted: nothing secret is ever published.

use crate::broker::config::Access;
use crate::broker::topics::{self, CommandKind, ROOT};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    Allow,
    /// A command for the printer with this topic id.
    Command(&'a str, CommandKind),
    Deny,
}

pub fn may_publish<'a>(access: Access, topic: &'a str, discovery_prefix: &str) -> Decision<'a> {
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        return Decision::Deny;
    }
    let under = |root: &str| topic == root || topic.starts_with(&format!("{root}/"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        use Access::*;
        let p = "homeassistant";
        assert_eq!(
            may_publish(Control, "printgate/P1/cmd/stop", p),
            Decision::Command("P1", CommandKind::Stop)
        );
        assert_eq!(
            may_publish(Read, "printgate/P1/cmd/stop", p),
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
            assert_eq!(may_publish(Control, spoof, p), Decision::Deny, "{spoof}");
        }
        assert_eq!(
            may_publish(Read, "homeassistant/status", p),
            Decision::Allow
        );
        assert_eq!(
            may_publish(Control, "home/lights/kitchen", p),
            Decision::Allow
        );
        assert_eq!(may_publish(Read, "home/lights/kitchen", p), Decision::Deny);
        assert_eq!(may_publish(Control, "printgateway/x", p), Decision::Allow);
        assert_eq!(may_publish(Control, "a/#", p), Decision::Deny);
    }
}
