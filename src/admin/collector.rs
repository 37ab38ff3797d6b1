//! Gauges and counters read at scrape time from where the state already lives: open tunnels
//! and connections, pool members' health, ejections and failovers, the build.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::server::Admission;
use crate::session::Core;

pub(super) struct Live {
    pub core: Arc<Core>,
    pub admission: Arc<Admission>,
    pub version: &'static str,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, v: i64| {
            let g = ConstGauge::new(v);
            let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(m)
        };
        gauge(
            &mut encoder,
            "tunnels_open",
            "Tunnels (CONNECT and upgraded requests) open now",
            i64::try_from(self.core.open_tunnels()).unwrap_or(i64::MAX),
        )?;
        gauge(
            &mut encoder,
            "connections_open",
            "Client connections open now",
            i64::try_from(self.admission.open_connections()).unwrap_or(i64::MAX),
        )?;
        let counter = |encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64| {
            let c = ConstCounter::new(v);
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)
        };
        counter(
            &mut encoder,
            "auth_failures",
            "Wrong proxy credentials charged (answered or not: a reset stream counts too)",
            self.core.auth().failures(),
        )?;
        counter(
            &mut encoder,
            "auth_verifications",
            "Password hashes computed (cache misses; each costs a verifier's CPU)",
            self.core.auth().verifications(),
        )?;
        {
            let g = ConstGauge::new(1i64);
            let mut m = encoder.encode_descriptor(
                "build_info",
                "The running build (always 1)",
                None,
                g.metric_type(),
            )?;
            g.encode(m.encode_family(&[("version", self.version)])?)?;
        }
        let pools = self.core.router().pools();
        {
            let mut m = encoder.encode_descriptor(
                "pool_member_up",
                "1 when the pool member takes traffic, 0 while it is ejected",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for p in &pools {
                for s in p.states() {
                    let labels = [("pool", p.name.as_str()), ("member", s.name.as_str())];
                    ConstGauge::new(i64::from(s.up)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "pool_ejections",
                "Times a pool member was ejected after consecutive failures",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for p in &pools {
                for s in p.states() {
                    let labels = [("pool", p.name.as_str()), ("member", s.name.as_str())];
                    ConstCounter::new(s.ejections).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "pool_failovers",
                "Requests that moved on to the next member after one failed",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for p in &pools {
                let labels = [("pool", p.name.as_str())];
                ConstCounter::new(p.failovers()).encode(m.encode_family(&labels)?)?;
            }
        }
        if let Some(pac) = &self.core.router().pac {
            use std::sync::atomic::Ordering::Relaxed;
            gauge(
                &mut encoder,
                "pac_loaded",
                "1 while a PAC script is in force, 0 while it has not loaded",
                i64::from(pac.loaded()),
            )?;
            let counter = |encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64| {
                let c = ConstCounter::new(v);
                let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
                c.encode(m)
            };
            let st = &pac.stats;
            counter(
                &mut encoder,
                "pac_evaluations",
                "Calls into the PAC script (answers not in the cache)",
                st.evaluations.load(Relaxed),
            )?;
            counter(
                &mut encoder,
                "pac_evaluation_failures",
                "Calls into the PAC script that threw, timed out or answered nothing usable",
                st.evaluations
                    .load(Relaxed)
                    .saturating_sub(st.answered.load(Relaxed)),
            )?;
            counter(
                &mut encoder,
                "pac_cache_hits",
                "PAC answers served from the cache",
                st.cache_hits.load(Relaxed),
            )?;
            counter(
                &mut encoder,
                "pac_load_failures",
                "PAC fetches or loads that failed (the script in force, if any, stayed)",
                st.load_failures.load(Relaxed),
            )?;
        }
        Ok(())
    }
}
