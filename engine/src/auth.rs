//! Accounts: registration rules, password hashing, session tokens.
//!
//! Passwords are hashed with Argon2id on the [`AuthService`]'s own threads, which run on the CPUs no shard uses when
//! there are any, behind a bounded queue: hashing is deliberately slow and must neither stall a shard nor queue
//! without limit (a full queue answers "busy, try again" at once). Logins and registrations are limited per account
//! and per address ([`crate::throttle`]), and a login for an unknown user verifies against a dummy hash, so its
//! timing does not tell whether the user exists. Tokens are 32 random bytes from the OS, hex encoded; only their SHA-256 is stored, so a leaked store does
//! not leak usable tokens. Tokens expire (the storage service's `token_ttl_ms`, 30 days by default), are capped per
//! login (`tokens_per_login_max`), and [`logout`] revokes one.
//!
//! A token check has three answers, not two ([`TokenCheck`]): valid, invalid (unknown, expired, revoked, or not the
//! login's), and *unavailable* (the store could not answer). Only "invalid" may be told to the client as
//! "Login authentication failed"; "unavailable" is a "try again", after which the web client keeps its token
//! (see [`LOGIN_UNAVAILABLE_NOTICE`]).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use futures_channel::oneshot;
use sha2::{Digest, Sha256};
use twitchy_storage::{AccountRecord, StorageError, StorageHandle};

use crate::core::moderation::{Profile, keys};
use crate::protocol::session::Identity;
use crate::throttle::{Limits, RetryAfterMs, Throttle};

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
    #[error("too many sign-in attempts, try again later")]
    AuthBusy,
    #[error("too many attempts, try again in {} s", .0.seconds())]
    Throttled(RetryAfterMs),
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
            AuthError::Busy | AuthError::AuthBusy | AuthError::Unavailable => 503,
            AuthError::Throttled(_) => 429,
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

/// Settings of the [`AuthService`].
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// Hashing threads.
    pub threads: usize,
    /// Hashing jobs that may wait; past this, sign-ins are answered "busy" at once.
    pub queue_max: usize,
    pub limits: Limits,
}

enum Job {
    Hash {
        password: String,
        reply: oneshot::Sender<Result<String, AuthError>>,
    },
    /// Verifies against `phc`, or against the dummy hash when there is no account.
    Verify {
        password: String,
        phc: Option<String>,
        reply: oneshot::Sender<bool>,
    },
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AuthMetrics {
    pub hashes: AtomicU64,
    pub verifies: AtomicU64,
    pub busy: AtomicU64,
    pub throttled: AtomicU64,
}

/// Password hashing threads behind a bounded queue, and the sign-in limits; one per process.
pub struct AuthService {
    jobs: flume::Sender<Job>,
    throttle: Mutex<Throttle>,
    started: Instant,
    pub metrics: std::sync::Arc<AuthMetrics>,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService").finish_non_exhaustive()
    }
}

/// An Argon2 hash of a random password with the same parameters as real ones, made once.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let password: [u8; 16] = rand::random();
        Argon2::default()
            .hash_password(&password)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

fn run_job(job: Job, metrics: &AuthMetrics) {
    match job {
        Job::Hash { password, reply } => {
            metrics.hashes.fetch_add(1, Ordering::Relaxed);
            let hash = Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h: PasswordHash| h.to_string())
                .map_err(|_| AuthError::Internal);
            let _ = reply.send(hash);
        }
        Job::Verify {
            password,
            phc,
            reply,
        } => {
            metrics.verifies.fetch_add(1, Ordering::Relaxed);
            let real = phc.is_some();
            let phc = phc.unwrap_or_else(|| dummy_hash().to_owned());
            let ok = PasswordHash::new(&phc)
                .map(|hash| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &hash)
                        .is_ok()
                })
                .unwrap_or(false);
            let _ = reply.send(ok && real);
        }
    }
}

impl AuthService {
    /// Starts the hashing threads. They inherit the calling thread's CPU set, so start this after restricting it to
    /// the CPUs no shard uses. They end when the service is dropped.
    pub fn start(config: AuthConfig) -> std::io::Result<AuthService> {
        let (jobs, queue) = flume::bounded::<Job>(config.queue_max.max(1));
        let metrics = std::sync::Arc::new(AuthMetrics::default());
        for i in 0..config.threads.max(1) {
            let queue = queue.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name(format!("auth-hash-{i}"))
                .spawn(move || {
                    // Made before the first sign-in, so that no unknown login pays for it (and takes longer).
                    dummy_hash();
                    while let Ok(job) = queue.recv() {
                        run_job(job, &metrics);
                    }
                })?;
        }
        Ok(AuthService {
            jobs,
            throttle: Mutex::new(Throttle::new(config.limits)),
            started: Instant::now(),
            metrics,
        })
    }

    /// The service's counters in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let m = &self.metrics;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "# HELP twitchy_auth_password_operations_total Argon2 operations run by the hashing threads\n\
             # TYPE twitchy_auth_password_operations_total counter\n\
             twitchy_auth_password_operations_total{{op=\"hash\"}} {}\n\
             twitchy_auth_password_operations_total{{op=\"verify\"}} {}\n\
             # HELP twitchy_auth_refused_total Sign-ins refused before any password work\n\
             # TYPE twitchy_auth_refused_total counter\n\
             twitchy_auth_refused_total{{reason=\"busy\"}} {}\n\
             twitchy_auth_refused_total{{reason=\"throttled\"}} {}\n",
            load(&m.hashes),
            load(&m.verifies),
            load(&m.busy),
            load(&m.throttled),
        )
    }

    /// Milliseconds on the monotonic clock since the service started.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn submit(&self, job: Job) -> Result<(), AuthError> {
        self.jobs.try_send(job).map_err(|_| {
            self.metrics.busy.fetch_add(1, Ordering::Relaxed);
            AuthError::AuthBusy
        })
    }

    async fn hash(&self, password: &str) -> Result<String, AuthError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash {
            password: password.to_owned(),
            reply,
        })?;
        answer.await.map_err(|_| AuthError::Internal)?
    }

    async fn verify(&self, password: &str, phc: Option<String>) -> Result<bool, AuthError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify {
            password: password.to_owned(),
            phc,
            reply,
        })?;
        answer.await.map_err(|_| AuthError::Internal)
    }

    fn throttled(&self, retry: RetryAfterMs) -> AuthError {
        self.metrics.throttled.fetch_add(1, Ordering::Relaxed);
        AuthError::Throttled(retry)
    }

    /// Creates an account and returns a fresh token.
    pub async fn register(
        &self,
        storage: &StorageHandle,
        ip: IpAddr,
        username: &str,
        password: &str,
    ) -> Result<String, AuthError> {
        let login = normalize_username(username)?;
        check_password(password)?;
        let now_ms = self.now_ms();
        self.throttle()
            .register(ip, now_ms)
            .map_err(|retry| self.throttled(retry))?;
        if storage.account(&login).await?.is_some() {
            return Err(AuthError::Taken);
        }
        let hash = self.hash(password).await?;
        let account = AccountRecord {
            user_id: rand::random::<u64>() >> 12,
            color: color_for(&login),
            login: login.clone(),
            password_hash: hash,
            created_unix_ms: crate::shard::unix_ms(),
        };
        let user_id = account.user_id;
        let color = account.color.clone();
        storage.create_account(account).await?;
        if username != login {
            // The login is lowercase; the display name keeps the case the user typed.
            let profile = Profile {
                display_name: username.to_owned(),
                color,
            };
            if let Err(err) = save_profile(storage, user_id, &profile).await {
                // The account exists: a failed profile only costs the capitals until the user renames.
                log::warn!("display name of new account {login} not saved: {err}");
            }
        }
        issue_token(storage, &login).await
    }

    /// Checks a password and returns a fresh token.
    pub async fn login(
        &self,
        storage: &StorageHandle,
        ip: IpAddr,
        username: &str,
        password: &str,
    ) -> Result<String, AuthError> {
        let login = normalize_username(username).map_err(|_| AuthError::BadCredentials)?;
        if password.len() > PASSWORD_BYTES_MAX {
            return Err(AuthError::BadCredentials);
        }
        self.throttle()
            .check_login(ip, &login, self.now_ms())
            .map_err(|retry| self.throttled(retry))?;
        let phc = storage.account(&login).await?.map(|a| a.password_hash);
        if !self.verify(password, phc).await? {
            self.throttle().login_failed(ip, &login, self.now_ms());
            return Err(AuthError::BadCredentials);
        }
        self.throttle().login_succeeded(&login);
        issue_token(storage, &login).await
    }
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
    match token_identity(storage, token, Some(login)).await {
        Ok(Some(identity)) => TokenCheck::Valid(identity),
        Ok(None) => TokenCheck::Invalid,
        Err(err) => unavailable(&err),
    }
}

/// The identity a live token belongs to (`oauth:` prefix allowed); `None` for an unknown, expired or revoked
/// token, for one whose account is gone, or for one that is not `login`'s when a login is given.
async fn token_identity(
    storage: &StorageHandle,
    token: &str,
    login: Option<&str>,
) -> Result<Option<Identity>, StorageError> {
    let token = token.strip_prefix("oauth:").unwrap_or(token);
    let Some(owner) = storage.login_for_token(token_sha256(token)).await? else {
        return Ok(None);
    };
    if login.is_some_and(|login| !owner.eq_ignore_ascii_case(login)) {
        return Ok(None);
    }
    match storage.account(&owner).await? {
        Some(account) => Ok(Some(identity_for(storage, account).await?)),
        None => Ok(None),
    }
}

/// A user's stored profile (display name and colour); the default when none was saved.
pub async fn load_profile(storage: &StorageHandle, user_id: u64) -> Result<Profile, StorageError> {
    let profile = crate::shard::json_setting(storage, &keys::profile(user_id)).await?;
    Ok(profile.unwrap_or_default())
}

/// Saves a user's profile durably.
pub async fn save_profile(
    storage: &StorageHandle,
    user_id: u64,
    profile: &Profile,
) -> Result<(), StorageError> {
    let value = serde_json::to_vec(profile).expect("a profile serialises");
    storage.put_setting(&keys::profile(user_id), value).await
}

/// The identity of an account: its login and id, with the display name and colour of its profile. A display
/// name that no longer matches the login (a rename whose profile write failed) falls back to the login.
pub async fn identity_for(
    storage: &StorageHandle,
    account: AccountRecord,
) -> Result<Identity, StorageError> {
    let profile = load_profile(storage, account.user_id).await?;
    let display_name = if profile.display_name.eq_ignore_ascii_case(&account.login) {
        profile.display_name
    } else {
        account.login.clone()
    };
    let color = if profile.color.is_empty() {
        account.color
    } else {
        profile.color
    };
    Ok(Identity {
        display_name,
        login: account.login,
        user_id: account.user_id,
        color,
        badges: String::new(),
        is_mod: false,
    })
}

/// The identity behind a bearer token (the HTTP API's `Authorization: Bearer <token>`).
pub async fn bearer_identity(storage: &StorageHandle, token: &str) -> Result<Identity, AuthError> {
    token_identity(storage, token, None)
        .await?
        .ok_or(AuthError::InvalidToken)
}

/// Changes a user's name: a new login when more than its case changes (the user id, password and tokens stay;
/// the old login becomes free), and the display name as typed. Returns the new login.
pub async fn rename(
    storage: &StorageHandle,
    identity: &Identity,
    new_name: &str,
) -> Result<String, AuthError> {
    let login = normalize_username(new_name)?;
    if login != identity.login {
        storage.rename_account(&identity.login, &login).await?;
    }
    let profile = Profile {
        display_name: new_name.to_owned(),
        color: identity.color.clone(),
    };
    save_profile(storage, identity.user_id, &profile).await?;
    Ok(login)
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
    fn throttled_sign_ins_answer_429_and_a_full_queue_503() {
        let err = AuthError::Throttled(RetryAfterMs(1_500));
        assert_eq!(err.status(), 429);
        assert!(err.to_string().contains("2 s"), "{err}");
        assert_eq!(AuthError::AuthBusy.status(), 503);
        assert!(AuthError::AuthBusy.to_string().contains("try again"));
    }

    #[test]
    fn an_unknown_user_is_verified_against_a_dummy_hash_and_fails() {
        let metrics = AuthMetrics::default();
        let (reply, mut answer) = oneshot::channel();
        run_job(
            Job::Verify {
                password: "anything at all".into(),
                phc: None,
                reply,
            },
            &metrics,
        );
        assert_eq!(answer.try_recv().unwrap(), Some(false));
        assert_eq!(metrics.verifies.load(Ordering::Relaxed), 1);
        assert!(PasswordHash::new(dummy_hash()).is_ok());
        // A real hash of the same password verifies.
        let (reply, mut answer) = oneshot::channel();
        run_job(
            Job::Hash {
                password: "anything at all".into(),
                reply,
            },
            &metrics,
        );
        let phc = answer.try_recv().unwrap().unwrap().unwrap();
        let (reply, mut answer) = oneshot::channel();
        run_job(
            Job::Verify {
                password: "anything at all".into(),
                phc: Some(phc),
                reply,
            },
            &metrics,
        );
        assert_eq!(answer.try_recv().unwrap(), Some(true));
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
