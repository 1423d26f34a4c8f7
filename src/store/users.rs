//! Accounts of the web UI (migration `005_users.sql`): users with argon2id password hashes,
//! login sessions, API tokens and the one-time setup code. This module only stores and looks up
//! rows; hashing, secrets and policies (expiry, lockout) live in `web::auth`. Secrets arrive here
//! already hashed (SHA-256 hex), so nothing in these tables lets anyone in.

use super::{Store, StoreError};
use rusqlite::{OptionalExtension, Row, params};

/// One account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: i64,
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub is_admin: bool,
    pub created_at_ms: i64,
}

/// One login session (the cookie value is known only to the browser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id_hash: String,
    pub user_id: i64,
    pub csrf_token: String,
    pub created_at_ms: i64,
    pub last_seen_ms: i64,
    pub expires_at_ms: i64,
}

/// One API token (the token itself was shown once and is not stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRow {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub default_printer: Option<String>,
    pub created_at_ms: i64,
    pub last_used_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

/// Outcome of [`Store::create_user`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewUser {
    Created(UserRow),
    /// An account of that name (in any case) exists.
    NameTaken,
}

/// Outcome of [`Store::delete_user`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserDeletion {
    /// Deleted, with every session and API token of the account.
    Deleted,
    NotFound,
    /// Refused: it is the account of the person asking.
    Yourself,
    /// Refused: it is the only account.
    LastAccount,
}

/// Outcome of [`Store::create_first_user`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstUser {
    Created(UserRow),
    /// The code does not match the stored setup code (or there is none).
    WrongCode,
    /// An account exists already; setup is over.
    SetupDone,
}

const USER_COLUMNS: &str = "id, username, password_hash, is_admin, created_at_ms";
const SESSION_COLUMNS: &str =
    "id_hash, user_id, csrf_token, created_at_ms, last_seen_ms, expires_at_ms";
const TOKEN_COLUMNS: &str =
    "id, user_id, name, default_printer, created_at_ms, last_used_ms, revoked_at_ms";

fn user_row(row: &Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        id: row.get(0)?,
        username: row.get(1)?,
        password_hash: row.get(2)?,
        is_admin: row.get::<_, i64>(3)? != 0,
        created_at_ms: row.get(4)?,
    })
}

fn session_row(row: &Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        id_hash: row.get(0)?,
        user_id: row.get(1)?,
        csrf_token: row.get(2)?,
        created_at_ms: row.get(3)?,
        last_seen_ms: row.get(4)?,
        expires_at_ms: row.get(5)?,
    })
}

fn token_row(row: &Row<'_>) -> rusqlite::Result<ApiTokenRow> {
    Ok(ApiTokenRow {
        id: row.get(0)?,
        user_id: row.get(1)?,
        name: row.get(2)?,
        default_printer: row.get(3)?,
        created_at_ms: row.get(4)?,
        last_used_ms: row.get(5)?,
        revoked_at_ms: row.get(6)?,
    })
}

fn user_by_name_in(
    conn: &rusqlite::Connection,
    username: &str,
) -> rusqlite::Result<Option<UserRow>> {
    conn.query_row(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE username = ?1"),
        [username],
        user_row,
    )
    .optional()
}

impl Store {
    /// How many accounts exist.
    pub fn user_count(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))?)
    }

    /// The account named `username` (case-insensitive).
    pub fn user_by_name(&self, username: &str) -> Result<Option<UserRow>, StoreError> {
        Ok(user_by_name_in(&self.conn(), username)?)
    }

    pub fn user_by_id(&self, id: i64) -> Result<Option<UserRow>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
                [id],
                user_row,
            )
            .optional()?)
    }

    /// Every account, oldest first.
    pub fn list_users(&self) -> Result<Vec<UserRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"))?;
        let rows = stmt.query_map([], user_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Add an account (there is one role today: every account may do everything). Only after
    /// setup: a pending setup code stays the way to create the first one.
    pub fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        now_ms: i64,
    ) -> Result<NewUser, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if user_by_name_in(&tx, username)?.is_some() {
            return Ok(NewUser::NameTaken);
        }
        tx.execute(
            "INSERT INTO users (username, password_hash, is_admin, created_at_ms)
             VALUES (?1, ?2, 1, ?3)",
            params![username, password_hash, now_ms],
        )?;
        let user = user_by_name_in(&tx, username)?
            .ok_or_else(|| StoreError::Other(format!("account {username:?} vanished")))?;
        tx.commit()?;
        Ok(NewUser::Created(user))
    }

    /// Delete account `id` on behalf of account `acting_user_id`: never the asking account and
    /// never the last one. Its sessions and API tokens end in the same transaction.
    pub fn delete_user(&self, id: i64, acting_user_id: i64) -> Result<UserDeletion, StoreError> {
        if id == acting_user_id {
            return Ok(UserDeletion::Yourself);
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists: i64 = tx.query_row("SELECT count(*) FROM users WHERE id = ?1", [id], |r| {
            r.get(0)
        })?;
        if exists == 0 {
            return Ok(UserDeletion::NotFound);
        }
        let users: i64 = tx.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
        if users <= 1 {
            return Ok(UserDeletion::LastAccount);
        }
        tx.execute("DELETE FROM sessions WHERE user_id = ?1", [id])?;
        tx.execute("DELETE FROM api_tokens WHERE user_id = ?1", [id])?;
        tx.execute("DELETE FROM users WHERE id = ?1", [id])?;
        tx.commit()?;
        self.credentials_changed();
        Ok(UserDeletion::Deleted)
    }

    /// Set the password of `username`, creating the account (as an administrator) if it does
    /// not exist. Every session of the account ends, and a pending setup code is dropped (an
    /// account exists now). Returns the account and whether it was created.
    pub fn upsert_user_password(
        &self,
        username: &str,
        password_hash: &str,
        now_ms: i64,
    ) -> Result<(UserRow, bool), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let created = match user_by_name_in(&tx, username)? {
            Some(u) => {
                tx.execute(
                    "UPDATE users SET password_hash = ?1 WHERE id = ?2",
                    params![password_hash, u.id],
                )?;
                tx.execute("DELETE FROM sessions WHERE user_id = ?1", [u.id])?;
                false
            }
            None => {
                tx.execute(
                    "INSERT INTO users (username, password_hash, is_admin, created_at_ms)
                     VALUES (?1, ?2, 1, ?3)",
                    params![username, password_hash, now_ms],
                )?;
                true
            }
        };
        tx.execute("DELETE FROM setup_code", [])?;
        let user = user_by_name_in(&tx, username)?
            .ok_or_else(|| StoreError::Other(format!("account {username:?} vanished")))?;
        tx.commit()?;
        if !created {
            self.credentials_changed();
        }
        Ok((user, created))
    }

    /// Create the first account (an administrator) if `code_hash` matches the stored setup code
    /// and no account exists; the code is consumed in the same transaction, so it works once.
    pub fn create_first_user(
        &self,
        code_hash: &str,
        username: &str,
        password_hash: &str,
        now_ms: i64,
    ) -> Result<FirstUser, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let users: i64 = tx.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
        if users > 0 {
            return Ok(FirstUser::SetupDone);
        }
        let stored: Option<String> = tx
            .query_row("SELECT code_hash FROM setup_code WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        if stored.as_deref() != Some(code_hash) {
            return Ok(FirstUser::WrongCode);
        }
        tx.execute(
            "INSERT INTO users (username, password_hash, is_admin, created_at_ms)
             VALUES (?1, ?2, 1, ?3)",
            params![username, password_hash, now_ms],
        )?;
        tx.execute("DELETE FROM setup_code", [])?;
        let user = user_by_name_in(&tx, username)?
            .ok_or_else(|| StoreError::Other(format!("account {username:?} vanished")))?;
        tx.commit()?;
        Ok(FirstUser::Created(user))
    }

    /// Replace the setup code (only its hash is stored). Refused once an account exists.
    /// Returns whether the code was stored.
    pub fn replace_setup_code(&self, code_hash: &str, now_ms: i64) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let users: i64 = tx.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
        if users > 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO setup_code (id, code_hash, created_at_ms) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET code_hash = excluded.code_hash,
                                            created_at_ms = excluded.created_at_ms",
            params![code_hash, now_ms],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Whether a setup code is waiting to be used.
    pub fn setup_code_pending(&self) -> Result<bool, StoreError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT count(*) FROM setup_code", [], |r| r.get(0))?;
        Ok(n > 0)
    }

    // -- sessions -------------------------------------------------------------------------

    pub fn insert_session(&self, s: &SessionRow) -> Result<(), StoreError> {
        self.conn().execute(
            &format!("INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            params![
                s.id_hash,
                s.user_id,
                s.csrf_token,
                s.created_at_ms,
                s.last_seen_ms,
                s.expires_at_ms
            ],
        )?;
        Ok(())
    }

    /// The session with this id hash and its account, if it exists (expiry is the caller's
    /// decision).
    pub fn session_with_user(
        &self,
        id_hash: &str,
    ) -> Result<Option<(SessionRow, UserRow)>, StoreError> {
        let conn = self.conn();
        let session = conn
            .query_row(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id_hash = ?1"),
                [id_hash],
                session_row,
            )
            .optional()?;
        let Some(session) = session else {
            return Ok(None);
        };
        let user = conn
            .query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
                [session.user_id],
                user_row,
            )
            .optional()?;
        Ok(user.map(|u| (session, u)))
    }

    pub fn touch_session(&self, id_hash: &str, now_ms: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE sessions SET last_seen_ms = ?2 WHERE id_hash = ?1",
            params![id_hash, now_ms],
        )?;
        Ok(())
    }

    pub fn delete_session(&self, id_hash: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM sessions WHERE id_hash = ?1", [id_hash])?;
        Ok(())
    }

    /// End every session of an account (password change, recovery).
    pub fn delete_user_sessions(&self, user_id: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn()
            .execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])?)
    }

    /// Drop sessions that expired or were idle since before `idle_before_ms`.
    pub fn purge_sessions(&self, now_ms: i64, idle_before_ms: i64) -> Result<usize, StoreError> {
        Ok(self.conn().execute(
            "DELETE FROM sessions WHERE expires_at_ms <= ?1 OR last_seen_ms < ?2",
            params![now_ms, idle_before_ms],
        )?)
    }

    /// Change the password of an account and end its sessions.
    pub fn set_password(&self, user_id: i64, password_hash: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE users SET password_hash = ?1 WHERE id = ?2",
            params![password_hash, user_id],
        )?;
        tx.execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])?;
        tx.commit()?;
        self.credentials_changed();
        Ok(())
    }

    // -- API tokens -----------------------------------------------------------------------

    /// Store a new token (by hash); returns its id.
    pub fn insert_api_token(
        &self,
        user_id: i64,
        name: &str,
        token_hash: &str,
        default_printer: Option<&str>,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO api_tokens (user_id, name, token_hash, default_printer, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![user_id, name, token_hash, default_printer, now_ms],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Whether a token with this hash exists (revoked or not).
    pub fn api_token_exists(&self, token_hash: &str) -> Result<bool, StoreError> {
        let n: i64 = self.conn().query_row(
            "SELECT count(*) FROM api_tokens WHERE token_hash = ?1",
            [token_hash],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// The live (not revoked) token with this hash and its account.
    pub fn api_token_with_user(
        &self,
        token_hash: &str,
    ) -> Result<Option<(ApiTokenRow, UserRow)>, StoreError> {
        let conn = self.conn();
        let token = conn
            .query_row(
                &format!(
                    "SELECT {TOKEN_COLUMNS} FROM api_tokens
                     WHERE token_hash = ?1 AND revoked_at_ms IS NULL"
                ),
                [token_hash],
                token_row,
            )
            .optional()?;
        let Some(token) = token else {
            return Ok(None);
        };
        let user = conn
            .query_row(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
                [token.user_id],
                user_row,
            )
            .optional()?;
        Ok(user.map(|u| (token, u)))
    }

    pub fn touch_api_token(&self, id: i64, now_ms: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE api_tokens SET last_used_ms = ?2 WHERE id = ?1",
            params![id, now_ms],
        )?;
        Ok(())
    }

    /// The tokens of an account, newest first (revoked ones included).
    pub fn list_api_tokens(&self, user_id: i64) -> Result<Vec<ApiTokenRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE user_id = ?1 ORDER BY id DESC"
        ))?;
        let rows = stmt.query_map([user_id], token_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revoke a token of `user_id`; returns false if it is not theirs or already revoked.
    pub fn revoke_api_token(
        &self,
        user_id: i64,
        token_id: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE api_tokens SET revoked_at_ms = ?3
             WHERE id = ?1 AND user_id = ?2 AND revoked_at_ms IS NULL",
            params![token_id, user_id, now_ms],
        )?;
        if n > 0 {
            self.credentials_changed();
        }
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_added_and_deleted_but_never_the_last_or_oneself() {
        let store = Store::open_in_memory().unwrap();
        let NewUser::Created(a) = store.create_user("anna", "h1", 1).unwrap() else {
            panic!("created");
        };
        assert_eq!(
            store.create_user("ANNA", "h2", 2).unwrap(),
            NewUser::NameTaken
        );
        let NewUser::Created(b) = store.create_user("ben", "h2", 2).unwrap() else {
            panic!("created");
        };
        store
            .insert_session(&SessionRow {
                id_hash: "s".into(),
                user_id: b.id,
                csrf_token: "c".into(),
                created_at_ms: 0,
                last_seen_ms: 0,
                expires_at_ms: i64::MAX,
            })
            .unwrap();
        store.insert_api_token(b.id, "t", "th", None, 0).unwrap();
        assert_eq!(store.list_users().unwrap().len(), 2);
        assert_eq!(
            store.delete_user(a.id, a.id).unwrap(),
            UserDeletion::Yourself
        );
        assert_eq!(
            store.delete_user(999, a.id).unwrap(),
            UserDeletion::NotFound
        );
        assert_eq!(
            store.delete_user(b.id, a.id).unwrap(),
            UserDeletion::Deleted
        );
        assert!(store.session_with_user("s").unwrap().is_none());
        assert!(!store.api_token_exists("th").unwrap());
        assert_eq!(store.list_users().unwrap(), vec![a.clone()]);
        // Only one left: even another account (were it to exist) could not delete it.
        assert_eq!(
            store.delete_user(a.id, 999).unwrap(),
            UserDeletion::LastAccount
        );
    }
}
