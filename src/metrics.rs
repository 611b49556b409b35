//! Prometheus metrics. Names are part of the interface (INTERFACE.md §4).
//!
//! Counters and histograms are updated on the request path; gauges that describe
//! shared state (pending approvals per route) are read from the store at scrape time,
//! so every replica reports the same truth.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    pub decisions: Family<Labels, Counter>,
    pub shadow_decisions: Family<Labels, Counter>,
    pub pending: Family<Labels, Gauge>,
    pub held: Gauge,
    pub upstream_latency: Family<Labels, Histogram>,
    pub upstream_errors: Family<Labels, Counter>,
    pub approval_latency: Family<Labels, Histogram>,
    pub approvals_ended: Family<Labels, Counter>,
    pub escalations: Counter,
    pub notifier_errors: Family<Labels, Counter>,
    pub audit_failures: Counter,
    pub audit_records: Gauge,
    pub audit_healthy: Gauge,
    pub store_healthy: Gauge,
    pub audit_batch_seconds: Histogram,
    pub audit_checkpoint_age: Gauge,
    pub refusals: Family<Labels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let decisions = Family::<Labels, Counter>::default();
        r.register("approvalplane_decisions", "Policy decisions by upstream and decision", decisions.clone());
        let shadow_decisions = Family::<Labels, Counter>::default();
        r.register(
            "approvalplane_shadow_decisions",
            "Decisions softened by shadow mode, by what the rules asked for",
            shadow_decisions.clone(),
        );
        let pending = Family::<Labels, Gauge>::default();
        r.register("approvalplane_pending_approvals", "Pending approvals by route", pending.clone());
        let held = Gauge::default();
        r.register("approvalplane_held_requests", "Requests held open on this replica", held.clone());
        let upstream_latency =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
        r.register(
            "approvalplane_upstream_latency_seconds",
            "Time to the upstream's response headers",
            upstream_latency.clone(),
        );
        let upstream_errors = Family::<Labels, Counter>::default();
        r.register("approvalplane_upstream_errors", "Upstream failures by kind", upstream_errors.clone());
        let approval_latency =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 16)));
        r.register(
            "approvalplane_approval_latency_seconds",
            "Time from request to a person's decision",
            approval_latency.clone(),
        );
        let approvals_ended = Family::<Labels, Counter>::default();
        r.register(
            "approvalplane_approvals_ended",
            "Approvals ended without a person, by status",
            approvals_ended.clone(),
        );
        let escalations = Counter::default();
        r.register("approvalplane_escalations", "Approvals escalated", escalations.clone());
        let notifier_errors = Family::<Labels, Counter>::default();
        r.register("approvalplane_notifier_errors", "Failed notifications by notifier", notifier_errors.clone());
        let audit_failures = Counter::default();
        r.register("approvalplane_audit_write_failures", "Audit writes that failed", audit_failures.clone());
        let audit_records = Gauge::default();
        r.register("approvalplane_audit_records", "Records in this replica's chain", audit_records.clone());
        let audit_healthy = Gauge::default();
        r.register("approvalplane_audit_healthy", "1 when the last audit write succeeded", audit_healthy.clone());
        let store_healthy = Gauge::default();
        r.register(
            "approvalplane_store_healthy",
            "1 when the approval store answered the last scrape's ping",
            store_healthy.clone(),
        );
        let audit_batch_seconds = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        r.register(
            "approvalplane_audit_batch_seconds",
            "Audit group-commit batch write time",
            audit_batch_seconds.clone(),
        );
        let audit_checkpoint_age = Gauge::default();
        r.register(
            "approvalplane_audit_checkpoint_age_seconds",
            "Seconds since this replica's last audit checkpoint",
            audit_checkpoint_age.clone(),
        );
        let refusals = Family::<Labels, Counter>::default();
        r.register("approvalplane_refusals", "Requests refused, by error type", refusals.clone());
        Metrics {
            registry: r,
            decisions,
            shadow_decisions,
            pending,
            held,
            upstream_latency,
            upstream_errors,
            approval_latency,
            approvals_ended,
            escalations,
            notifier_errors,
            audit_failures,
            audit_records,
            audit_healthy,
            store_healthy,
            audit_batch_seconds,
            audit_checkpoint_age,
            refusals,
        }
    }

    pub fn decision(&self, upstream: &str, decision: &str) {
        self.decisions
            .get_or_create(&vec![("upstream", upstream.to_string()), ("decision", decision.to_string())])
            .inc();
    }

    pub fn refusal(&self, kind: &'static str) {
        self.refusals.get_or_create(&vec![("type", kind.to_string())]).inc();
    }

    /// The OpenMetrics 1.0 text exposition (`application/openmetrics-text`).
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }

    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`): what
    /// `/metrics` serves unless the scraper asks for OpenMetrics.
    pub fn render_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.render())
    }
}

/// Rewrites the OpenMetrics text of this registry as Prometheus text 0.0.4. The
/// sample lines are the same in both; the differences are in the metadata: a
/// counter family is named after its `_total` samples, `unknown` is `untyped`, and
/// there is no `# UNIT` line and no `# EOF`.
fn openmetrics_to_prometheus(om: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        om.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(if prefix == "# TYPE " && tail == "unknown" { "untyped" } else { tail });
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counter_families_after_their_samples() {
        let m = Metrics::new();
        m.decision("stripe", "allow");
        m.held.set(2);
        m.upstream_latency.get_or_create(&vec![("upstream", "stripe".to_string())]).observe(0.02);
        let om = m.render();
        assert!(om.ends_with("# EOF\n"), "{om}");
        let text = m.render_prometheus();
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        assert!(text.contains("# TYPE approvalplane_decisions_total counter\n"), "{text}");
        assert!(text.contains("# HELP approvalplane_decisions_total "), "{text}");
        assert!(text.contains("approvalplane_decisions_total{upstream=\"stripe\",decision=\"allow\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE approvalplane_held_requests gauge\napprovalplane_held_requests 2\n"), "{text}");
        assert!(text.contains("# TYPE approvalplane_upstream_latency_seconds histogram\n"), "{text}");
        assert!(text.contains("approvalplane_upstream_latency_seconds_count{upstream=\"stripe\"} 1\n"), "{text}");
        // Every sample line of the OpenMetrics text is kept as it is.
        for l in om.lines().filter(|l| !l.starts_with('#')) {
            assert!(text.lines().any(|t| t == l), "{l}");
        }
    }
}
