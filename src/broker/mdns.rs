//! Announces the gateway on the LAN with mDNS / DNS-SD (mdns-sd): `<hostname>.local` with
//! `_http._tcp` (web), `_octoprint._tcp` (so slicers such as Cura find the OctoPrint-compatible
//! API; TXT records as OctoPrint's discovery plugin publishes them: `path`, `version`, `api`,
//! `model`, `vendor`) and `_mqtt._tcp` (the broker). The record set is built by a pure function;
//! only [`announce`] touches the network (multicast), so `demo` and the tests never call it.

use mdns_sd::{ServiceDaemon, ServiceInfo};

/// Version string reported as the OctoPrint server version (kept in step with the web's
/// `/api/version`).
pub const OCTOPRINT_SERVER_VERSION: &str = "1.10.0";
/// OctoPrint API version.
pub const OCTOPRINT_API_VERSION: &str = "0.1";

/// One service to announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// e.g. `_http._tcp.local.`
    pub service_type: String,
    pub instance: String,
    pub port: u16,
    pub txt: Vec<(String, String)>,
}

/// The services of a gateway: web and OctoPrint API on `web_port`, MQTT on `mqtt_port` (and the
/// TLS port as `_secure-mqtt._tcp`) when the embedded broker listens.
pub fn service_specs(
    instance: &str,
    web_port: u16,
    mqtt_port: Option<u16>,
    mqtts_port: Option<u16>,
) -> Vec<ServiceSpec> {
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    let mut v = vec![
        ServiceSpec {
            service_type: "_http._tcp.local.".into(),
            instance: instance.into(),
            port: web_port,
            txt: vec![kv("path", "/")],
        },
        ServiceSpec {
            service_type: "_octoprint._tcp.local.".into(),
            instance: instance.into(),
            port: web_port,
            txt: vec![
                kv("path", "/"),
                kv("version", OCTOPRINT_SERVER_VERSION),
                kv("api", OCTOPRINT_API_VERSION),
                kv("model", "printgate"),
                kv("vendor", "printgate"),
            ],
        },
    ];
    if let Some(port) = mqtt_port {
        v.push(ServiceSpec {
            service_type: "_mqtt._tcp.local.".into(),
            instance: instance.into(),
            port,
            txt: Vec::new(),
        });
    }
    if let Some(port) = mqtts_port {
        v.push(ServiceSpec {
            service_type: "_secure-mqtt._tcp.local.".into(),
            instance: instance.into(),
            port,
            txt: Vec::new(),
        });
    }
    v
}

/// The mdns-sd record for one spec on `<hostname>.local.`, addresses filled in by the daemon.
pub fn service_info(spec: &ServiceSpec, hostname: &str) -> Result<ServiceInfo, mdns_sd::Error> {
    let host = format!(
        "{}.local.",
        hostname.trim_end_matches(".local").trim_end_matches('.')
    );
    let props: Vec<(&str, &str)> = spec
        .txt
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    Ok(ServiceInfo::new(
        &spec.service_type,
        &spec.instance,
        &host,
        "",
        spec.port,
        &props[..],
    )?
    .enable_addr_auto())
}

/// Start announcing (multicast on every interface). Keep the daemon; dropping it or calling
/// `shutdown` withdraws the announcements.
pub fn announce(specs: &[ServiceSpec], hostname: &str) -> anyhow::Result<ServiceDaemon> {
    let daemon = ServiceDaemon::new()?;
    for s in specs {
        daemon.register(service_info(s, hostname)?)?;
    }
    Ok(daemon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_for_web_octoprint_and_mqtt() {
        let specs = service_specs("printgate", 8080, Some(1883), Some(8883));
        let types: Vec<&str> = specs.iter().map(|s| s.service_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "_http._tcp.local.",
                "_octoprint._tcp.local.",
                "_mqtt._tcp.local.",
                "_secure-mqtt._tcp.local."
            ]
        );
        let octo = service_info(&specs[1], "printgate").unwrap();
        assert_eq!(octo.get_fullname(), "printgate._octoprint._tcp.local.");
        assert_eq!(octo.get_hostname(), "printgate.local.");
        assert_eq!(octo.get_port(), 8080);
        assert_eq!(octo.get_property_val_str("path"), Some("/"));
        assert_eq!(octo.get_property_val_str("api"), Some("0.1"));
        assert_eq!(
            octo.get_property_val_str("version"),
            Some(OCTOPRINT_SERVER_VERSION)
        );
        let mqtt = service_info(&specs[2], "printgate.local").unwrap();
        assert_eq!(mqtt.get_hostname(), "printgate.local.");
        assert_eq!(mqtt.get_port(), 1883);
        assert_eq!(service_specs("x", 80, None, None).len(), 2);
    }

    #[test]
    fn live_browse_is_not_run_here() {
        // The project's test rules forbid multicast; announce() is exercised only by `serve`.
        eprintln!("SKIPPED live mDNS browse: multicast is not allowed in printgate's tests");
    }
}
