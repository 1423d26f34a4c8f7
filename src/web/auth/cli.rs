//! Accounts outside the web page: the first-run setup code, `printgate set-password` for
//! recovery, and the fixed demo account of `printgate demo`.

use super::secrets::{
    hash_password, new_setup_code, normalize_setup_code, password_problem, sha256_hex,
    username_problem,
};
use crate::config::Config;
use crate::store::{Store, StoreError};
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

/// User name of the demo account (`printgate demo` only; `serve` never creates it).
pub const DEMO_USER: &str = "demo";
/// Password of the demo account.
pub const DEMO_PASSWORD: &str = "demo";
/// The fixed API token of the demo (for slicers and scripts pointed at a demo).
pub const DEMO_API_TOKEN: &str = "printgate-demo";

/// If no account exists, make a new setup code (replacing any earlier one) and return it;
/// `None` once an account exists. Only its SHA-256 is stored.
pub fn issue_setup_code(store: &Store) -> Result<Option<String>, StoreError> {
    if store.user_count()? > 0 {
        return Ok(None);
    }
    let code = new_setup_code();
    let stored = store.replace_setup_code(
        &sha256_hex(&normalize_setup_code(&code)),
        crate::store::now_ms(),
    )?;
    Ok(stored.then_some(code))
}

/// At start: print a fresh setup code to the console and the log while no account exists.
pub(super) fn announce_setup_code(store: &Store) {
    match issue_setup_code(store) {
        Ok(Some(code)) => {
            tracing::warn!(
                "no account exists yet: open the web page, choose \"Set up\" and enter the setup code {code} (valid once; a new code is printed at each start until an account exists)"
            );
            eprintln!(
                "\n  printgate setup code: {code}\n  Open the web page and enter this code to create the first account.\n"
            );
        }
        Ok(None) => {}
        Err(e) => tracing::error!("cannot create a setup code: {e}"),
    }
}

/// Create the demo account (`demo`/`demo`) and its API token (`printgate-demo`) if missing.
/// An existing demo account keeps its password; a revoked demo token stays revoked.
pub fn ensure_demo_account(store: &Store) -> Result<(), StoreError> {
    let now = crate::store::now_ms();
    let user = match store.user_by_name(DEMO_USER)? {
        Some(u) => u,
        None => {
            let hash =
                hash_password(DEMO_PASSWORD).map_err(|e| StoreError::Other(e.to_string()))?;
            store.upsert_user_password(DEMO_USER, &hash, now)?.0
        }
    };
    let token_hash = sha256_hex(DEMO_API_TOKEN);
    if !store.api_token_exists(&token_hash)? {
        store.insert_api_token(
            user.id,
            "demo (slicers and scripts)",
            &token_hash,
            None,
            now,
        )?;
    }
    Ok(())
}

/// `printgate set-password --config FILE --user NAME`: read the new password twice (from the
/// terminal without echo, or two lines of stdin when it is not a terminal), set it, creating the
/// account if it does not exist. Every session of the account ends. Exit code 0 on success,
/// 2 for a bad config/input, 1 when the database fails.
pub fn set_password_cli(config: &Path, user: &str) -> i32 {
    let stdin = std::io::stdin();
    let mut stderr = std::io::stderr();
    if stdin.is_terminal() {
        let read = || -> std::io::Result<(String, String)> {
            let a = rpassword::prompt_password(format!("New password for {user}: "))?;
            let b = rpassword::prompt_password("The same password again: ")?;
            Ok((a, b))
        };
        match read() {
            Ok((a, b)) => set_password(config, user, &a, &b, &mut stderr),
            Err(e) => {
                let _ = writeln!(stderr, "error: cannot read the password: {e}");
                2
            }
        }
    } else {
        set_password_from(config, user, &mut stdin.lock(), &mut stderr)
    }
}

/// [`set_password_cli`] with the two password lines read from `input` and messages written to
/// `out` (used when stdin is not a terminal, and by tests).
pub fn set_password_from(
    config: &Path,
    user: &str,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> i32 {
    let mut line = || -> Option<String> {
        let mut s = String::new();
        match input.read_line(&mut s) {
            Ok(n) if n > 0 => Some(s.trim_end_matches(['\r', '\n']).to_string()),
            _ => None,
        }
    };
    let (Some(a), Some(b)) = (line(), line()) else {
        let _ = writeln!(
            out,
            "error: expected the new password twice, one per line, on standard input"
        );
        return 2;
    };
    set_password(config, user, &a, &b, out)
}

fn set_password(
    config: &Path,
    user: &str,
    password: &str,
    confirm: &str,
    out: &mut dyn Write,
) -> i32 {
    if let Some(p) = username_problem(user) {
        let _ = writeln!(out, "error: --user {user:?}: {p}");
        return 2;
    }
    if let Some(p) = password_problem(password, confirm) {
        let _ = writeln!(out, "error: {p}");
        return 2;
    }
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(errors) => {
            let _ = writeln!(out, "{} is not valid:\n{errors}", config.display());
            return 2;
        }
    };
    let result = (|| -> Result<bool, String> {
        let store = Store::open(&config.data_dir.join(crate::store::DATABASE_FILE))
            .map_err(|e| e.to_string())?;
        let hash = hash_password(password).map_err(|e| e.to_string())?;
        let (_, created) = store
            .upsert_user_password(user, &hash, crate::store::now_ms())
            .map_err(|e| e.to_string())?;
        Ok(created)
    })();
    match result {
        Ok(true) => {
            let _ = writeln!(out, "Created the administrator account {user:?}.");
            0
        }
        Ok(false) => {
            let _ = writeln!(
                out,
                "Changed the password of {user:?}; every session of this account was signed out."
            );
            0
        }
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
            1
        }
    }
}
