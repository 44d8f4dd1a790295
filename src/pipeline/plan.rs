//! Planning: everything about one message that needs no IO. Decode, rules and reference
//! checks turn a message into a [`Plan`], or into the dead letter it deserves.

use bytes::Bytes;

use super::message::{Message, TopicKind};
use crate::annotate::AnnotateClient;
use crate::domain::account::AccountHasher;
use crate::domain::assessment::{
    AssessmentId, AssessmentName, CorrelationKey, ProjectAllowList, ProjectRef, ReferenceError,
    resolve_inline,
};
use crate::domain::event::{AssessmentEvent, OutcomeEvent};
use crate::domain::rules::{OutcomeTopic, Rules};
use crate::failure::{DeadLetter, DeadLetterReason};

/// Where an annotation goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// Named by the event (inline name or WAF token).
    Known(AssessmentName),
    /// To be looked up in the cache by correlation key.
    Join(CorrelationKey),
}

/// What one message asks for.
#[derive(Debug)]
pub enum Plan {
    /// A tombstone on `assessments` without a usable key: nothing to do.
    Skip,
    /// A tombstone on `assessments`: forget the mapping of its Kafka key (docs/EVENTS.md,
    /// section 2).
    Forget { key: CorrelationKey },
    /// An assessment event: remember `key -> name`.
    Store {
        key: CorrelationKey,
        name: AssessmentName,
    },
    /// An outcome: send `body` for `target`.
    Annotate {
        event_id: String,
        target: Target,
        body: Bytes,
    },
}

impl Plan {
    /// The lane that orders this event against others, if any.
    pub fn lane(&self) -> Option<String> {
        match self {
            Self::Skip => None,
            // Writes for one key keep their order; they never wait behind the joins that
            // need them.
            Self::Store { key, .. } | Self::Forget { key } => {
                Some(format!("store\u{0}{}", key.as_str()))
            }
            Self::Annotate {
                target: Target::Join(key),
                ..
            } => Some(format!("key\u{0}{}", key.as_str())),
            Self::Annotate {
                target: Target::Known(name),
                ..
            } => Some(name.as_str().to_owned()),
        }
    }

    /// The event id, when the event has one.
    pub fn event_id(&self) -> &str {
        match self {
            Self::Annotate { event_id, .. } => event_id,
            _ => "",
        }
    }
}

fn invalid_reference(field: &str, err: &ReferenceError) -> DeadLetter {
    DeadLetter::new(
        DeadLetterReason::InvalidReference,
        format!("{field}: {err}"),
    )
}

/// Decides what each message asks for.
pub struct Planner {
    /// Outcome -> annotation rules (defaults and the config's overrides).
    rules: Rules,
    /// `recaptcha.project`: completes bare assessment ids and WAF tokens.
    project: Option<ProjectRef>,
    /// `recaptcha.allowed_projects`: the only projects that may be annotated.
    allowed: ProjectAllowList,
    /// `delivery.max_event_bytes`: larger events are not decoded.
    max_event_bytes: usize,
    /// `recaptcha.account_id_hmac_key`: account ids go out only hashed.
    accounts: Option<AccountHasher>,
}

impl Planner {
    pub fn new(
        rules: Rules,
        project: Option<ProjectRef>,
        allowed: ProjectAllowList,
        max_event_bytes: usize,
    ) -> Self {
        Self {
            rules,
            project,
            allowed,
            max_event_bytes,
            accounts: None,
        }
    }

    /// Sends every account id as `hashedAccountId` under `hasher`, never as `accountId`.
    #[must_use]
    pub fn hashing_accounts(mut self, hasher: Option<AccountHasher>) -> Self {
        self.accounts = hasher;
        self
    }

    /// The plan for `msg`, or why it is set aside.
    pub fn plan(&self, msg: &Message) -> Result<Plan, DeadLetter> {
        let Some(payload) = msg.payload.as_deref() else {
            return match msg.kind {
                // A compacted `assessments` topic deletes a key with a tombstone: its
                // mapping goes too, in order with the writes of the same key.
                TopicKind::Assessments => Ok(msg
                    .kafka_key()
                    .and_then(|k| CorrelationKey::parse(k).ok())
                    .map_or(Plan::Skip, |key| Plan::Forget { key })),
                // An outcome without a value says nothing: set aside where it can be seen.
                TopicKind::Outcome(_) => Err(DeadLetter::new(
                    DeadLetterReason::Decode,
                    "the record has no value (a tombstone): an outcome event is a JSON object",
                )),
            };
        };
        let size = payload.len() + msg.key.as_ref().map_or(0, Vec::len);
        if size > self.max_event_bytes {
            return Err(DeadLetter::new(
                DeadLetterReason::Decode,
                format!(
                    "event of {size} bytes, larger than delivery.max_event_bytes ({})",
                    self.max_event_bytes
                ),
            ));
        }
        match msg.kind {
            TopicKind::Assessments => self.plan_assessment(msg, payload),
            TopicKind::Outcome(topic) => self.plan_outcome(msg, topic, payload),
        }
    }

    fn plan_assessment(&self, msg: &Message, payload: &[u8]) -> Result<Plan, DeadLetter> {
        let event = AssessmentEvent::decode(payload)
            .map_err(|e| DeadLetter::new(DeadLetterReason::Decode, e.to_string()))?;
        let Some(raw_key) = event.key.as_deref().or(msg.kafka_key()) else {
            return Err(DeadLetter::new(
                DeadLetterReason::InvalidReference,
                "no key field and no Kafka message key",
            ));
        };
        let key = CorrelationKey::parse(raw_key).map_err(|e| invalid_reference("key", &e))?;
        let name = AssessmentName::parse(&event.assessment)
            .map_err(|e| invalid_reference("assessment", &e))?;
        self.allowed
            .check(&name)
            .map_err(|e| invalid_reference("assessment", &e))?;
        Ok(Plan::Store { key, name })
    }

    fn plan_outcome(
        &self,
        msg: &Message,
        topic: OutcomeTopic,
        payload: &[u8],
    ) -> Result<Plan, DeadLetter> {
        let event = OutcomeEvent::decode(payload)
            .map_err(|e| DeadLetter::new(DeadLetterReason::Decode, e.to_string()))?;
        let Some(mut request) = self.rules.decide(topic, &event) else {
            let outcome: String = event.outcome.chars().take(64).collect();
            return Err(DeadLetter::new(
                DeadLetterReason::UnknownOutcome,
                format!("no rule for outcome {outcome:?} on {topic}"),
            ));
        };
        if let Some(hasher) = &self.accounts {
            hasher.apply(&mut request);
        }
        let target = self.target(msg, &event)?;
        if let Target::Known(name) = &target {
            self.allowed
                .check(name)
                .map_err(|e| invalid_reference("assessment", &e))?;
        }
        Ok(Plan::Annotate {
            event_id: event.event_id,
            target,
            body: AnnotateClient::body(&request),
        })
    }

    /// The assessment reference, in SPEC order: inline name, WAF token, then a key to join.
    fn target(&self, msg: &Message, event: &OutcomeEvent) -> Result<Target, DeadLetter> {
        if let Some(raw) = &event.assessment {
            return resolve_inline(raw, self.project.as_ref())
                .map(Target::Known)
                .map_err(|e| invalid_reference("assessment", &e));
        }
        if let Some(token) = &event.recaptcha_token {
            let id = AssessmentId::from_waf_token(token)
                .map_err(|e| invalid_reference("recaptcha_token", &e))?;
            let Some(project) = &self.project else {
                return Err(invalid_reference(
                    "recaptcha_token",
                    &ReferenceError::NoProject,
                ));
            };
            return Ok(Target::Known(AssessmentName::from_parts(project, &id)));
        }
        match event.key.as_deref().or(msg.kafka_key()) {
            Some(raw) => CorrelationKey::parse(raw)
                .map(Target::Join)
                .map_err(|e| invalid_reference("key", &e)),
            None => Err(DeadLetter::new(
                DeadLetterReason::InvalidReference,
                "no assessment, recaptcha_token, key or Kafka key",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn outcome(payload: &str) -> Message {
        Message {
            tp: crate::pipeline::offsets::TopicPartition::new("t", 0),
            kind: TopicKind::Outcome(OutcomeTopic::Logins),
            offset: 0,
            key: None,
            payload: Some(payload.as_bytes().to_vec()),
            timestamp_ms: None,
            replay_count: None,
        }
    }

    #[test]
    fn with_an_hmac_key_the_account_id_goes_out_only_hashed() {
        let event = r#"{"event_id":"e","outcome":"password_correct","account_id":"alice@example.com","assessment":"projects/p/assessments/a"}"#;
        let planner = |hasher| {
            Planner::new(
                Rules::default(),
                None,
                ProjectAllowList::new(vec![]),
                1 << 20,
            )
            .hashing_accounts(hasher)
        };
        let body = |plan| match plan {
            Ok(Plan::Annotate { body, .. }) => String::from_utf8(body.to_vec()).unwrap(),
            other => panic!("{other:?}"),
        };
        let plain = body(planner(None).plan(&outcome(event)));
        assert!(
            plain.contains(r#""accountId":"alice@example.com""#),
            "{plain}"
        );

        let hasher = AccountHasher::new(&SecretString::from("site-secret-0123456789"));
        let expected = hasher.hash("alice@example.com");
        let hashed = body(planner(Some(hasher)).plan(&outcome(event)));
        assert!(!hashed.contains("alice"), "{hashed}");
        assert!(
            hashed.contains(&format!(r#""hashedAccountId":"{expected}""#)),
            "{hashed}"
        );
    }
}
