//! `[metrics]` in printgate.toml: the Prometheus endpoint `GET /metrics`, off unless enabled.

use serde::{Deserialize, Serialize};

/// Shortest dedicated metrics token accepted (a guessable token would expose the gateway's
/// printers and queue).
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` (Prometheus text format). Off by default: the page answers 404.
    #[serde(default)]
    pub enabled: bool,
    /// A token only for scraping, sent as `Authorization: Bearer <token>` (Prometheus
    /// `authorization: { credentials: … }`). Any API token of the gateway is accepted too, as
    /// `Authorization: Bearer` or `X-Api-Key`.
    #[serde(default)]
    pub token: Option<String>,
}

impl MetricsConfig {
    /// Problems, each naming the key and the fix.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(t) = &self.token
            && (t.len() < MIN_TOKEN_LEN || t.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            p.push(format!(
                "metrics.token: use at least {MIN_TOKEN_LEN} characters without spaces, e.g. the output of `openssl rand -hex 24`"
            ));
        }
        p
    }
}
