//! The combiner built into the binary (INTERFACE.md §5). Pure: no I/O, no regorus.
//!
//! any deny → deny; otherwise any approval → require approval; otherwise any allow →
//! allow; otherwise `policy.default`. Elements marked `"mode": "shadow"` (or every
//! element, under `policy.mode = "shadow"`) are recorded but never hold or deny.
//! A malformed element or an unknown route is an error, and an error is a deny.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::approval::Risk;
use crate::config::{parse_duration, DefaultDecision, PolicyMode};

/// The three outcomes of a policy decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Allow,
    Deny,
    RequireApproval,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::RequireApproval => "require_approval",
        }
    }
}

/// Rule id used when no rule matched and `policy.default` decided.
pub const DEFAULT_RULE: &str = "policy.default";
/// Rule id used when evaluation failed or an element was malformed.
pub const ERROR_RULE: &str = "policy.error";

/// The raw output of the rules: the elements of the three sets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSets {
    pub deny: Vec<Value>,
    pub approval: Vec<Value>,
    pub allow: Vec<Value>,
}

/// What the approval elements ask for, merged.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalPlan {
    pub routes: Vec<String>,
    pub risk: Risk,
    pub risk_reason: String,
    pub action: Option<String>,
    pub summary: Map<String, Value>,
    pub escalate_after: Option<Duration>,
    pub expires_after: Option<Duration>,
    pub quorum: u32,
    pub rule_ids: Vec<String>,
}

/// The combined outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// What the gate does.
    pub decision: Decision,
    /// What the rules asked for, counting shadowed elements. Differs from
    /// `decision` only when shadow mode softened it.
    pub matched: Decision,
    /// The ids behind the decision: first the enforced elements of the decided set
    /// (or `policy.default` / `policy.error`), then any shadowed elements behind
    /// `matched`. Under `policy.mode = "shadow"`, the ids behind `matched`.
    pub rule_ids: Vec<String>,
    /// The first reason behind the decision (under shadow mode, behind `matched`).
    pub reason: String,
    /// The merged approval request: from the enforced approval elements when
    /// `decision` is `RequireApproval` (always set then), or from every approval
    /// element when only shadowed ones asked (what would have been asked).
    pub plan: Option<ApprovalPlan>,
    /// Set when evaluation or an element failed; the decision is then deny.
    pub error: Option<String>,
}

impl Verdict {
    pub fn shadowed(&self) -> bool {
        self.decision != self.matched
    }

    /// A deny caused by a failure.
    pub fn error(msg: impl Into<String>) -> Verdict {
        let msg = msg.into();
        Verdict {
            decision: Decision::Deny,
            matched: Decision::Deny,
            rule_ids: vec![ERROR_RULE.to_string()],
            reason: format!("policy error: {msg}"),
            plan: None,
            error: Some(msg),
        }
    }

    /// The rule to name in a `policy_denied` refusal: an enforced deny, never a
    /// shadowed one.
    pub fn deny_rule(&self) -> &str {
        self.rule_ids.first().map(String::as_str).unwrap_or(DEFAULT_RULE)
    }
}

#[derive(Debug)]
struct Elem<'a> {
    id: &'a str,
    reason: &'a str,
    shadow: bool,
    obj: &'a Map<String, Value>,
}

fn elem<'a>(set: &str, v: &'a Value) -> Result<Elem<'a>, String> {
    let obj = v.as_object().ok_or_else(|| format!("{set} element is not an object: {v}"))?;
    let id = obj
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{set} element without a string \"id\": {v}"))?;
    let reason = obj
        .get("reason")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{set} element {id:?} has no string \"reason\""))?;
    let shadow = match obj.get("mode") {
        None | Some(Value::Null) => false,
        Some(Value::String(m)) if m == "enforce" => false,
        Some(Value::String(m)) if m == "shadow" => true,
        Some(m) => return Err(format!("{set} element {id:?}: mode {m} is not \"enforce\" or \"shadow\"")),
    };
    Ok(Elem { id, reason, shadow, obj })
}

fn duration_field(e: &Elem<'_>, key: &str) -> Result<Option<Duration>, String> {
    match e.obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_duration(s).map(Some).map_err(|m| format!("approval {:?}: {key}: {m}", e.id)),
        Some(v) => Err(format!("approval {:?}: {key} {v} is not a duration string", e.id)),
    }
}

/// Display text of a summary value: strings as they are, anything else as JSON.
fn summary_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn plan(elems: &[Elem<'_>], known_routes: &BTreeSet<String>) -> Result<ApprovalPlan, String> {
    let mut p = ApprovalPlan {
        routes: Vec::new(),
        risk: Risk::Low,
        risk_reason: String::new(),
        action: None,
        summary: Map::new(),
        escalate_after: None,
        expires_after: None,
        quorum: 1,
        rule_ids: Vec::new(),
    };
    let mut risk_set = false;
    for e in elems {
        let route = e
            .obj
            .get("route")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("approval {:?} has no string \"route\"", e.id))?;
        if !known_routes.contains(route) {
            return Err(format!("approval {:?} names unknown route {route:?}", e.id));
        }
        if !p.routes.iter().any(|r| r == route) {
            p.routes.push(route.to_string());
        }
        let risk = match e.obj.get("risk") {
            None | Some(Value::Null) => Risk::Medium,
            Some(Value::String(s)) => Risk::parse(s)
                .ok_or_else(|| format!("approval {:?}: risk {s:?} is not low, medium, high or critical", e.id))?,
            Some(v) => return Err(format!("approval {:?}: risk {v} is not a string", e.id)),
        };
        if !risk_set || risk > p.risk {
            p.risk = risk;
            p.risk_reason = e.reason.to_string();
            risk_set = true;
        }
        if p.action.is_none() {
            match e.obj.get("action") {
                None | Some(Value::Null) => {}
                Some(Value::String(a)) if !a.is_empty() => p.action = Some(a.clone()),
                Some(v) => return Err(format!("approval {:?}: action {v} is not a non-empty string", e.id)),
            }
        }
        match e.obj.get("summary") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    if !p.summary.contains_key(k) {
                        p.summary.insert(k.clone(), Value::String(summary_text(v)));
                    }
                }
            }
            Some(v) => return Err(format!("approval {:?}: summary {v} is not an object", e.id)),
        }
        if let Some(d) = duration_field(e, "escalate_after")? {
            p.escalate_after = Some(p.escalate_after.map_or(d, |c| c.min(d)));
        }
        if let Some(d) = duration_field(e, "expires_after")? {
            if d.is_zero() {
                return Err(format!("approval {:?}: expires_after must be positive", e.id));
            }
            p.expires_after = Some(p.expires_after.map_or(d, |c| c.min(d)));
        }
        match e.obj.get("quorum") {
            None | Some(Value::Null) => {}
            Some(q) => {
                let n = q
                    .as_u64()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| format!("approval {:?}: quorum {q} is not a whole number from 1 to 100", e.id))?;
                p.quorum = p.quorum.max(n as u32);
            }
        }
        p.rule_ids.push(e.id.to_string());
    }
    Ok(p)
}

/// Combines the rule output into a verdict.
pub fn combine(
    sets: &RuleSets,
    default: DefaultDecision,
    mode: PolicyMode,
    known_routes: &BTreeSet<String>,
) -> Verdict {
    match try_combine(sets, default, mode, known_routes) {
        Ok(v) => v,
        Err(e) => Verdict::error(e),
    }
}

fn try_combine(
    sets: &RuleSets,
    default: DefaultDecision,
    mode: PolicyMode,
    known_routes: &BTreeSet<String>,
) -> Result<Verdict, String> {
    let deny = sets.deny.iter().map(|v| elem("deny", v)).collect::<Result<Vec<_>, _>>()?;
    let approval = sets.approval.iter().map(|v| elem("approval", v)).collect::<Result<Vec<_>, _>>()?;
    let allow = sets.allow.iter().map(|v| elem("allow", v)).collect::<Result<Vec<_>, _>>()?;
    // Validate every approval element, shadowed or not, so a broken rule shows.
    let all_plan = if approval.is_empty() { None } else { Some(plan(&approval, known_routes)?) };

    let default_decision = match default {
        DefaultDecision::Deny => Decision::Deny,
        DefaultDecision::Allow => Decision::Allow,
    };
    let pick = |include_shadow: bool| -> Decision {
        let on = |e: &&Elem<'_>| include_shadow || !e.shadow;
        if deny.iter().any(|e| on(&e)) {
            Decision::Deny
        } else if approval.iter().any(|e| on(&e)) {
            Decision::RequireApproval
        } else if allow.iter().any(|e| on(&e)) {
            Decision::Allow
        } else {
            default_decision
        }
    };
    let matched = pick(true);
    let decision = match mode {
        PolicyMode::Shadow => Decision::Allow,
        PolicyMode::Enforce => pick(false),
    };
    let set_of = |d: Decision| -> &[Elem<'_>] {
        match d {
            Decision::Deny => &deny,
            Decision::RequireApproval => &approval,
            Decision::Allow => &allow,
        }
    };
    let default_reason = |d: Decision| format!("no rule matched; policy.default is {}", d.as_str());
    let any_shadow = deny.iter().chain(&approval).chain(&allow).any(|e| e.shadow);
    let (rule_ids, reason) = if mode == PolicyMode::Shadow || !any_shadow {
        // Under shadow mode, what the rules asked for; with nothing shadowed, the
        // elements behind the decision are the ones that matched.
        let behind = set_of(matched);
        match behind.first() {
            Some(first) => (behind.iter().map(|e| e.id.to_string()).collect(), first.reason.to_string()),
            None => (vec![DEFAULT_RULE.to_string()], default_reason(matched)),
        }
    } else {
        // The enforced elements that decided come first (a refusal names the
        // first), then the shadowed ones behind what the rules asked for.
        let mut ids: Vec<String> = Vec::new();
        let acting = set_of(decision).iter().filter(|e| !e.shadow);
        let reason = match acting.clone().next() {
            Some(first) => first.reason.to_string(),
            None => {
                ids.push(DEFAULT_RULE.to_string());
                default_reason(decision)
            }
        };
        ids.extend(acting.map(|e| e.id.to_string()));
        for e in set_of(matched).iter().filter(|e| e.shadow) {
            if !ids.iter().any(|i| i == e.id) {
                ids.push(e.id.to_string());
            }
        }
        (ids, reason)
    };
    // The plan used to hold counts only enforced elements, whatever else matched (a
    // shadowed deny next to an enforced approval still holds). When every approval
    // is shadowed, the plan describes what would have been asked.
    let plan = if decision == Decision::RequireApproval && approval.iter().any(|e| e.shadow) {
        let enforced: Vec<Elem<'_>> = approval
            .iter()
            .filter(|e| !e.shadow)
            .map(|e| Elem { id: e.id, reason: e.reason, shadow: e.shadow, obj: e.obj })
            .collect();
        Some(plan(&enforced, known_routes)?)
    } else if decision == Decision::RequireApproval || matched == Decision::RequireApproval {
        all_plan
    } else {
        None
    };
    Ok(Verdict { decision, matched, rule_ids, reason, plan, error: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn routes() -> BTreeSet<String> {
        ["finance-oncall", "finance-leads", "eng-oncall"].iter().map(|s| s.to_string()).collect()
    }

    fn run(sets: RuleSets) -> Verdict {
        combine(&sets, DefaultDecision::Deny, PolicyMode::Enforce, &routes())
    }

    fn appr(id: &str, extra: Value) -> Value {
        let mut v = json!({"id": id, "reason": format!("reason {id}"), "route": "finance-oncall"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn precedence() {
        let allow = json!({"id": "a", "reason": "ok"});
        let deny = json!({"id": "d", "reason": "no"});
        let v = run(RuleSets {
            deny: vec![deny.clone()],
            approval: vec![appr("p", json!({}))],
            allow: vec![allow.clone()],
        });
        assert_eq!((v.decision, v.deny_rule()), (Decision::Deny, "d"));
        let v =
            run(RuleSets { approval: vec![appr("p", json!({}))], allow: vec![allow.clone()], ..Default::default() });
        assert_eq!(v.decision, Decision::RequireApproval);
        let v = run(RuleSets { allow: vec![allow], ..Default::default() });
        assert_eq!((v.decision, v.rule_ids.clone()), (Decision::Allow, vec!["a".to_string()]));
        let v = run(RuleSets::default());
        assert_eq!((v.decision, v.deny_rule()), (Decision::Deny, DEFAULT_RULE));
        let v = combine(&RuleSets::default(), DefaultDecision::Allow, PolicyMode::Enforce, &routes());
        assert_eq!(v.decision, Decision::Allow);
    }

    #[test]
    fn approval_elements_merge() {
        let v = run(RuleSets {
            approval: vec![
                appr(
                    "one",
                    json!({"risk": "medium", "escalate_after": "30m", "expires_after": "2h", "quorum": 1,
                                   "summary": {"amount": "$2,400.00", "customer": "cus_1"}, "action": "issue_refund"}),
                ),
                appr(
                    "two",
                    json!({"route": "finance-leads", "risk": "high", "escalate_after": "15m", "expires_after": "1h",
                                   "quorum": 2, "summary": {"amount": "ignored", "n": 3}, "action": "other"}),
                ),
                appr("three", json!({})),
            ],
            ..Default::default()
        });
        let p = v.plan.unwrap();
        assert_eq!(p.routes, ["finance-oncall", "finance-leads"]);
        assert_eq!(p.risk, Risk::High);
        assert_eq!(p.risk_reason, "reason two");
        assert_eq!(p.escalate_after, Some(Duration::from_secs(900)));
        assert_eq!(p.expires_after, Some(Duration::from_secs(3600)));
        assert_eq!(p.quorum, 2);
        assert_eq!(
            p.summary,
            json!({"amount": "$2,400.00", "customer": "cus_1", "n": "3"}).as_object().unwrap().clone()
        );
        assert_eq!(p.rule_ids, ["one", "two", "three"]);
        assert_eq!(p.action.as_deref(), Some("issue_refund"));
    }

    #[test]
    fn malformed_elements_deny() {
        let bad = [
            json!("just a string"),
            json!({"reason": "no id"}),
            json!({"id": "x"}),
            appr("r", json!({"route": "nowhere"})),
            appr("r", json!({"risk": "extreme"})),
            appr("r", json!({"quorum": 0})),
            appr("r", json!({"expires_after": "soon"})),
            appr("r", json!({"summary": [1]})),
            appr("r", json!({"mode": "loud"})),
        ];
        for b in bad {
            let v = run(RuleSets {
                approval: vec![b.clone()],
                allow: vec![json!({"id": "a", "reason": "ok"})],
                ..Default::default()
            });
            assert_eq!(v.decision, Decision::Deny, "{b}");
            assert!(v.error.is_some(), "{b}");
            assert_eq!(v.deny_rule(), ERROR_RULE);
        }
    }

    #[test]
    fn shadow_elements_and_mode() {
        let v = run(RuleSets {
            approval: vec![appr("p", json!({"mode": "shadow"}))],
            allow: vec![json!({"id": "a", "reason": "ok"})],
            ..Default::default()
        });
        assert_eq!((v.decision, v.matched), (Decision::Allow, Decision::RequireApproval));
        assert!(v.shadowed());
        assert_eq!(v.rule_ids, ["a", "p"], "the allow that acted, then the shadowed approval");
        let v =
            run(RuleSets { deny: vec![json!({"id": "d", "reason": "no", "mode": "shadow"})], ..Default::default() });
        assert_eq!((v.decision, v.matched), (Decision::Deny, Decision::Deny), "default deny still applies");
        let v = combine(
            &RuleSets { deny: vec![json!({"id": "d", "reason": "no"})], ..Default::default() },
            DefaultDecision::Deny,
            PolicyMode::Shadow,
            &routes(),
        );
        assert_eq!((v.decision, v.matched), (Decision::Allow, Decision::Deny));
    }

    /// A shadowed deny never turns an enforced approval into a deny, and the
    /// approval is planned from the enforced elements with their reason.
    #[test]
    fn shadowed_deny_beside_an_enforced_approval_holds() {
        let v = run(RuleSets {
            deny: vec![json!({"id": "sd", "reason": "would deny", "mode": "shadow"})],
            approval: vec![
                appr("p", json!({"risk": "high"})),
                appr("sp", json!({"mode": "shadow", "route": "eng-oncall"})),
            ],
            ..Default::default()
        });
        assert_eq!((v.decision, v.matched), (Decision::RequireApproval, Decision::Deny));
        assert_eq!(v.rule_ids, ["p", "sd"], "the acting rule first, then the shadowed one");
        assert_eq!(v.reason, "reason p");
        let plan = v.plan.expect("a plan whenever the decision holds");
        assert_eq!(plan.routes, ["finance-oncall"], "shadowed approvals choose no route");
        assert_eq!(plan.rule_ids, ["p"]);
    }

    /// A refusal names the enforced rule that denied, or `policy.default`; never a
    /// shadowed element.
    #[test]
    fn refusals_never_name_a_shadowed_element() {
        let v = run(RuleSets {
            deny: vec![
                json!({"id": "sd", "reason": "would deny", "mode": "shadow"}),
                json!({"id": "d", "reason": "no"}),
            ],
            ..Default::default()
        });
        assert_eq!(v.decision, Decision::Deny);
        assert_eq!((v.deny_rule(), v.reason.as_str()), ("d", "no"));
        assert_eq!(v.rule_ids, ["d", "sd"]);
        let v = run(RuleSets { approval: vec![appr("sp", json!({"mode": "shadow"}))], ..Default::default() });
        assert_eq!((v.decision, v.matched), (Decision::Deny, Decision::RequireApproval));
        assert_eq!(v.deny_rule(), DEFAULT_RULE);
        assert_eq!(v.rule_ids, [DEFAULT_RULE, "sp"]);
        assert_eq!(v.reason, "no rule matched; policy.default is deny");
        assert_eq!(v.plan.map(|p| p.rule_ids), Some(vec!["sp".to_string()]), "what would have been asked");
    }
}
