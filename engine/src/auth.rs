//! Accounts: registration rules, password hashing, session tokens.
//!
//! Passwords are hashed with Argon2id on glommio's blocking pool (hashing is deliberately slow and must not stall a
//! shard). Tokens are 32 random bytes from the OS, hex encoded; only their SHA-256 is stored, so a leaked store does
//! not leak usable tokens. Tokens expire (the storage service's `token_ttl_ms`, 30 days by default), are capped per
//! login (`tokens_per_login_max`), and [`logout`] revokes one.
//!
//! A token check has three answers, not two ([`TokenCheck`]): valid, invalid (unknown, expired, revoked, or not the
//! login's), and *unavailable* (the store could not answer). Only "invalid" may be told to the client as
//! "Login authentication failed"; "unavailable" is a "try again", after which the web client keeps its token
//! (see [`LOGIN_UNAVAILABLE_NOTICE`]).

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};
use twitchy_storage::{AccountRecord, StorageError, StorageHandle};

use crate::protocol::session::Identity;

/// Password length limits, in bytes.
pub const PASSWORD_BYTES_MIN: usize = 8;
pub const PASSWORD_BYTES_MAX: usize = 128;

/// Name colors handed out at registration (Twitch's default palette).
const COLORS: [&str; 15] = [
    "#FF0000", "#0000FF", "#008000", "#B22222", "#FF7F50", "#9ACD32", "#FF4500", "#2E8B57",
    "#DAA520", "#D2691E", "#5F9EA0", "#1E90FF", "#FF69B4", "#8A2BE2", "#00FF7F",
];

/// Why registration or login failed, with the HTTP status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("username must be 4-25 characters of a-z, 0-9 and _")]
    InvalidUsername,
    #[error("password must be {PASSWORD_BYTES_MIN}-{PASSWORD_BYTES_MAX} characters")]
    InvalidPassword,
    #[error("username is already taken")]
    Taken,
    #[error("wrong username or password")]
    BadCredentials,
    #[error("storage is busy, try again")]
    Busy,
    #[error("storage is unavailable, try again")]
    Unavailable,
    #[error("missing or invalid token")]
    InvalidToken,
    #[error("internal error")]
    Internal,
}

impl AuthError {
    pub fn status(&self) -> u16 {
        match self {
            AuthError::InvalidUsername | AuthError::InvalidPassword => 400,
            AuthError::Taken => 409,
            AuthError::BadCredentials | AuthError::InvalidToken => 401,
            AuthError::Busy | AuthError::Unavailable => 503,
            AuthError::Internal => 500,
        }
    }
}

impl From<StorageError> for AuthError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::AlreadyExists => AuthError::Taken,
            StorageError::Busy => AuthError::Busy,
            other if other.is_transient() => {
                log::warn!("account storage unavailable: {other}");
                AuthError::Unavailable
            }
            other => {
                log::error!("account storage failed: {other}");
                AuthError::Internal
            }
        }
    }
}

/// Twitch's username rules: 4-25 characters of `[a-z0-9_]` (we lowercase first), not starting with `_`, and not
/// the anonymous `justinfan` prefix.
pub fn normalize_username(name: &str) -> Result<String, AuthError> {
    let login = name.to_ascii_lowercase();
    let ok = (4..=25).contains(&login.len())
        && login
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !login.starts_with('_')
        && !login.starts_with("justinfan");
    if ok {
        Ok(login)
    } else {
        Err(AuthError::InvalidUsername)
    }
}

fn check_password(password: &str) -> Result<(), AuthError> {
    if (PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&password.len()) {
        Ok(())
    } else {
        Err(AuthError::InvalidPassword)
    }
}

pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

fn color_for(login: &str) -> String {
    let sum: usize = login.bytes().map(usize::from).sum();
    COLORS[sum % COLORS.len()].to_string()
}

/// Creates an account and returns a fresh token.
pub async fn register(
    storage: &StorageHandle,
    username: &str,
    password: &str,
) -> Result<String, AuthError> {
    let login = normalize_username(username)?;
    check_password(password)?;
    if storage.account(&login).await?.is_some() {
        return Err(AuthError::Taken);
    }
    let password = password.to_string();
    let hash = glommio::executor()
        .spawn_blocking(move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h: PasswordHash| h.to_string())
                .map_err(|_| AuthError::Internal)
        })
        .await?;
    let account = AccountRecord {
        user_id: rand::random::<u64>() >> 12,
        color: color_for(&login),
        login: login.clone(),
        password_hash: hash,
        created_unix_ms: crate::shard::unix_ms(),
    };
    storage.create_account(account).await?;
    issue_token(storage, &login).await
}

/// Checks a password and returns a fresh token.
pub async fn login(
    storage: &StorageHandle,
    username: &str,
    password: &str,
) -> Result<String, AuthError> {
    let login = normalize_username(username).map_err(|_| AuthError::BadCredentials)?;
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(AuthError::BadCredentials);
    }
    let account = storage
        .account(&login)
        .await?
        .ok_or(AuthError::BadCredentials)?;
    let password = password.to_string();
    let verified = glommio::executor()
        .spawn_blocking(move || {
            PasswordHash::new(&account.password_hash)
                .map(|hash| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &hash)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await;
    if !verified {
        return Err(AuthError::BadCredentials);
    }
    issue_token(storage, &login).await
}

async fn issue_token(storage: &StorageHandle, login: &str) -> Result<String, AuthError> {
    let token = new_token();
    storage.put_token(token_sha256(&token), login).await?;
    Ok(token)
}

/// The NOTICE text for a login refused because the token is not valid (Twitch's own wording, no tags). The web
/// client forgets its saved token on it.
pub const LOGIN_FAILED_NOTICE: &str = "Login authentication failed";
/// The NOTICE text for a login that could not be checked because storage is failing. It contains "try again",
/// which is what the web client matches (before anything else) to keep its token and reconnect with back-off.
pub const LOGIN_UNAVAILABLE_NOTICE: &str = crate::protocol::session::LOGIN_UNAVAILABLE_TEXT;

/// The answer to an IRC `PASS oauth:<token>` + `NICK <login>`.
#[derive(Debug)]
pub enum TokenCheck {
    Valid(Identity),
    /// Unknown, expired or revoked, or belonging to another login: "Login authentication failed".
    Invalid,
    /// The store could not answer; the token may well be valid: "Login unavailable, try again".
    Unavailable,
}

/// Checks a token for a login, telling a bad token apart from a store that cannot answer.
pub async fn check_token(storage: &StorageHandle, login: &str, token: &str) -> TokenCheck {
    let token = token.strip_prefix("oauth:").unwrap_or(token);
    let owner = match storage.login_for_token(token_sha256(token)).await {
        Ok(Some(owner)) => owner,
        Ok(None) => return TokenCheck::Invalid,
        Err(err) => return unavailable(&err),
    };
    if !owner.eq_ignore_ascii_case(login) {
        return TokenCheck::Invalid;
    }
    match storage.account(&owner).await {
        Ok(Some(account)) => TokenCheck::Valid(Identity {
            display_name: account.login.clone(),
            login: account.login,
            user_id: account.user_id,
            color: account.color,
            badges: String::new(),
            is_mod: false,
        }),
        Ok(None) => TokenCheck::Invalid,
        Err(err) => unavailable(&err),
    }
}

fn unavailable(err: &StorageError) -> TokenCheck {
    if err.is_transient() {
        log::warn!("token check: storage unavailable: {err}");
    } else {
        log::error!("token check: storage failed: {err}");
    }
    TokenCheck::Unavailable
}

/// Revokes a token (logout). `InvalidToken` if it was not a live token.
pub async fn logout(storage: &StorageHandle, token: &str) -> Result<(), AuthError> {
    let token = token.strip_prefix("oauth:").unwrap_or(token);
    if token.is_empty() || token.len() > 256 {
        return Err(AuthError::InvalidToken);
    }
    let sha = token_sha256(token);
    // An expired token is still revoked (its row goes), but logging out with it is reported like any dead token.
    let live = storage.login_for_token(sha).await?.is_some();
    let revoked = storage.revoke_token(sha).await?;
    if live && revoked {
        Ok(())
    } else {
        Err(AuthError::InvalidToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_twitch_rules() {
        assert_eq!(normalize_username("Alice_99").unwrap(), "alice_99");
        for bad in [
            "abc",
            "a".repeat(26).as_str(),
            "bad name",
            "émile",
            "_lead",
            "justinfan123",
            "",
        ] {
            assert!(normalize_username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn storage_failures_are_not_credential_failures() {
        for err in [
            StorageError::Io("disk full".into()),
            StorageError::Unavailable("disk full".into()),
            StorageError::Closed,
        ] {
            let auth = AuthError::from(err);
            assert!(matches!(auth, AuthError::Unavailable), "{auth:?}");
            assert_eq!(auth.status(), 503);
            assert!(auth.to_string().contains("try again"));
        }
        assert_eq!(AuthError::from(StorageError::Busy).status(), 503);
        assert_eq!(AuthError::InvalidToken.status(), 401);
        assert!(LOGIN_UNAVAILABLE_NOTICE.contains("try again"));
        assert!(!LOGIN_FAILED_NOTICE.contains("try again"));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_ne!(token_sha256(&a), token_sha256(&b));
        assert!(check_password("short").is_err());
        assert!(check_password(&"x".repeat(129)).is_err());
        assert!(check_password("long enough").is_ok());
    }
}
