//! The retry policy: how long a failed job waits before its next attempt.

use std::time::Duration;

use jobhost_core::config::RetryConfig;

/// Exponential backoff with a cap and "equal jitter": the wait for attempt `n` is
/// `min(initial * 2^(n-1), max)`, of which the fraction `jitter` is randomised downwards.
/// The cap is never exceeded and, with `jitter = 0`, the wait is exact (tests rely on that).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: f64,
}

impl RetryPolicy {
    pub fn from_config(config: &RetryConfig) -> RetryPolicy {
        RetryPolicy { initial: config.backoff_initial.0, max: config.backoff_max.0, jitter: config.backoff_jitter }
    }

    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        let base = self.initial.saturating_mul(1u32 << doublings.min(31)).min(self.max);
        let random_fraction = (uuid::Uuid::new_v4().as_u128() as u64 >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(1.0 - self.jitter * random_fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy { initial: Duration::from_secs(1), max: Duration::from_secs(5), jitter: 0.0 };
        let waits: Vec<u64> = (1..=5).map(|n| policy.backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        assert_eq!(policy.backoff(1000), Duration::from_secs(5));
    }

    #[test]
    fn jitter_only_shortens_the_wait() {
        let policy = RetryPolicy { initial: Duration::from_secs(8), max: Duration::from_secs(60), jitter: 0.5 };
        for _ in 0..200 {
            let wait = policy.backoff(1);
            assert!(wait <= Duration::from_secs(8) && wait >= Duration::from_secs(4), "{wait:?}");
        }
    }

    #[test]
    fn zero_backoff_means_immediate() {
        let policy = RetryPolicy { initial: Duration::ZERO, max: Duration::ZERO, jitter: 0.3 };
        assert_eq!(policy.backoff(3), Duration::ZERO);
    }
}
