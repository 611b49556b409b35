//! Wall-clock time, injected so that expiry, escalation and grant lifetimes can be
//! driven by tests without real sleeps.
//!
//! Owns [`Timestamp`] (Unix milliseconds, serialized as RFC 3339) and the [`Clock`]
//! trait. Network timeouts (hyper, upstream connects) use tokio's clock directly:
//! they guard sockets, not business deadlines.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn from_system(t: SystemTime) -> Self {
        Timestamp(t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
    }

    pub fn to_system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    pub fn plus(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(d.as_millis() as u64))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// RFC 3339 with millisecond precision, e.g. `2026-11-23T20:36:33.120Z`.
    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_millis(self.to_system()).to_string()
    }

    /// RFC 3339 with second precision, as in the policy input's `now`.
    pub fn rfc3339_seconds(self) -> String {
        humantime::format_rfc3339_seconds(self.to_system()).to_string()
    }

    /// Parses an RFC 3339 time with any offset (`2026-11-24T01:00:00+01:00`, `…Z`,
    /// fractional seconds), converted to UTC; the forms this crate has always read
    /// (no offset, a space for `T`: taken as UTC); or a plain date `2026-11-24`
    /// (midnight UTC). Times before 1970 are refused.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let millis = if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
            d.timestamp_millis()
        } else if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
            d.and_time(chrono::NaiveTime::MIN).and_utc().timestamp_millis()
        } else {
            let st = humantime::parse_rfc3339_weak(t).map_err(|e| {
                format!(
                    "{s:?} is not an RFC 3339 time such as \"2026-11-24T01:00:00Z\" or \
                     \"2026-11-24T02:00:00+01:00\", or a date such as \"2026-11-24\": {e}"
                )
            })?;
            return Ok(Timestamp::from_system(st));
        };
        u64::try_from(millis).map(Timestamp).map_err(|_| format!("{s:?} is before 1970-01-01T00:00:00Z"))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The source of business time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
    /// Resolves once `now() >= t`.
    fn sleep_until(&self, t: Timestamp) -> Sleep;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system(SystemTime::now())
    }

    fn sleep_until(&self, t: Timestamp) -> Sleep {
        Box::pin(async move {
            loop {
                let now = SystemClock.now();
                if now >= t {
                    return;
                }
                // Re-check periodically so a wall-clock step does not strand a timer.
                let wait = t.since(now).min(Duration::from_secs(30));
                tokio::time::sleep(wait).await;
            }
        })
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock {
    tx: Arc<tokio::sync::watch::Sender<Timestamp>>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        let (tx, _) = tokio::sync::watch::channel(start);
        Self { tx: Arc::new(tx) }
    }

    pub fn advance(&self, d: Duration) {
        self.tx.send_modify(|t| *t = t.plus(d));
    }

    pub fn set(&self, t: Timestamp) {
        self.tx.send_modify(|now| *now = t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.tx.borrow()
    }

    fn sleep_until(&self, t: Timestamp) -> Sleep {
        let mut rx = self.tx.subscribe();
        Box::pin(async move {
            loop {
                if *rx.borrow_and_update() >= t {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = Timestamp(1_795_466_193_120);
        let s = t.rfc3339();
        assert!(s.ends_with(".120Z"), "{s}");
        assert_eq!(Timestamp::parse(&s).unwrap(), t);
    }

    #[test]
    fn parses_any_rfc3339_offset_fractions_and_plain_dates() {
        let utc = Timestamp::parse("2026-11-24T00:00:00Z").unwrap();
        assert_eq!(utc, Timestamp(1_795_478_400_000));
        for (text, want) in [
            ("2026-11-24T01:00:00+01:00", utc),
            ("2026-11-23T19:30:00-04:30", utc),
            ("2026-11-24T00:00:00+00:00", utc),
            ("2026-11-24T00:00:00-00:00", utc),
            ("2026-11-24t00:00:00z", utc),
            ("2026-11-24", utc),
            (" 2026-11-24 ", utc),
            ("2026-11-24T01:00:00.250+01:00", utc.plus(Duration::from_millis(250))),
            ("2026-11-24T00:00:00.123456789Z", utc.plus(Duration::from_millis(123))),
            // What was accepted before stays accepted: no offset, a space for `T` (UTC).
            ("2026-11-24T00:00:00", utc),
            ("2026-11-24 00:00:00Z", utc),
            ("2026-11-24 00:00:00", utc),
        ] {
            assert_eq!(Timestamp::parse(text), Ok(want), "{text}");
        }
        for bad in ["", "yesterday", "2026-11-24T25:00:00Z", "2026-13-01", "2026-11-24T01:00:00+25:00", "1969-12-31"] {
            let e = Timestamp::parse(bad).expect_err(bad);
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_on_advance() {
        let c = ManualClock::new(Timestamp(1000));
        let s = c.sleep_until(Timestamp(5000));
        let h = tokio::spawn(s);
        tokio::task::yield_now().await;
        assert!(!h.is_finished());
        c.advance(Duration::from_secs(4));
        tokio::time::timeout(Duration::from_secs(5), h).await.unwrap().unwrap();
    }
}
