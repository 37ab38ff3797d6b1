//! Active health checks: one task per pool probes every member each interval.
//!
//! A probe is a real dial through the member (CONNECT or SOCKS connect to the health target),
//! or a TCP connect to its first hop when no target is set. Its outcome feeds the same passive
//! state as client traffic: success brings a member back at once, hop faults count toward
//! ejection. The task holds only a `Weak` to its pool, so a pool dropped by a reload takes its
//! checker with it.

use std::sync::{Arc, Weak};

use super::{Outcome, Pool};
use crate::failure::{Failure, verdict};
use crate::upstream::Dialer;

/// Spawns the checker for `pool` (no-op without a health section).
pub fn spawn(pool: &Arc<Pool>, dialer: Dialer) {
    let Some(check) = pool.settings.health.clone() else {
        return;
    };
    let weak: Weak<Pool> = Arc::downgrade(pool);
    // A pool that took over its predecessor's health state (a reload) has nothing new to learn
    // at once: probing then would let a reload storm become a probe storm.
    let first = if pool.inherited() {
        tokio::time::Instant::now() + check.interval
    } else {
        tokio::time::Instant::now()
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(first, check.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(pool) = weak.upgrade() else { return };
            // The probe target is the operator's choice, not a client's: the destination
            // policy (internal ranges off loopback) does not apply to it.
            let dialer = dialer
                .unchecked()
                .with_timeout(check.interval.min(dialer.connect_timeout()));
            for (i, member) in pool.members.iter().enumerate() {
                let res = match &check.target {
                    Some(target) => dialer
                        .tunnel(&member.route, target)
                        .await
                        .map(drop)
                        .map_err(|e| (e, Some(target))),
                    None => dialer
                        .reach_first_hop(&member.route)
                        .await
                        .map_err(|e| (e, None)),
                };
                let outcome = match &res {
                    Ok(()) => Outcome::Success,
                    Err((e, _)) if !verdict(Failure::Connect(e.kind())).blame_hop => {
                        Outcome::TargetFault
                    }
                    Err(_) => Outcome::HopFault,
                };
                if let Err((e, _)) = &res {
                    tracing::debug!(pool = %pool.name, member = %member.name, error = %e, "health probe failed");
                    pool.note_error(i, e);
                }
                let was_up = pool.is_up(i);
                pool.report(i, outcome);
                if !was_up && pool.is_up(i) {
                    tracing::info!(pool = %pool.name, member = %member.name, "member healthy again");
                }
            }
        }
    });
}
