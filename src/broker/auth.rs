//! Who may use the embedded broker: users from `[broker]` with argon2-hashed passwords, the
//! logins printgate issued to Klipper printers (scoped to their `<instance>/` topics), the web's
//! API tokens (through a hook, as password with any user name), or — only when configured —
//! anonymous read-only clients. Verification of `[broker]` users is serialised (argon2 needs
//! ~19 MiB per check) and their successes are cached by SHA-256 of the credentials so
//! reconnecting clients are cheap; that cache holds only users of the configuration file, which
//! cannot change while the gateway runs.
//!
//! Access can end while a client is connected: an API token revoked, its account deleted, a
//! printer's login withdrawn or re-issued. Each login that is let in becomes a [`Session`]
//! registered here; when the credentials signal moves ([`crate::store::Store::credentials`],
//! handed in as a plain `watch` receiver so the broker needs no other part), [`Authenticator::
//! revalidate`] checks every live token and printer login again and ends the sessions whose
//! credential no longer lets them in. A CONNECT checked while the signal moved is checked again
//! once registered, so no session slips between a revocation and its sweep.

use crate::broker::config::{Access, BrokerConfig};
use argon2::password_hash::PasswordHasher;
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

/// Checks an API token of the web interface; `Some(access)` when valid.
pub type TokenCheck = Arc<dyn Fn(&str) -> Option<Access> + Send + Sync>;

/// Checks a printer login (user name, password); `Some(instance name)` when valid. Not cached:
/// a re-issued or withdrawn login is refused at the next CONNECT, and its live session ends
/// at the next [`Authenticator::revalidate`].
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

/// A live login whose credential lives in the store (token or printer login), kept to check
/// it again when the credentials signal moves.
struct Live {
    user: String,
    password: Vec<u8>,
    identity: Identity,
    ended: CancellationToken,
}

type Registry = Arc<Mutex<HashMap<u64, Live>>>;

/// One admitted client. Dropping it unregisters it.
pub struct Session {
    pub identity: Identity,
    ended: CancellationToken,
    entry: Option<(Registry, u64)>,
}

impl Session {
    /// Resolves when the credential this session logged in with lost its access.
    pub async fn revoked(&self) {
        self.ended.cancelled().await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some((registry, id)) = self.entry.take()
            && let Ok(mut r) = registry.lock()
        {
            r.remove(&id);
        }
    }
}

pub struct Authenticator {
    users: HashMap<String, User>,
    tokens: Option<TokenCheck>,
    printer_logins: Option<PrinterLoginCheck>,
    allow_anonymous: bool,
    /// SHA-256(user \0 password) of recent successes of `[broker]` users → access.
    cache: Mutex<HashMap<[u8; 32], Access>>,
    verify_slot: Semaphore,
    credentials: Option<watch::Receiver<u64>>,
    live: Registry,
    next_id: std::sync::atomic::AtomicU64,
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
            credentials: None,
            live: Registry::default(),
            next_id: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Accept the logins printgate issues to Klipper printers.
    pub fn with_printer_logins(mut self, check: PrinterLoginCheck) -> Self {
        self.printer_logins = Some(check);
        self
    }

    /// The signal that moves when a credential loses its access (see the module doc).
    pub fn with_credentials_signal(mut self, signal: watch::Receiver<u64>) -> Self {
        self.credentials = Some(signal);
        self
    }

    /// A copy of the credentials signal, for the task that calls [`Self::revalidate`].
    pub fn credentials_signal(&self) -> Option<watch::Receiver<u64>> {
        self.credentials.clone()
    }

    fn generation(&self) -> u64 {
        self.credentials.as_ref().map_or(0, |c| *c.borrow())
    }

    fn key(user: &str, password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password);
        h.finalize().into()
    }

    /// Check a CONNECT's credentials and register the session, so that it ends when its
    /// credential loses its access.
    pub async fn admit(
        &self,
        user: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Session, AuthError> {
        let generation = self.generation();
        let identity = self.check(user, password).await?;
        let ended = CancellationToken::new();
        let (Some(user), Some(password)) = (user, password) else {
            return Ok(Session {
                identity,
                ended,
                entry: None,
            });
        };
        if self.users.contains_key(user) {
            // `[broker]` users cannot change while the gateway runs.
            return Ok(Session {
                identity,
                ended,
                entry: None,
            });
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut live) = self.live.lock() {
            live.insert(
                id,
                Live {
                    user: user.to_string(),
                    password: password.to_vec(),
                    identity: identity.clone(),
                    ended: ended.clone(),
                },
            );
        }
        let session = Session {
            identity,
            ended,
            entry: Some((self.live.clone(), id)),
        };
        // Revoked between the check and the registration: the sweep may have missed it.
        if self.generation() != generation
            && self.store_check(user, password).as_ref() != Some(&session.identity)
        {
            return Err(AuthError::Rejected);
        }
        Ok(session)
    }

    /// Check every live session against the store again; end those whose credential no longer
    /// gives the same access. Returns how many were ended.
    pub fn revalidate(&self) -> usize {
        let live: Vec<(String, Vec<u8>, Identity, CancellationToken)> = match self.live.lock() {
            Ok(l) => l
                .values()
                .map(|l| {
                    (
                        l.user.clone(),
                        l.password.clone(),
                        l.identity.clone(),
                        l.ended.clone(),
                    )
                })
                .collect(),
            Err(_) => return 0,
        };
        let mut ended = 0;
        for (user, password, identity, token) in live {
            if self.store_check(&user, &password).as_ref() != Some(&identity) {
                tracing::info!(user = %identity.user, "MQTT session ended: its credential was revoked or replaced");
                token.cancel();
                ended += 1;
            }
        }
        ended
    }

    /// The identity a printer login or API token gives today (never cached).
    fn store_check(&self, user: &str, password: &[u8]) -> Option<Identity> {
        let pw = std::str::from_utf8(password).ok()?;
        if let Some(check) = &self.printer_logins
            && let Some(instance) = check(user, pw)
        {
            return Some(Identity {
                user: user.to_string(),
                access: Access::Read,
                scope: Some(instance),
            });
        }
        let access = self.tokens.as_ref().and_then(|check| check(pw))?;
        Some(Identity {
            user: format!("token:{user}"),
            access,
            scope: None,
        })
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
        let Some(u) = self.users.get(user) else {
            return self.store_check(user, password).ok_or(AuthError::Rejected);
        };
        let key = Self::key(user, password);
        let cached = self.cache.lock().ok().and_then(|c| c.get(&key).copied());
        let identity = |access| Identity {
            user: user.to_string(),
            access,
            scope: None,
        };
        if let Some(access) = cached {
            return Ok(identity(access));
        }
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
        if !ok {
            return Err(AuthError::Rejected);
        }
        self.remember(key, u.access);
        Ok(identity(u.access))
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

    #[tokio::test]
    async fn revoked_credentials_end_their_sessions_and_are_refused() {
        let valid: Arc<Mutex<Vec<String>>> =
            Arc::new(Mutex::new(vec!["tok-a".into(), "tok-b".into()]));
        let v = valid.clone();
        let tokens: TokenCheck = Arc::new(move |t| {
            v.lock()
                .unwrap()
                .iter()
                .any(|x| x == t)
                .then_some(Access::Control)
        });
        let (signal, rx) = watch::channel(0u64);
        let a = Authenticator::new(&cfg(), Some(tokens)).with_credentials_signal(rx);
        let sa = a.admit(Some("x"), Some(b"tok-a")).await.unwrap();
        let sb = a.admit(Some("y"), Some(b"tok-b")).await.unwrap();
        let ha = a.admit(Some("ha"), Some(b"secret")).await.unwrap();
        valid.lock().unwrap().retain(|t| t != "tok-a");
        signal.send_modify(|n| *n += 1);
        assert_eq!(a.revalidate(), 1);
        tokio::time::timeout(std::time::Duration::from_secs(1), sa.revoked())
            .await
            .expect("revoked session ends");
        assert!(!sb.ended.is_cancelled() && !ha.ended.is_cancelled());
        assert_eq!(
            a.admit(Some("x"), Some(b"tok-a")).await.err(),
            Some(AuthError::Rejected)
        );
        // Ended sessions leave the registry.
        drop(sa);
        assert_eq!(a.live.lock().unwrap().len(), 1);
    }
}
