//! Secrets of the web UI and how they are stored: random session ids, CSRF tokens, API tokens and
//! setup codes (all stored as SHA-256), argon2id password hashes, and a comparison that does not
//! leak timing. Pure functions apart from the random generator.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use rand::Rng;
use std::sync::OnceLock;

/// Prefix of generated API tokens (so they are recognisable in config files and secret scanners).
pub const API_TOKEN_PREFIX: &str = "pg_";

/// Letters of setup codes: no 0/O, 1/I/L, so a code read off a console can be typed back.
const SETUP_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
/// Characters in a setup code (31^12 ≈ 2^59).
const SETUP_CODE_LEN: usize = 12;

/// Shortest password accepted for accounts people create (the demo account is the exception).
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest password accepted (argon2 hashes anything; this only bounds the work per request).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// `n` random bytes as lowercase hex (a CSPRNG seeded from the OS).
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill(bytes.as_mut_slice());
    hex::encode(bytes)
}

/// A new session id: 256 random bits, 64 hex characters. Only the browser keeps it.
pub fn new_session_id() -> String {
    random_hex(32)
}

/// A new CSRF synchronizer token for a session.
pub fn new_csrf_token() -> String {
    random_hex(32)
}

/// A new API token: `pg_` and 192 random bits.
pub fn new_api_token() -> String {
    format!("{API_TOKEN_PREFIX}{}", random_hex(24))
}

/// A new setup code, shown as `ABCD-EFGH-JKMN`.
pub fn new_setup_code() -> String {
    let mut rng = rand::rng();
    let chars: Vec<char> = (0..SETUP_CODE_LEN)
        .map(|_| {
            let i = rng.random_range(0..SETUP_ALPHABET.len());
            char::from(SETUP_ALPHABET.get(i).copied().unwrap_or(b'A'))
        })
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// A setup code as typed (any case, spaces or dashes) in the form that is hashed.
pub fn normalize_setup_code(typed: &str) -> String {
    typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// How session ids, API tokens and setup codes are stored (the store owns the rule).
pub use crate::store::sha256_hex;

/// Equality whose running time depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("the password could not be hashed: {0}")]
pub struct HashError(String);

/// argon2id (RFC 9106 second recommendation as set by the `argon2` crate: 19 MiB, 2 passes) as a
/// PHC string with a random salt.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `password` matches the stored PHC string. A malformed hash never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the account does not exist, so that an unknown user costs the
/// same time as a wrong password.
pub fn dummy_password_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        // Hashing with the default parameters does not fail in practice; an empty string
        // would only make unknown users answer faster.
        hash_password("printgate timing equaliser").unwrap_or_default()
    })
}

/// Why a proposed password is not accepted, or `None` if it is.
pub fn password_problem(password: &str, confirm: &str) -> Option<String> {
    if password != confirm {
        return Some("The two passwords differ; type the same password twice.".into());
    }
    let n = password.chars().count();
    if n < MIN_PASSWORD_LEN {
        return Some(format!(
            "The password is too short ({n} characters); use at least {MIN_PASSWORD_LEN}."
        ));
    }
    if n > MAX_PASSWORD_LEN {
        return Some(format!(
            "The password is too long; use at most {MAX_PASSWORD_LEN} characters."
        ));
    }
    None
}

/// Why a proposed user name is not accepted, or `None` if it is: 1–32 letters, digits, `.`, `_`, `-`.
pub fn username_problem(name: &str) -> Option<String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.is_empty() || name.len() > 32 || !ok_chars {
        return Some(
            "Use a user name of 1 to 32 letters, digits, dots, dashes or underscores.".into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_codes_are_typeable_and_normalize() {
        let code = new_setup_code();
        assert_eq!(code.len(), 14);
        let norm = normalize_setup_code(&code.to_lowercase().replace('-', " "));
        assert_eq!(norm, code.replace('-', ""));
        assert!(norm.bytes().all(|b| SETUP_ALPHABET.contains(&b)));
    }

    #[test]
    fn tokens_are_random_and_prefixed() {
        let a = new_api_token();
        assert!(a.starts_with("pg_") && a.len() == 3 + 48);
        assert_ne!(a, new_api_token());
        assert_eq!(new_session_id().len(), 64);
        assert_ne!(sha256_hex(&a), a);
    }

    #[test]
    fn passwords_verify_and_bad_hashes_never_match() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsE", &h));
        assert!(!verify_password("x", "not a hash"));
        assert!(!verify_password("x", dummy_password_hash()));
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn password_and_username_rules() {
        assert!(password_problem("longenough", "longenough").is_none());
        assert!(password_problem("short", "short").is_some());
        assert!(password_problem("longenough", "longenougH").is_some());
        assert!(username_problem("admin").is_none());
        assert!(username_problem("").is_some());
        assert!(username_problem("a b").is_some());
    }
}
