//! Admission control, sans IO: a shard admits a prompt only while its outstanding prompts (queued or in flight) are
//! below a limit that tracks what the cluster finishes inside the deadline.
//!
//! The limit moves on the age of each batch's oldest prompt when its response arrives (additive increase,
//! multiplicative decrease):
//! - younger than the target (a share of the deadline) while the limit was in use: grow by one prompt per limit's
//!   worth of completions, up to four when they come back in a fraction of the target;
//! - older than the target: shrink by a fifth or, for a larger overshoot, in proportion (at most by half), at most
//!   once per that age, so one slow batch does not collapse it;
//! - until latency first reaches half the target, grow by one per completed prompt instead (slow start, doubling
//!   per round trip), so a long deadline does not take minutes of additive steps to reach the server's capacity.
//!
//! Under overload the limit settles where completions take about the target, which keeps the LLM busy and the
//! latency flat; the excess goes to the local rewriter at once instead of queueing.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Admission {
    limit: f64,
    limit_min: f64,
    limit_max: f64,
    target: Duration,
    last_decrease: Option<Instant>,
    outstanding: usize,
    /// Whether latency has never overshot the target yet.
    slow_start: bool,
}

/// The limit shrinks to at most this share of itself when latency overshoots the target...
const DECREASE_FACTOR: f64 = 0.8;

/// ...and to no less than this share, however far it overshoots.
const DECREASE_FACTOR_MIN: f64 = 0.5;

/// The most prompts the limit grows by per limit's worth of completions, when they come back far below the target.
const ADDITIVE_STEPS_MAX: f64 = 4.0;

impl Admission {
    pub(crate) fn new(
        limit_initial: usize,
        limit_min: usize,
        limit_max: usize,
        target: Duration,
    ) -> Self {
        let limit_max = limit_max.max(1) as f64;
        let limit_min = (limit_min.max(1) as f64).min(limit_max);
        Admission {
            limit: (limit_initial.max(1) as f64).clamp(limit_min, limit_max),
            limit_min,
            limit_max,
            target,
            last_decrease: None,
            outstanding: 0,
            slow_start: true,
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit as usize
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Admits one prompt if the limit allows.
    pub(crate) fn try_admit(&mut self) -> bool {
        if self.outstanding < self.limit() {
            self.outstanding += 1;
            true
        } else {
            false
        }
    }

    /// Prompts that completed, failed or were dropped no longer count.
    pub(crate) fn release(&mut self, prompts: usize) {
        assert!(
            prompts <= self.outstanding,
            "released more prompts than were admitted"
        );
        self.outstanding -= prompts;
    }

    /// A batch's response arrived at `now`; its oldest prompt was admitted at `oldest_admitted`. `outstanding_at_send`
    /// is how many prompts were outstanding when it was sent, which says whether the limit was the constraint.
    pub(crate) fn on_batch_done(
        &mut self,
        now: Instant,
        oldest_admitted: Instant,
        prompts: usize,
        outstanding_at_send: usize,
    ) {
        let age = now.saturating_duration_since(oldest_admitted);
        if age > self.target {
            self.decrease(now, age);
            return;
        }
        if age > self.target / 2 {
            // Half the target used: close enough to the knee that doubling would overshoot it.
            self.slow_start = false;
        }
        if outstanding_at_send as f64 >= self.limit * 0.5 {
            // Far below the target the additive step is larger (up to four prompts per limit's worth), so a long
            // deadline is reached in seconds; near it the step is one.
            let headroom = (self.target.as_secs_f64() / age.as_secs_f64().max(1e-6))
                .clamp(1.0, ADDITIVE_STEPS_MAX);
            let step = if self.slow_start {
                prompts as f64
            } else {
                prompts as f64 / self.limit * headroom
            };
            self.limit = (self.limit + step).min(self.limit_max);
        }
    }

    /// A prompt's deadline passed before its completion: the same signal as a late batch.
    pub(crate) fn on_deadline_missed(&mut self, now: Instant, age: Duration) {
        self.decrease(now, age);
    }

    fn decrease(&mut self, now: Instant, age: Duration) {
        if self
            .last_decrease
            .is_some_and(|last| now.saturating_duration_since(last) < age)
        {
            return;
        }
        // The further past the target, the deeper the cut: a limit twice too high halves at once.
        let factor = (self.target.as_secs_f64() / age.as_secs_f64().max(f64::MIN_POSITIVE))
            .clamp(DECREASE_FACTOR_MIN, DECREASE_FACTOR);
        self.limit = (self.limit * factor).max(self.limit_min);
        self.last_decrease = Some(now);
        self.slow_start = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit() {
        let mut admission = Admission::new(2, 1, 100, Duration::from_millis(100));
        assert!(admission.try_admit());
        assert!(admission.try_admit());
        assert!(!admission.try_admit());
        admission.release(1);
        assert!(admission.try_admit());
        assert_eq!(admission.outstanding(), 2);
    }

    #[test]
    fn slow_start_doubles_until_the_first_overshoot() {
        let start = Instant::now();
        let mut admission = Admission::new(10, 1, 1_000, Duration::from_millis(100));
        // One round trip's worth of fast completions doubles the limit.
        admission.on_batch_done(start, start, 10, 10);
        assert_eq!(admission.limit(), 20);
        admission.on_batch_done(start, start, 20, 20);
        assert_eq!(admission.limit(), 40);
        // Half the target used: slow start ends, growth turns additive.
        admission.on_batch_done(start + Duration::from_millis(60), start, 40, 40);
        assert_eq!(admission.limit(), 41);
        // An overshoot by half cuts the limit to two thirds.
        admission.on_batch_done(start + Duration::from_millis(150), start, 41, 41);
        assert_eq!(admission.limit(), 27);
        let later = start + Duration::from_secs(1);
        admission.on_batch_done(later, later - Duration::from_millis(90), 27, 27);
        assert_eq!(admission.limit(), 28);
        // Far below the target the additive step is up to four.
        admission.on_batch_done(later, later, 28, 28);
        assert_eq!(admission.limit(), 32);
        // A far larger overshoot halves it, no more.
        admission.on_deadline_missed(later + Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(admission.limit(), 16);
    }

    #[test]
    fn grows_while_fast_and_used_shrinks_when_slow() {
        let start = Instant::now();
        let target = Duration::from_millis(100);
        let mut admission = Admission::new(10, 1, 40, target);
        // Leave slow start with one overshoot, then grow additively.
        admission.on_deadline_missed(start, Duration::from_millis(120));
        assert_eq!(admission.limit(), 8);
        let mut now = start + Duration::from_millis(200);
        for _ in 0..10 {
            now += Duration::from_millis(10);
            admission.on_batch_done(now, now - Duration::from_millis(50), 10, 10);
        }
        // At half the target the step is two prompts per limit's worth of completions.
        assert!(
            (19..=21).contains(&admission.limit()),
            "limit {}",
            admission.limit()
        );
        // Fast batches while mostly idle say nothing about capacity.
        let before = admission.limit();
        admission.on_batch_done(now, now, 1, 1);
        assert_eq!(admission.limit(), before);
        // A slow batch shrinks it; a second one within the same age does not shrink it again.
        now += Duration::from_millis(10);
        admission.on_batch_done(now, now - Duration::from_millis(150), 10, 20);
        let shrunk = admission.limit();
        assert!(shrunk < before, "{shrunk} < {before}");
        admission.on_batch_done(
            now + Duration::from_millis(20),
            now - Duration::from_millis(150),
            10,
            20,
        );
        assert_eq!(admission.limit(), shrunk);
        admission.on_deadline_missed(now + Duration::from_millis(200), Duration::from_millis(150));
        assert!(admission.limit() < shrunk);
        // Never below one, never above the maximum.
        for step in 0..100 {
            admission.on_deadline_missed(
                now + Duration::from_secs(1 + step),
                Duration::from_millis(150),
            );
        }
        assert_eq!(admission.limit(), 1);
        for _ in 0..10_000 {
            admission.on_batch_done(now, now, 40, 40);
        }
        assert_eq!(admission.limit(), 40);
    }
}
