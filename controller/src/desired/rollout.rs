//! PURE: when a new config may reach HAProxy, and the times that is
//! measured with.

use std::time::Duration;

use jiff::Timestamp;

/// Whether the HAProxy Deployment is rolled in this reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// The Deployment already runs this config.
    UpToDate,
    /// Patch the annotation now.
    Now,
    /// The last rollout was too recent; try again after this long.
    Wait(Duration),
}

/// At most one rollout per `min_interval`; a change inside it waits for its end.
pub fn decide(
    deployed: Option<&str>,
    wanted: &str,
    last_rollout: Option<Timestamp>,
    now: Timestamp,
    min_interval: Duration,
) -> Rollout {
    if deployed == Some(wanted) {
        return Rollout::UpToDate;
    }
    let Some(last) = last_rollout else {
        return Rollout::Now;
    };
    // A clock that went backwards counts as "just rolled", never as "long ago".
    let elapsed = now.duration_since(last).unsigned_abs();
    let elapsed = if now < last { Duration::ZERO } else { elapsed };
    match min_interval.checked_sub(elapsed) {
        Some(left) if !left.is_zero() => Rollout::Wait(left),
        _ => Rollout::Now,
    }
}

/// What becomes of the HAProxy Deployment in this reconcile: a reload
/// strategy's decision ([`crate::strategy`]), and what the status says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeploymentState {
    /// There is no such Deployment.
    Missing,
    /// `RollingUpdate`: rolled now for the wanted config (its pod-template
    /// annotation patched), recorded at `at`.
    Rolled { at: Timestamp },
    /// `InPlace`: the wanted config published now for the agents, recorded
    /// at `at`.
    Published { at: Timestamp },
    /// It already runs, or its agents were already given, the wanted config.
    UpToDate,
    /// The wanted config waits this long for `rollout.minInterval`.
    Pending { wait: Duration },
}

impl DeploymentState {
    /// When the wanted config was rolled out or published, if it was now.
    pub fn changed_at(&self) -> Option<Timestamp> {
        match self {
            DeploymentState::Rolled { at } | DeploymentState::Published { at } => Some(*at),
            DeploymentState::Missing
            | DeploymentState::UpToDate
            | DeploymentState::Pending { .. } => None,
        }
    }
}

/// `t` without its fraction of a second. The API server stores times in
/// whole seconds; a time this process keeps must compare equal to the one
/// it reads back, or every reconcile would see a status to write.
pub fn whole_second_before(t: Timestamp) -> Timestamp {
    let second = t.as_second() - i64::from(t.subsec_nanosecond() < 0);
    Timestamp::from_second(second).unwrap_or(t)
}

/// The first whole second at or after `t`.
pub fn whole_second_after(t: Timestamp) -> Timestamp {
    let floor = whole_second_before(t);
    if floor == t {
        t
    } else {
        Timestamp::from_second(floor.as_second() + 1).unwrap_or(t)
    }
}

/// The latest rollout: the later of the one this process remembers (exact)
/// and the one the status records (rounded up to the second). When the
/// status holds this process's own rollout, the exact time counts, or a
/// short `rollout.minInterval` would wait for the next whole second.
pub fn last_rollout(
    remembered: Option<Timestamp>,
    recorded: Option<Timestamp>,
) -> Option<Timestamp> {
    match (remembered, recorded) {
        (Some(exact), Some(stored)) if whole_second_after(exact) >= stored => Some(exact),
        (remembered, recorded) => remembered.max(recorded),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    const FIVE: Duration = Duration::from_secs(5);

    #[test]
    fn same_hash_never_rolls() {
        assert_eq!(
            decide(Some("h"), "h", None, ts(100), FIVE),
            Rollout::UpToDate
        );
        assert_eq!(
            decide(Some("h"), "h", Some(ts(99)), ts(100), FIVE),
            Rollout::UpToDate
        );
    }

    #[test]
    fn first_rollout_is_immediate() {
        assert_eq!(decide(None, "h", None, ts(100), FIVE), Rollout::Now);
        assert_eq!(decide(Some("old"), "h", None, ts(100), FIVE), Rollout::Now);
    }

    #[test]
    fn a_change_inside_the_interval_waits_for_its_end() {
        assert_eq!(
            decide(Some("old"), "h", Some(ts(98)), ts(100), FIVE),
            Rollout::Wait(Duration::from_secs(3))
        );
        assert_eq!(
            decide(Some("old"), "h", Some(ts(95)), ts(100), FIVE),
            Rollout::Now
        );
        assert_eq!(
            decide(Some("old"), "h", Some(ts(10)), ts(100), FIVE),
            Rollout::Now
        );
    }

    #[test]
    fn a_clock_behind_the_last_rollout_waits_the_full_interval() {
        assert_eq!(
            decide(Some("old"), "h", Some(ts(200)), ts(100), FIVE),
            Rollout::Wait(FIVE)
        );
    }

    #[test]
    fn a_burst_of_changes_rolls_at_most_once_per_interval() {
        // One change every 100 ms for 10 s, each with a new hash.
        let mut last = None;
        let mut deployed = String::from("h0");
        let mut rollouts = 0;
        for tick in 0..100i64 {
            let now = Timestamp::from_millisecond(1_000_000 + tick * 100).unwrap();
            let wanted = format!("h{}", tick + 1);
            if decide(Some(&deployed), &wanted, last, now, FIVE) == Rollout::Now {
                rollouts += 1;
                last = Some(now);
                deployed = wanted;
            }
        }
        assert_eq!(rollouts, 2, "10 s of changes with a 5 s interval");
    }

    #[test]
    fn the_exact_time_of_an_own_rollout_counts() {
        let exact = Timestamp::from_second(100)
            .and_then(|t| t.checked_add(jiff::SignedDuration::from_millis(200)))
            .expect("time");
        let stored = Timestamp::from_second(101).expect("time");
        // The status holds this rollout, rounded up.
        assert_eq!(last_rollout(Some(exact), Some(stored)), Some(exact));
        // A newer rollout of another process (a new leader) counts.
        let newer = Timestamp::from_second(105).expect("time");
        assert_eq!(last_rollout(Some(exact), Some(newer)), Some(newer));
        assert_eq!(last_rollout(None, Some(stored)), Some(stored));
        assert_eq!(last_rollout(Some(exact), None), Some(exact));
    }

    #[test]
    fn times_are_kept_at_the_precision_the_api_stores() {
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let later = t + jiff::SignedDuration::from_millis(250);
        assert_eq!(whole_second_before(later), t);
        assert_eq!(
            whole_second_after(later),
            Timestamp::from_second(1_700_000_001).unwrap()
        );
        assert_eq!(whole_second_after(t), t);
        // Negative seconds (before 1970) floor the same way.
        let early = Timestamp::from_second(-5).unwrap() - jiff::SignedDuration::from_millis(1);
        assert_eq!(whole_second_before(early).as_second(), -6);
    }
}
