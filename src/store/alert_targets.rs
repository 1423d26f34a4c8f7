//! Alert targets added in Settings → Notifications (migration `008_alert_targets.sql`): ntfy
//! topics and webhooks that the notifier uses together with `[alerts]` of the configuration.
//! Only stores and lists rows; validation is the web layer's, sending the notifier's.

use crate::alerts::{AlertTarget, StoredTarget};
use crate::store::{Store, StoreError};
use rusqlite::{Row, params};

/// One stored target.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertTargetRow {
    pub id: i64,
    pub name: String,
    pub target: AlertTarget,
    pub created_by: String,
    pub created_at_ms: i64,
}

impl From<AlertTargetRow> for StoredTarget {
    fn from(r: AlertTargetRow) -> StoredTarget {
        StoredTarget {
            id: r.id,
            name: r.name,
            target: r.target,
        }
    }
}

fn target_row(row: &Row<'_>) -> rusqlite::Result<AlertTargetRow> {
    let kind: String = row.get(2)?;
    let url: String = row.get(3)?;
    let token: Option<String> = row.get(4)?;
    let target = match kind.as_str() {
        "ntfy" => AlertTarget::Ntfy { url, token },
        "webhook" => AlertTarget::Webhook { url },
        other => {
            return Err(rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Text,
                format!("unknown alert target kind {other:?}").into(),
            ));
        }
    };
    Ok(AlertTargetRow {
        id: row.get(0)?,
        name: row.get(1)?,
        target,
        created_by: row.get(5)?,
        created_at_ms: row.get(6)?,
    })
}

impl Store {
    /// Store a new ntfy or webhook target; returns its id. Buzzers are refused (their GPIO pin
    /// is opened from the configuration at start).
    pub fn insert_alert_target(
        &self,
        name: &str,
        target: &AlertTarget,
        created_by: &str,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let (kind, url, token) = match target {
            AlertTarget::Ntfy { url, token } => ("ntfy", url, token.as_deref()),
            AlertTarget::Webhook { url } => ("webhook", url, None),
            AlertTarget::Buzzer { .. } => {
                return Err(StoreError::Other(
                    "a buzzer can only be set up in [alerts] of printgate.toml".into(),
                ));
            }
        };
        let conn = self.conn();
        conn.execute(
            "INSERT INTO alert_targets (name, kind, url, token, created_by, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, kind, url, token, created_by, now_ms],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Every stored target, oldest first.
    pub fn list_alert_targets(&self) -> Result<Vec<AlertTargetRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, name, kind, url, token, created_by, created_at_ms
             FROM alert_targets ORDER BY id",
        )?;
        let rows = stmt.query_map([], target_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Delete a stored target; returns whether it existed.
    pub fn delete_alert_target(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .execute("DELETE FROM alert_targets WHERE id = ?1", [id])?
            > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
        let ntfy = AlertTarget::Ntfy {
            url: "https://ntfy.sh/secret".into(),
            token: Some("tk_1".into()),
        };
        let hook = AlertTarget::Webhook {
            url: "http://127.0.0.1:9/hook".into(),
        };
        let a = store
            .insert_alert_target("Phone", &ntfy, "admin", 1)
            .unwrap();
        let b = store.insert_alert_target("HA", &hook, "admin", 2).unwrap();
        let rows = store.list_alert_targets().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].target, ntfy);
        assert_eq!(rows[1].target, hook);
        assert_eq!(rows[1].name, "HA");
        assert!(store.delete_alert_target(a).unwrap());
        assert!(!store.delete_alert_target(a).unwrap());
        assert_eq!(store.list_alert_targets().unwrap()[0].id, b);
        let buzzer = AlertTarget::Buzzer {
            pin: 4,
            pulse_ms: 100,
            active_low: false,
        };
        assert!(store.insert_alert_target("b", &buzzer, "admin", 3).is_err());
    }
}
