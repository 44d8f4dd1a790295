//! Outcome -> annotation + reasons (SPEC section 2.3), overridable from config.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

use super::api::{AnnotateRequest, Annotation, Reason};
use super::event::OutcomeEvent;

/// The three topics that carry outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutcomeTopic {
    Logins,
    Registrations,
    FraudSignals,
}

impl OutcomeTopic {
    pub const ALL: [OutcomeTopic; 3] = [Self::Logins, Self::Registrations, Self::FraudSignals];

    /// The name used in config (`rules.<name>`) and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logins => "logins",
            Self::Registrations => "registrations",
            Self::FraudSignals => "fraud_signals",
        }
    }
}

impl fmt::Display for OutcomeTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one outcome means for Google's model.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `LEGITIMATE` or `FRAUDULENT`; absent to send reasons only.
    #[serde(default)]
    pub annotation: Option<Annotation>,
    /// Reasons sent with the annotation.
    #[serde(default)]
    pub reasons: Vec<Reason>,
}

const DEFAULT_RULES: &[(OutcomeTopic, &str, Option<Annotation>, &[Reason])] = {
    use Annotation::{Fraudulent as F, Legitimate as L};
    use OutcomeTopic::{FraudSignals as S, Logins as G, Registrations as R};
    &[
        (G, "password_correct", None, &[Reason::CorrectPassword]),
        (G, "password_incorrect", None, &[Reason::IncorrectPassword]),
        (
            G,
            "two_factor_initiated",
            None,
            &[Reason::InitiatedTwoFactor],
        ),
        (G, "two_factor_passed", Some(L), &[Reason::PassedTwoFactor]),
        (G, "two_factor_failed", None, &[Reason::FailedTwoFactor]),
        (G, "account_takeover", Some(F), &[]),
        (R, "verified", Some(L), &[]),
        (R, "spam_reported", Some(F), &[Reason::SocialSpam]),
        (R, "abuse_confirmed", Some(F), &[]),
        (S, "chargeback", Some(F), &[Reason::Chargeback]),
        (S, "chargeback_fraud", Some(F), &[Reason::ChargebackFraud]),
        (S, "chargeback_dispute", None, &[Reason::ChargebackDispute]),
        (S, "refund", None, &[Reason::Refund]),
        (S, "refund_fraud", Some(F), &[Reason::RefundFraud]),
        (
            S,
            "payment_accepted",
            Some(L),
            &[Reason::TransactionAccepted],
        ),
        (S, "payment_declined", None, &[Reason::TransactionDeclined]),
        (S, "payment_suspected", None, &[Reason::PaymentHeuristics]),
        (S, "spam_reported", Some(F), &[Reason::SocialSpam]),
        (S, "support_case_login", Some(L), &[]),
        (S, "purchase_completed", Some(L), &[]),
    ]
};

/// The rule table: defaults plus the operator's overrides.
#[derive(Debug, Clone)]
pub struct Rules {
    table: HashMap<(OutcomeTopic, String), Rule>,
}

impl Default for Rules {
    fn default() -> Self {
        let table = DEFAULT_RULES
            .iter()
            .map(|(topic, outcome, annotation, reasons)| {
                (
                    (*topic, (*outcome).to_owned()),
                    Rule {
                        annotation: *annotation,
                        reasons: reasons.to_vec(),
                    },
                )
            })
            .collect();
        Self { table }
    }
}

impl Rules {
    /// The default table with `overrides` added or replacing rules.
    pub fn with_overrides<'a>(
        overrides: impl IntoIterator<Item = (OutcomeTopic, &'a str, Rule)>,
    ) -> Self {
        let mut rules = Self::default();
        for (topic, outcome, rule) in overrides {
            rules.table.insert((topic, outcome.to_owned()), rule);
        }
        rules
    }

    /// Every (topic, outcome) with a rule, sorted.
    pub fn outcomes(&self) -> Vec<(OutcomeTopic, &str)> {
        let mut all: Vec<_> = self.table.keys().map(|(t, o)| (*t, o.as_str())).collect();
        all.sort();
        all
    }

    pub fn get(&self, topic: OutcomeTopic, outcome: &str) -> Option<&Rule> {
        self.table.get(&(topic, outcome.to_owned()))
    }

    /// Builds the annotate body for an event, or `None` when its outcome has no rule.
    /// Explicit `annotation` / `reasons` on the event replace the rule's.
    pub fn decide(&self, topic: OutcomeTopic, event: &OutcomeEvent) -> Option<AnnotateRequest> {
        let rule = self.get(topic, &event.outcome)?;
        Some(AnnotateRequest {
            annotation: event.annotation.or(rule.annotation),
            reasons: event
                .reasons
                .clone()
                .unwrap_or_else(|| rule.reasons.clone()),
            account_id: event.account_id.clone(),
            hashed_account_id: event.hashed_account_id.clone(),
            transaction_event: event.transaction.clone(),
            phone_authentication_event: event.phone_authentication.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(outcome: &str) -> OutcomeEvent {
        OutcomeEvent::decode(format!(r#"{{"event_id":"e","outcome":"{outcome}"}}"#).as_bytes())
            .unwrap()
    }

    #[test]
    fn defaults_match_the_spec_table() {
        let rules = Rules::default();
        assert_eq!(rules.outcomes().len(), 20);
        let req = rules
            .decide(OutcomeTopic::Logins, &event("two_factor_passed"))
            .unwrap();
        assert_eq!(req.annotation, Some(Annotation::Legitimate));
        assert_eq!(req.reasons, vec![Reason::PassedTwoFactor]);
        let req = rules
            .decide(OutcomeTopic::FraudSignals, &event("chargeback_dispute"))
            .unwrap();
        assert_eq!(req.annotation, None);
        assert_eq!(req.reasons, vec![Reason::ChargebackDispute]);
        assert!(
            rules
                .decide(OutcomeTopic::Registrations, &event("chargeback"))
                .is_none()
        );
    }

    #[test]
    fn explicit_fields_replace_the_rule() {
        let rules = Rules::default();
        let mut e = event("payment_declined");
        e.annotation = Some(Annotation::Fraudulent);
        let req = rules.decide(OutcomeTopic::FraudSignals, &e).unwrap();
        assert_eq!(req.annotation, Some(Annotation::Fraudulent));
        assert_eq!(req.reasons, vec![Reason::TransactionDeclined]);
        e.reasons = Some(vec![]);
        assert!(
            rules
                .decide(OutcomeTopic::FraudSignals, &e)
                .unwrap()
                .reasons
                .is_empty()
        );
    }

    #[test]
    fn overrides_replace_and_add() {
        let rules = Rules::with_overrides([
            (
                OutcomeTopic::Logins,
                "account_takeover",
                Rule {
                    annotation: None,
                    reasons: vec![Reason::PaymentHeuristics],
                },
            ),
            (
                OutcomeTopic::Logins,
                "captcha_solved",
                Rule {
                    annotation: Some(Annotation::Legitimate),
                    reasons: vec![],
                },
            ),
        ]);
        assert_eq!(
            rules
                .decide(OutcomeTopic::Logins, &event("account_takeover"))
                .unwrap()
                .annotation,
            None
        );
        assert!(
            rules
                .decide(OutcomeTopic::Logins, &event("captcha_solved"))
                .is_some()
        );
    }
}
