//! Admission control, sans IO: a shard admits a prompt only while its outstanding prompts (queued or in flight) are
//! below a limit that tracks what the cluster finishes inside the deadline.
//!
//! The limit moves by additive increase, multiplicative decrease on the age of each batch's oldest prompt when its
//! response arrives: younger than the target (a share of the deadline) and the limit was in use → grow by about one
//! prompt per limit's worth of completions; older than the target → shrink by a fifth, at most once per that age,
//! so one slow batch does not collapse it. Under overload the limit settles where completions take about the target,
//! which keeps the LLM busy and the latency flat; the excess goes to the local rewriter at once instead of queueing.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Admission {
    limit: f64,
    limit_min: f64,
    limit_max: f64,
    target: Duration,
    last_decrease: Option<Instant>,
    outstanding: usize,
}

/// The limit shrinks to this share of itself when latency overshoots.
const DECREASE_FACTOR: f64 = 0.8;

impl Admission {
    pub(crate) fn new(limit_initial: usize, limit_max: usize, target: Duration) -> Self {
        let limit_max = limit_max.max(1) as f64;
        Admission {
            limit: (limit_initial.max(1) as f64).min(limit_max),
            limit_min: 1.0,
            limit_max,
            target,
            last_decrease: None,
            outstanding: 0,
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
        } else if outstanding_at_send as f64 >= self.limit * 0.5 {
            self.limit = (self.limit + prompts as f64 / self.limit).min(self.limit_max);
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
        self.limit = (self.limit * DECREASE_FACTOR).max(self.limit_min);
        self.last_decrease = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit() {
        let mut admission = Admission::new(2, 100, Duration::from_millis(100));
        assert!(admission.try_admit());
        assert!(admission.try_admit());
        assert!(!admission.try_admit());
        admission.release(1);
        assert!(admission.try_admit());
        assert_eq!(admission.outstanding(), 2);
    }

    #[test]
    fn grows_while_fast_and_used_shrinks_when_slow() {
        let start = Instant::now();
        let target = Duration::from_millis(100);
        let mut admission = Admission::new(10, 40, target);
        // Fast batches while the limit is in use: about +1 per limit's worth of prompts.
        let mut now = start;
        for _ in 0..10 {
            now += Duration::from_millis(10);
            admission.on_batch_done(now, now - Duration::from_millis(50), 10, 10);
        }
        assert!(admission.limit() >= 17, "limit {}", admission.limit());
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
