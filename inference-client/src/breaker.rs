//! A circuit breaker per endpoint, sans IO: closed while requests succeed, open after consecutive failures, probed
//! with `/health` after a cool-down, half-open for one trial request, closed again when the trial succeeds.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    /// Requests flow.
    Closed,
    /// No requests; a health probe is due once the cool-down has passed.
    Open,
    /// The endpoint answered its health probe; one trial request may go.
    HalfOpen,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    state: BreakerState,
    failures_consecutive: u32,
    failures_max: u32,
    open_min: Duration,
    opened_at: Option<Instant>,
    trial_in_flight: bool,
}

impl Breaker {
    pub(crate) fn new(failures_max: u32, open_min: Duration) -> Self {
        Breaker {
            state: BreakerState::Closed,
            failures_consecutive: 0,
            failures_max: failures_max.max(1),
            open_min,
            opened_at: None,
            trial_in_flight: false,
        }
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether the endpoint counts as up (its breaker is not open).
    pub(crate) fn is_healthy(&self) -> bool {
        self.state != BreakerState::Open
    }

    /// Whether a request may be sent now.
    pub(crate) fn admits(&self) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::HalfOpen => !self.trial_in_flight,
            BreakerState::Open => false,
        }
    }

    /// A request was sent; in half-open state it is the trial.
    pub(crate) fn on_dispatch(&mut self) {
        if self.state == BreakerState::HalfOpen {
            self.trial_in_flight = true;
        }
    }

    /// A request succeeded. Successes of requests sent before the breaker opened do not close it: only a probe does.
    pub(crate) fn on_success(&mut self) {
        match self.state {
            BreakerState::Closed | BreakerState::HalfOpen => {
                self.state = BreakerState::Closed;
                self.failures_consecutive = 0;
                self.trial_in_flight = false;
            }
            BreakerState::Open => {}
        }
    }

    /// A request failed (error, timeout, overload status).
    pub(crate) fn on_failure(&mut self, now: Instant) {
        match self.state {
            BreakerState::Closed => {
                self.failures_consecutive += 1;
                if self.failures_consecutive >= self.failures_max {
                    self.open(now);
                }
            }
            BreakerState::HalfOpen => self.open(now),
            BreakerState::Open => {}
        }
    }

    /// Whether a health probe should go now: always for a closed breaker (it catches a dead endpoint before
    /// messages do), after the cool-down for an open one, never while a trial is pending.
    pub(crate) fn wants_probe(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => self
                .opened_at
                .is_none_or(|opened| now >= opened + self.open_min),
            BreakerState::HalfOpen => false,
        }
    }

    /// A health probe answered 200.
    pub(crate) fn on_probe_ok(&mut self) {
        if self.state == BreakerState::Open {
            self.state = BreakerState::HalfOpen;
            self.trial_in_flight = false;
        }
    }

    /// A health probe failed. A refused connection is definitive: the endpoint is down whatever the requests
    /// said. A slow or unhappy answer from an endpoint in service counts as one failed request, since a busy server
    /// may answer its health check late and should not be dropped for that alone.
    pub(crate) fn on_probe_failed(&mut self, now: Instant, definitive: bool) {
        if self.state == BreakerState::Closed && !definitive {
            self.on_failure(now);
        } else {
            self.open(now);
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.trial_in_flight = false;
        self.failures_consecutive = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_probes_trials_and_closes() {
        let start = Instant::now();
        let cool_down = Duration::from_millis(1_000);
        let mut breaker = Breaker::new(3, cool_down);
        assert!(breaker.admits() && breaker.is_healthy());
        breaker.on_failure(start);
        breaker.on_failure(start);
        breaker.on_success();
        breaker.on_failure(start);
        breaker.on_failure(start);
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "failures must be consecutive"
        );
        breaker.on_failure(start);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.admits() && !breaker.is_healthy());
        // A stale success does not close it.
        breaker.on_success();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.wants_probe(start + Duration::from_millis(999)));
        assert!(breaker.wants_probe(start + cool_down));
        breaker.on_probe_ok();
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.admits());
        breaker.on_dispatch();
        assert!(!breaker.admits(), "one trial at a time");
        assert!(!breaker.wants_probe(start + cool_down));
        // The trial fails: open again, with a fresh cool-down.
        let later = start + Duration::from_millis(1_500);
        breaker.on_failure(later);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.wants_probe(start + cool_down + Duration::from_millis(100)));
        assert!(breaker.wants_probe(later + cool_down));
        breaker.on_probe_ok();
        breaker.on_dispatch();
        breaker.on_success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.admits());
        // A slow probe counts as one failure; a refused one opens a closed breaker at once.
        breaker.on_probe_failed(later, false);
        breaker.on_probe_failed(later, false);
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.on_probe_failed(later, false);
        assert_eq!(breaker.state(), BreakerState::Open);
        breaker.on_probe_ok();
        breaker.on_dispatch();
        breaker.on_success();
        breaker.on_probe_failed(later, true);
        assert_eq!(breaker.state(), BreakerState::Open);
    }
}
