//! A circuit breaker for the broker: after `THRESHOLD` failed batches in a
//! row it opens, refusing produce calls without touching the network, for a
//! cool-down that doubles on each failed probe (capped). So a dead broker
//! costs a bounded number of attempts per second, never a hot loop.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const THRESHOLD: u32 = 3;
const FIRST_COOL_DOWN: Duration = Duration::from_millis(500);
const MAX_COOL_DOWN: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct State {
    failures: u32,
    cool_down: Duration,
    open_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Breaker(Mutex<State>);

impl Default for Breaker {
    fn default() -> Self {
        Breaker(Mutex::new(State { failures: 0, cool_down: FIRST_COOL_DOWN, open_until: None }))
    }
}

impl Breaker {
    /// `Err(wait)` while open; `Ok` when a call may go out (closed, or the
    /// cool-down is over and this is the probe).
    pub fn allow(&self) -> Result<(), Duration> {
        let mut state = self.lock();
        match state.open_until {
            Some(until) if Instant::now() < until => Err(until - Instant::now()),
            Some(_) => {
                // Half-open: let this probe through, hold the rest until it reports.
                let probe_window = state.cool_down;
                state.open_until = Some(Instant::now() + probe_window);
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub fn success(&self) {
        let mut state = self.lock();
        *state = State { failures: 0, cool_down: FIRST_COOL_DOWN, open_until: None };
    }

    pub fn failure(&self) {
        let mut state = self.lock();
        state.failures += 1;
        if state.failures >= THRESHOLD {
            if state.open_until.is_some() {
                state.cool_down = (state.cool_down * 2).min(MAX_COOL_DOWN);
            }
            state.open_until = Some(Instant::now() + state.cool_down);
        }
    }

    /// `closed`, or how long it stays open.
    pub fn describe(&self) -> String {
        match self.lock().open_until {
            Some(until) if Instant::now() < until => format!("open for {:?}", until - Instant::now()),
            Some(_) => "half-open".to_string(),
            None => "closed".to_string(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_repeated_failures_and_closes_on_success() {
        let breaker = Breaker::default();
        for _ in 0..THRESHOLD {
            assert!(breaker.allow().is_ok());
            breaker.failure();
        }
        assert!(breaker.allow().is_err(), "open after {THRESHOLD} failures");
        std::thread::sleep(FIRST_COOL_DOWN + Duration::from_millis(20));
        assert!(breaker.allow().is_ok(), "one probe after the cool-down");
        assert!(breaker.allow().is_err(), "only one probe");
        breaker.failure();
        assert!(breaker.allow().is_err());
        breaker.success();
        assert!(breaker.allow().is_ok());
    }
}
