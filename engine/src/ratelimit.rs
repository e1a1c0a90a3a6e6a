//! Per-user message rate limits, kept by each room's home shard. Sans-IO: the caller passes `now_ms`.
//!
//! A sliding log per user: the timestamps of the user's accepted messages within the window. A message is accepted
//! when fewer than `limit` messages were accepted in the last `window_ms`. This is exact (no burst at window edges),
//! and the log of one user never holds more than `limit` entries.

use std::collections::{HashMap, VecDeque};

/// Limits of one rate limiter.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    pub messages_per_window_max: u32,
    pub messages_per_window_max_mod: u32,
    pub window_ms: u64,
    /// Users tracked at most; past it, idle users are forgotten first (their logs are empty anyway).
    pub users_tracked_max: usize,
}

#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitConfig,
    logs: HashMap<u64, VecDeque<u64>>,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> RateLimiter {
        RateLimiter {
            config,
            logs: HashMap::new(),
        }
    }

    /// Records and accepts a message from `user_id` if it is within its limit.
    pub fn try_acquire(&mut self, user_id: u64, is_mod: bool, now_ms: u64) -> bool {
        let limit = if is_mod {
            self.config.messages_per_window_max_mod
        } else {
            self.config.messages_per_window_max
        } as usize;
        if self.logs.len() >= self.config.users_tracked_max && !self.logs.contains_key(&user_id) {
            self.forget_idle(now_ms);
            if self.logs.len() >= self.config.users_tracked_max {
                // Every tracked user is active: refusing is the bounded choice.
                return false;
            }
        }
        let window_ms = self.config.window_ms;
        let log = self.logs.entry(user_id).or_default();
        while log
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) >= window_ms)
        {
            log.pop_front();
        }
        if log.len() >= limit {
            return false;
        }
        log.push_back(now_ms);
        true
    }

    /// Drops users with no message in the current window.
    pub fn forget_idle(&mut self, now_ms: u64) {
        let window_ms = self.config.window_ms;
        self.logs.retain(|_, log| {
            log.back()
                .is_some_and(|&t| now_ms.saturating_sub(t) < window_ms)
        });
    }

    pub fn users_tracked(&self) -> usize {
        self.logs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> RateLimiter {
        RateLimiter::new(RateLimitConfig {
            messages_per_window_max: 20,
            messages_per_window_max_mod: 100,
            window_ms: 30_000,
            users_tracked_max: 3,
        })
    }

    #[test]
    fn twenty_per_thirty_seconds_sliding() {
        let mut rl = limiter();
        for i in 0..20 {
            assert!(rl.try_acquire(1, false, 1000 + i * 100), "message {i}");
        }
        assert!(!rl.try_acquire(1, false, 5_000));
        // Another user is not affected.
        assert!(rl.try_acquire(2, false, 5_000));
        // The first message leaves the window at 31_000.
        assert!(!rl.try_acquire(1, false, 30_999));
        assert!(rl.try_acquire(1, false, 31_000));
        assert!(!rl.try_acquire(1, false, 31_050));
    }

    #[test]
    fn moderators_get_the_higher_limit() {
        let mut rl = limiter();
        let accepted = (0..150).filter(|i| rl.try_acquire(7, true, 10 + i)).count();
        assert_eq!(accepted, 100);
    }

    #[test]
    fn tracked_users_are_bounded() {
        let mut rl = limiter();
        assert!(rl.try_acquire(1, false, 0));
        assert!(rl.try_acquire(2, false, 0));
        assert!(rl.try_acquire(3, false, 0));
        // Table full of active users: a new user is refused rather than growing memory.
        assert!(!rl.try_acquire(4, false, 10));
        // Once the others are idle, the new user gets in.
        assert!(rl.try_acquire(4, false, 40_000));
        assert!(rl.users_tracked() <= 3);
    }
}
