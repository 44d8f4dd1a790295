//! Assessment names, ids, project references and WAF tokens.
//!
//! Everything that ends up in the annotate URL passes through [`AssessmentName::parse`] or
//! [`AssessmentName::from_parts`], so an unsafe path segment cannot reach the HTTP client.

use std::fmt;

use thiserror::Error;

/// Why a reference to an assessment was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReferenceError {
    #[error("assessment name does not match projects/<project>/assessments/<id>")]
    Shape,
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} contains a character that is not allowed in a path segment")]
    UnsafeSegment { what: &'static str },
    #[error("{what} is longer than {max} characters")]
    TooLong { what: &'static str, max: usize },
    #[error("bare assessment id given but recaptcha.project is not configured")]
    NoProject,
    #[error("project is not in recaptcha.allowed_projects")]
    ProjectNotAllowed,
    #[error("recaptcha_token does not end in :U=<16 alphanumeric characters>")]
    Token,
}

/// Longest project or assessment id accepted (ids seen in practice are 16-20 characters).
const MAX_SEGMENT: usize = 256;

/// Checks that `segment` is safe to put into a URL path as one segment, unescaped.
///
/// Only RFC 3986's unreserved characters (letters, digits, `-`, `.`, `_`, `~`), and no `..`:
/// a URL keeps such a segment exactly as it is, with nothing to escape. The API's own ids are
/// alphanumeric with `-` and `_`.
fn check_segment(segment: &str, what: &'static str) -> Result<(), ReferenceError> {
    if segment.is_empty() {
        return Err(ReferenceError::Empty { what });
    }
    if segment.len() > MAX_SEGMENT {
        return Err(ReferenceError::TooLong {
            what,
            max: MAX_SEGMENT,
        });
    }
    if segment == "." || segment.contains("..") {
        return Err(ReferenceError::UnsafeSegment { what });
    }
    let safe = segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if safe {
        Ok(())
    } else {
        Err(ReferenceError::UnsafeSegment { what })
    }
}

/// A Google Cloud project, by id or number, as it appears in an assessment name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectRef(String);

impl ProjectRef {
    pub fn parse(raw: &str) -> Result<Self, ReferenceError> {
        check_segment(raw, "project")?;
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An assessment id: one validated path segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AssessmentId(String);

impl AssessmentId {
    pub fn parse(raw: &str) -> Result<Self, ReferenceError> {
        check_segment(raw, "assessment id")?;
        Ok(Self(raw.to_owned()))
    }

    /// Extracts the id from a reCAPTCHA token issued through a WAF integration: the 16
    /// alphanumeric characters that end the token after `U=` (`...:U=<id>`, or `...U=<id>` as
    /// Google's own page shows it). Nothing looser: the id is exactly those 16 characters.
    pub fn from_waf_token(token: &str) -> Result<Self, ReferenceError> {
        let split = token.len().checked_sub(16).ok_or(ReferenceError::Token)?;
        let (head, id) = (token.get(..split), token.get(split..));
        let (Some(head), Some(id)) = (head, id) else {
            return Err(ReferenceError::Token);
        };
        let marked = head
            .strip_suffix("U=")
            .is_some_and(|before| !before.is_empty());
        if marked && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(Self(id.to_owned()))
        } else {
            Err(ReferenceError::Token)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `projects/<project>/assessments/<id>`, validated; the only way to address an annotate call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AssessmentName {
    full: String,
    project_len: usize,
}

impl AssessmentName {
    pub fn from_parts(project: &ProjectRef, id: &AssessmentId) -> Self {
        Self {
            full: format!("projects/{}/assessments/{}", project.as_str(), id.as_str()),
            project_len: project.as_str().len(),
        }
    }

    /// Parses a full name. Exactly four segments, the literal `projects` and `assessments`,
    /// and two safe segments.
    pub fn parse(raw: &str) -> Result<Self, ReferenceError> {
        let mut parts = raw.split('/');
        let (Some("projects"), Some(project), Some("assessments"), Some(id), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ReferenceError::Shape);
        };
        let project = ProjectRef::parse(project)?;
        let id = AssessmentId::parse(id)?;
        Ok(Self::from_parts(&project, &id))
    }

    pub fn project(&self) -> &str {
        &self.full["projects/".len().."projects/".len() + self.project_len]
    }

    /// The assessment id, the name's last segment.
    pub fn id(&self) -> &str {
        &self.full["projects/".len() + self.project_len + "/assessments/".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for AssessmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// Resolves the inline `assessment` field: a full name, or a bare id combined with the
/// configured project.
pub fn resolve_inline(
    raw: &str,
    default_project: Option<&ProjectRef>,
) -> Result<AssessmentName, ReferenceError> {
    if raw.contains('/') {
        return AssessmentName::parse(raw);
    }
    let id = AssessmentId::parse(raw)?;
    let project = default_project.ok_or(ReferenceError::NoProject)?;
    Ok(AssessmentName::from_parts(project, &id))
}

/// The projects whose assessments may be annotated. Empty means any project.
#[derive(Debug, Clone, Default)]
pub struct ProjectAllowList(Vec<ProjectRef>);

impl ProjectAllowList {
    pub fn new(projects: Vec<ProjectRef>) -> Self {
        Self(projects)
    }

    /// Whether any project is allowed.
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    pub fn check(&self, name: &AssessmentName) -> Result<(), ReferenceError> {
        if self.0.is_empty() || self.0.iter().any(|p| p.as_str() == name.project()) {
            Ok(())
        } else {
            Err(ReferenceError::ProjectNotAllowed)
        }
    }
}

/// The key that joins an outcome to the assessment created for the same interaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CorrelationKey(String);

/// Longest correlation key accepted.
pub const MAX_KEY_LEN: usize = 512;

impl CorrelationKey {
    pub fn parse(raw: &str) -> Result<Self, ReferenceError> {
        if raw.is_empty() {
            return Err(ReferenceError::Empty { what: "key" });
        }
        if raw.len() > MAX_KEY_LEN {
            return Err(ReferenceError::TooLong {
                what: "key",
                max: MAX_KEY_LEN,
            });
        }
        if raw.chars().any(char::is_control) {
            return Err(ReferenceError::UnsafeSegment { what: "key" });
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_name() {
        let name =
            AssessmentName::parse("projects/123456789/assessments/6ZZZZe73fZZZZZZ0").unwrap();
        assert_eq!(name.project(), "123456789");
        assert_eq!(
            name.as_str(),
            "projects/123456789/assessments/6ZZZZe73fZZZZZZ0"
        );
    }

    #[test]
    fn rejects_names_that_escape_the_path() {
        for raw in [
            "projects/p/assessments/../../v1/x",
            "projects/p/assessments/..",
            "projects/p/assessments/a?b",
            "projects/p/assessments/a#b",
            "projects/p/assessments/a%2Fb",
            "projects/p/assessments/%2F",
            "projects/p/assessments/a b",
            "projects/p/assessments/a\tb",
            "projects/p/assessments/a\u{0}b",
            "projects/p/assessments/a\\b",
            "projects/p/assessments/",
            "projects/p/assessments/a/b",
            "projects/p/assessments/a:annotate",
            "projects//assessments/a",
            "projects/p q/assessments/a",
            "project/p/assessments/a",
            "projects/p/assessment/a",
            "projects/p/assessments/é",
        ] {
            assert!(AssessmentName::parse(raw).is_err(), "{raw:?} accepted");
        }
    }

    #[test]
    fn bare_id_needs_a_project() {
        let project = ProjectRef::parse("my-project").unwrap();
        let name = resolve_inline("abc123", Some(&project)).unwrap();
        assert_eq!(name.as_str(), "projects/my-project/assessments/abc123");
        assert_eq!(
            resolve_inline("abc123", None),
            Err(ReferenceError::NoProject)
        );
        assert!(resolve_inline("a?b", Some(&project)).is_err());
    }

    #[test]
    fn waf_token_yields_the_last_16_characters() {
        let id = AssessmentId::from_waf_token("03AFcWeA66....:U=6ZZZZe73fZZZZZZ0").unwrap();
        assert_eq!(id.as_str(), "6ZZZZe73fZZZZZZ0");
        assert!(AssessmentId::from_waf_token("no-marker").is_err());
        assert!(AssessmentId::from_waf_token("x:U=short").is_err());
        assert!(AssessmentId::from_waf_token("x:U=6ZZZZe73fZZZZZ/0").is_err());
        // Google's own page writes the token without the colon.
        let id = AssessmentId::from_waf_token(".................U=6ZZZZe73fZZZZZZ0").unwrap();
        assert_eq!(id.as_str(), "6ZZZZe73fZZZZZZ0");
        for looser in [
            "U=6ZZZZe73fZZZZZZ0",
            "x:u=6ZZZZe73fZZZZZZ0",
            "x:U=6ZZZZe73fZZZZZZ0x",
            "x:U=6ZZZZe73fZZZZZZ",
            "xU-6ZZZZe73fZZZZZZ0",
            "x:U=6ZZZZe73fZZZZZé",
        ] {
            assert!(AssessmentId::from_waf_token(looser).is_err(), "{looser}");
        }
    }

    #[test]
    fn allow_list_matches_the_project_segment() {
        let list = ProjectAllowList::new(vec![ProjectRef::parse("123").unwrap()]);
        assert!(
            list.check(&AssessmentName::parse("projects/123/assessments/a").unwrap())
                .is_ok()
        );
        assert!(
            list.check(&AssessmentName::parse("projects/1234/assessments/a").unwrap())
                .is_err()
        );
        assert!(
            ProjectAllowList::default()
                .check(&AssessmentName::parse("projects/x/assessments/a").unwrap())
                .is_ok()
        );
    }
}
