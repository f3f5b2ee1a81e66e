//! When each iteration is due: a constant arrival rate, or a linear ramp
//! from one rate to another over the run (k6's ramping-arrival-rate).

use std::time::Duration;

/// The arrival schedule of one run.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Iterations per second at the start.
    pub from: f64,
    /// Iterations per second at the end (equal to `from` for a constant rate).
    pub to: f64,
    pub duration: Duration,
}

impl Schedule {
    /// When iteration `i` (from 0) is due, after the start; `None` once past
    /// the end. The count due by time t is `from·t + (to-from)·t²/(2T)`;
    /// this inverts it.
    pub fn due(&self, i: u64) -> Option<Duration> {
        let total = self.duration.as_secs_f64();
        let n = i as f64;
        let slope = (self.to - self.from) / (2.0 * total);
        let t = if slope.abs() < 1e-12 {
            n / self.from
        } else {
            (-self.from + (self.from * self.from + 4.0 * slope * n).sqrt()) / (2.0 * slope)
        };
        (t.is_finite() && t < total).then(|| Duration::from_secs_f64(t))
    }

    /// How many iterations the schedule holds.
    pub fn iterations(&self) -> u64 {
        ((self.from + self.to) / 2.0 * self.duration.as_secs_f64()).floor() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_rate_spaces_iterations_evenly() {
        let s = Schedule { from: 100.0, to: 100.0, duration: Duration::from_secs(2) };
        assert_eq!(s.due(0), Some(Duration::ZERO));
        assert_eq!(s.due(50), Some(Duration::from_millis(500)));
        assert_eq!(s.due(200), None);
        assert_eq!((0..).take_while(|i| s.due(*i).is_some()).count() as u64, s.iterations());
    }

    #[test]
    fn a_ramp_speeds_up_and_holds_the_area_under_it() {
        let s = Schedule { from: 0.0, to: 200.0, duration: Duration::from_secs(10) };
        // 1,000 iterations in all: half the rate times the time.
        let count = (0..).take_while(|i| s.due(*i).is_some()).count() as u64;
        assert!(count.abs_diff(s.iterations()) <= 1, "{count}");
        // The first half of the time holds a quarter of them.
        let half = s.due(250).unwrap().as_secs_f64();
        assert!((half - 5.0).abs() < 0.01, "{half}");
    }
}
