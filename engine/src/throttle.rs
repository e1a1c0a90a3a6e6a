//! Limits on password guessing and account creation, as a plain state machine with an injected clock.
//!
//! - An account that collects `failures_per_account_max` wrong passwords inside `window_ms` is locked, first for
//!   `backoff_ms_min`, then twice as long after each further failure (up to `backoff_ms_max`). A correct password
//!   after the lock ends clears the account's count.
//! - An address that collects `failures_per_ip_max` wrong passwords (over any accounts) inside the window is locked
//!   the same way, so spraying one password over many accounts is slowed too.
//! - An address may create `registrations_per_ip_max` accounts per `window_ms`.
//!
//! Loopback addresses can be exempted (`exempt_loopback`) for load tests on one machine. Every table is bounded
//! (`tracked_max`): past it, entries whose window and lock have passed are dropped, and if none can be, the new key
//! is not tracked (the address limit still applies to it).

use std::collections::HashMap;
use std::net::IpAddr;

/// The limits; see the module documentation.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub failures_per_account_max: u32,
    pub failures_per_ip_max: u32,
    pub registrations_per_ip_max: u32,
    pub window_ms: u64,
    pub backoff_ms_min: u64,
    pub backoff_ms_max: u64,
    pub exempt_loopback: bool,
    pub tracked_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            failures_per_account_max: 5,
            failures_per_ip_max: 20,
            registrations_per_ip_max: 10,
            window_ms: 15 * 60 * 1000,
            backoff_ms_min: 30 * 1000,
            backoff_ms_max: 15 * 60 * 1000,
            exempt_loopback: false,
            tracked_max: 100_000,
        }
    }
}

/// Refused: try again in this many milliseconds (at least 1 s when rounded up for `Retry-After`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RetryAfterMs(pub u64);

impl RetryAfterMs {
    /// Whole seconds, rounded up, for an HTTP `Retry-After` header.
    pub fn seconds(self) -> u64 {
        self.0.div_ceil(1000).max(1)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Count {
    window_start_ms: u64,
    count: u32,
    locked_until_ms: u64,
}

impl Count {
    fn live(&self, now_ms: u64, window_ms: u64) -> bool {
        now_ms < self.locked_until_ms || now_ms < self.window_start_ms.saturating_add(window_ms)
    }

    fn refusal(&self, now_ms: u64) -> Option<RetryAfterMs> {
        (now_ms < self.locked_until_ms).then(|| RetryAfterMs(self.locked_until_ms - now_ms))
    }

    /// Counts one more event; locks once `max` is reached, for a backoff that doubles with each event past it.
    /// Starts a new window once the current one and any lock have passed.
    fn roll(&mut self, now_ms: u64, window_ms: u64) {
        if now_ms >= self.window_start_ms.saturating_add(window_ms)
            && now_ms >= self.locked_until_ms
        {
            self.window_start_ms = now_ms;
            self.count = 0;
        }
    }

    fn add(&mut self, now_ms: u64, max: u32, limits: &Limits) {
        self.roll(now_ms, limits.window_ms);
        self.count = self.count.saturating_add(1);
        if self.count >= max {
            let doublings = (self.count - max).min(20);
            let backoff = limits
                .backoff_ms_min
                .saturating_mul(1 << doublings)
                .min(limits.backoff_ms_max);
            self.locked_until_ms = now_ms.saturating_add(backoff);
        }
    }
}

/// The limiter's state.
#[derive(Debug)]
pub struct Throttle {
    limits: Limits,
    accounts: HashMap<String, Count>,
    addresses: HashMap<IpAddr, Count>,
    registrations: HashMap<IpAddr, Count>,
}

fn slot<'a, K: std::hash::Hash + Eq + Clone>(
    table: &'a mut HashMap<K, Count>,
    key: &K,
    now_ms: u64,
    limits: &Limits,
) -> Option<&'a mut Count> {
    if !table.contains_key(key) && table.len() >= limits.tracked_max {
        table.retain(|_, c| c.live(now_ms, limits.window_ms));
        if table.len() >= limits.tracked_max {
            return None;
        }
    }
    Some(table.entry(key.clone()).or_default())
}

impl Throttle {
    pub fn new(limits: Limits) -> Throttle {
        Throttle {
            limits,
            accounts: HashMap::new(),
            addresses: HashMap::new(),
            registrations: HashMap::new(),
        }
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        self.limits.exempt_loopback && ip.is_loopback()
    }

    /// May `ip` try a password for `login` now?
    pub fn check_login(&self, ip: IpAddr, login: &str, now_ms: u64) -> Result<(), RetryAfterMs> {
        let account = self.accounts.get(login).and_then(|c| c.refusal(now_ms));
        let address = if self.exempt(ip) {
            None
        } else {
            self.addresses.get(&ip).and_then(|c| c.refusal(now_ms))
        };
        match (account, address) {
            (None, None) => Ok(()),
            (a, b) => Err(a.max(b).expect("one is set")),
        }
    }

    /// A wrong password (or an unknown login) from `ip` for `login`.
    pub fn login_failed(&mut self, ip: IpAddr, login: &str, now_ms: u64) {
        let limits = self.limits;
        if let Some(count) = slot(&mut self.accounts, &login.to_owned(), now_ms, &limits) {
            count.add(now_ms, limits.failures_per_account_max, &limits);
        }
        if !self.exempt(ip)
            && let Some(count) = slot(&mut self.addresses, &ip, now_ms, &limits)
        {
            count.add(now_ms, limits.failures_per_ip_max, &limits);
        }
    }

    /// A correct password: the account's failures are forgotten (the address's are not).
    pub fn login_succeeded(&mut self, login: &str) {
        self.accounts.remove(login);
    }

    /// May `ip` create an account now? Counts the attempt when it may.
    pub fn register(&mut self, ip: IpAddr, now_ms: u64) -> Result<(), RetryAfterMs> {
        if self.exempt(ip) {
            return Ok(());
        }
        let limits = self.limits;
        let Some(count) = slot(&mut self.registrations, &ip, now_ms, &limits) else {
            return Ok(());
        };
        // Registrations never lock: the window alone limits them.
        count.roll(now_ms, limits.window_ms);
        if count.count >= limits.registrations_per_ip_max {
            let retry = count.window_start_ms.saturating_add(limits.window_ms) - now_ms;
            return Err(RetryAfterMs(retry));
        }
        count.count += 1;
        Ok(())
    }

    /// Entries held, for tests and metrics.
    pub fn tracked(&self) -> usize {
        self.accounts.len() + self.addresses.len() + self.registrations.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 7));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 9));
    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn limits() -> Limits {
        Limits {
            failures_per_account_max: 3,
            failures_per_ip_max: 5,
            registrations_per_ip_max: 2,
            window_ms: 60_000,
            backoff_ms_min: 1_000,
            backoff_ms_max: 8_000,
            exempt_loopback: true,
            tracked_max: 4,
        }
    }

    #[test]
    fn an_account_locks_after_its_failures_and_the_lock_doubles() {
        let mut t = Throttle::new(limits());
        for now in [0, 10] {
            assert_eq!(t.check_login(A, "alice", now), Ok(()));
            t.login_failed(A, "alice", now);
        }
        assert_eq!(t.check_login(A, "alice", 20), Ok(()));
        t.login_failed(A, "alice", 20); // third failure: locked 1 s
        assert_eq!(t.check_login(A, "alice", 21), Err(RetryAfterMs(999)));
        // Another address is refused for this account too; another account from here is not.
        assert!(t.check_login(B, "alice", 21).is_err());
        assert_eq!(t.check_login(A, "bob", 21), Ok(()));
        assert_eq!(t.check_login(A, "alice", 1_020), Ok(()));
        t.login_failed(A, "alice", 1_020); // fourth: 2 s
        assert_eq!(t.check_login(A, "alice", 1_020), Err(RetryAfterMs(2_000)));
        t.login_failed(A, "alice", 3_020); // fifth: 4 s
        assert_eq!(t.check_login(A, "alice", 3_020), Err(RetryAfterMs(4_000)));
        t.login_failed(A, "alice", 7_020); // sixth: 8 s, the cap
        t.login_failed(A, "alice", 15_020); // seventh: still 8 s
        assert_eq!(t.check_login(A, "alice", 15_020), Err(RetryAfterMs(8_000)));
    }

    #[test]
    fn a_correct_password_forgets_the_accounts_failures() {
        let mut t = Throttle::new(limits());
        t.login_failed(A, "alice", 0);
        t.login_failed(A, "alice", 1);
        t.login_succeeded("alice");
        t.login_failed(A, "alice", 2);
        t.login_failed(A, "alice", 3);
        assert_eq!(t.check_login(A, "alice", 4), Ok(()));
    }

    #[test]
    fn failures_outside_the_window_start_a_new_count() {
        let mut t = Throttle::new(limits());
        t.login_failed(A, "alice", 0);
        t.login_failed(A, "alice", 1);
        t.login_failed(A, "alice", 60_001);
        assert_eq!(t.check_login(A, "alice", 60_002), Ok(()));
    }

    #[test]
    fn an_address_spraying_many_accounts_is_locked() {
        let mut t = Throttle::new(limits());
        for (i, login) in ["a1", "a2", "a3", "a4", "a5"].iter().enumerate() {
            assert_eq!(t.check_login(A, login, i as u64), Ok(()));
            t.login_failed(A, login, i as u64);
        }
        assert!(t.check_login(A, "fresh", 5).is_err());
        assert_eq!(t.check_login(B, "fresh", 5), Ok(()));
    }

    #[test]
    fn loopback_is_exempt_from_address_limits_only_when_configured() {
        let mut t = Throttle::new(limits());
        for i in 0..10 {
            t.login_failed(LOOPBACK, &format!("u{i}"), i);
            assert_eq!(t.register(LOOPBACK, i), Ok(()));
        }
        assert_eq!(t.check_login(LOOPBACK, "fresh", 10), Ok(()));
        let mut strict = Throttle::new(Limits {
            exempt_loopback: false,
            ..limits()
        });
        for i in 0..5 {
            strict.login_failed(LOOPBACK, &format!("u{i}"), i);
        }
        assert!(strict.check_login(LOOPBACK, "fresh", 5).is_err());
        // The account limit applies on loopback either way.
        let mut t = Throttle::new(limits());
        for i in 0..3 {
            t.login_failed(LOOPBACK, "alice", i);
        }
        assert!(t.check_login(LOOPBACK, "alice", 3).is_err());
    }

    #[test]
    fn registrations_per_address_are_limited_per_window() {
        let mut t = Throttle::new(limits());
        assert_eq!(t.register(A, 0), Ok(()));
        assert_eq!(t.register(A, 1), Ok(()));
        assert_eq!(t.register(A, 2), Err(RetryAfterMs(59_998)));
        assert_eq!(t.register(B, 2), Ok(()));
        assert_eq!(t.register(A, 60_000), Ok(()));
        assert_eq!(RetryAfterMs(59_998).seconds(), 60);
        assert_eq!(RetryAfterMs(1).seconds(), 1);
    }

    #[test]
    fn the_tables_stay_bounded() {
        let mut t = Throttle::new(Limits {
            exempt_loopback: false,
            ..limits()
        });
        for i in 0..100u64 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(i as u32 + 1));
            t.login_failed(ip, &format!("user{i}"), i);
            let _ = t.register(ip, i);
        }
        assert!(t.tracked() <= 3 * 4, "{}", t.tracked());
        // Once the window has passed, old entries make room for new ones.
        t.login_failed(A, "late", 200_000);
        t.login_failed(A, "late", 200_001);
        t.login_failed(A, "late", 200_002);
        assert!(t.check_login(B, "late", 200_003).is_err());
    }
}
