//! Who may use the embedded broker: users from `[broker]` with argon2-hashed passwords, the
//! logins printgate issued to Klipper printers (scoped to their `<instance>/` topics), the web's
//! API tokens (through a hook, as password with any user name), or — only when configured —
//! anonymous read-only clients. Verification is serialised (argon2 needs ~19 MiB per check) and
//! successful checks are cached by SHA-256 of the credentials so reconnecting clients are cheap.

use crate::broker::config::{Access, BrokerConfig};
use argon2::password_hash::PasswordHasher;
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Checks an API token of the web interface; `Some(access)` when valid.
pub type TokenCheck = Arc<dyn Fn(&str) -> Option<Access> + Send + Sync>;

/// Checks a printer login (user name, password); `Some(instance name)` when valid. Not cached:
/// a re-issued or withdrawn login takes effect at the next CONNECT.
pub type PrinterLoginCheck = Arc<dyn Fn(&str, &str) -> Option<String> + Send + Sync>;

/// Hash a password for `[[broker.users]]` (argon2id, random salt, PHC string).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password failed: {e}"))
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name as configured, `token:<user name given>` for API tokens, or `anonymous`.
    pub user: String,
    pub access: Access,
    /// A Klipper printer's login: only topics under this Moonraker instance name.
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("user name and password required")]
    Missing,
    #[error("unknown user or wrong password")]
    Rejected,
}

struct User {
    hash: String,
    access: Access,
}

pub struct Authenticator {
    users: HashMap<String, User>,
    tokens: Option<TokenCheck>,
    printer_logins: Option<PrinterLoginCheck>,
    allow_anonymous: bool,
    /// SHA-256(user \0 password) of recent successes → access.
    cache: Mutex<HashMap<[u8; 32], Access>>,
    verify_slot: Semaphore,
}

const CACHE_MAX: usize = 256;

impl Authenticator {
    pub fn new(cfg: &BrokerConfig, tokens: Option<TokenCheck>) -> Self {
        Authenticator {
            users: cfg
                .users
                .iter()
                .map(|u| {
                    (
                        u.name.clone(),
                        User {
                            hash: u.password_hash.clone(),
                            access: u.access,
                        },
                    )
                })
                .collect(),
            tokens,
            printer_logins: None,
            allow_anonymous: cfg.allow_anonymous,
            cache: Mutex::new(HashMap::new()),
            verify_slot: Semaphore::new(1),
        }
    }

    /// Accept the logins printgate issues to Klipper printers.
    pub fn with_printer_logins(mut self, check: PrinterLoginCheck) -> Self {
        self.printer_logins = Some(check);
        self
    }

    fn key(user: &str, password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password);
        h.finalize().into()
    }

    /// Check a CONNECT's credentials.
    pub async fn check(
        &self,
        user: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Identity, AuthError> {
        let (user, password) = match (user, password) {
            (None | Some(""), None) if self.allow_anonymous => {
                return Ok(Identity {
                    user: "anonymous".into(),
                    access: Access::Read,
                    scope: None,
                });
            }
            (_, None) => return Err(AuthError::Missing),
            (u, Some(p)) => (u.unwrap_or(""), p),
        };
        if let (Some(check), Ok(pw)) = (&self.printer_logins, std::str::from_utf8(password))
            && !self.users.contains_key(user)
            && let Some(instance) = check(user, pw)
        {
            return Ok(Identity {
                user: user.to_string(),
                access: Access::Read,
                scope: Some(instance),
            });
        }
        let key = Self::key(user, password);
        let cached = self.cache.lock().ok().and_then(|c| c.get(&key).copied());
        if let Some(access) = cached {
            return Ok(self.identity(user, access));
        }
        if let Some(u) = self.users.get(user) {
            let _slot = self
                .verify_slot
                .acquire()
                .await
                .map_err(|_| AuthError::Rejected)?;
            let hash = u.hash.clone();
            let pw = password.to_vec();
            let ok = tokio::task::spawn_blocking(move || {
                PasswordHash::new(&hash)
                    .map(|h| Argon2::default().verify_password(&pw, &h).is_ok())
                    .unwrap_or(false)
            })
            .await
            .unwrap_or(false);
            if ok {
                self.remember(key, u.access);
                return Ok(self.identity(user, u.access));
            }
            return Err(AuthError::Rejected);
        }
        if let (Some(check), Ok(token)) = (&self.tokens, std::str::from_utf8(password))
            && let Some(access) = check(token)
        {
            self.remember(key, access);
            return Ok(Identity {
                user: format!("token:{user}"),
                access,
                scope: None,
            });
        }
        Err(AuthError::Rejected)
    }

    fn identity(&self, user: &str, access: Access) -> Identity {
        if self.users.contains_key(user) {
            Identity {
                user: user.to_string(),
                access,
                scope: None,
            }
        } else {
            Identity {
                user: format!("token:{user}"),
                access,
                scope: None,
            }
        }
    }

    fn remember(&self, key: [u8; 32], access: Access) {
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_MAX {
                c.clear();
            }
            c.insert(key, access);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::config::BrokerUser;

    fn cfg() -> BrokerConfig {
        BrokerConfig {
            users: vec![
                BrokerUser {
                    name: "ha".into(),
                    password_hash: hash_password("secret").unwrap(),
                    access: Access::Control,
                },
                BrokerUser {
                    name: "phone".into(),
                    password_hash: hash_password("look").unwrap(),
                    access: Access::Read,
                },
            ],
            ..BrokerConfig::default()
        }
    }

    #[tokio::test]
    async fn users_tokens_and_anonymous() {
        let tokens: TokenCheck = Arc::new(|t| (t == "tok-123").then_some(Access::Control));
        let a = Authenticator::new(&cfg(), Some(tokens));
        let ha = a.check(Some("ha"), Some(b"secret")).await.unwrap();
        assert_eq!(ha.access, Access::Control);
        // Cached the second time, same answer.
        assert_eq!(a.check(Some("ha"), Some(b"secret")).await.unwrap(), ha);
        assert_eq!(
            a.check(Some("phone"), Some(b"look")).await.unwrap().access,
            Access::Read
        );
        assert_eq!(
            a.check(Some("ha"), Some(b"wrong")).await,
            Err(AuthError::Rejected)
        );
        assert_eq!(
            a.check(Some("nobody"), Some(b"secret")).await,
            Err(AuthError::Rejected)
        );
        assert_eq!(a.check(None, None).await, Err(AuthError::Missing));
        let t = a.check(Some("slicer"), Some(b"tok-123")).await.unwrap();
        assert_eq!(t.user, "token:slicer");
        let anon = Authenticator::new(
            &BrokerConfig {
                allow_anonymous: true,
                ..cfg()
            },
            None,
        );
        assert_eq!(anon.check(None, None).await.unwrap().access, Access::Read);
    }
}
