//! Every reason the controller gives in the Ready condition (and Events), in one place: what it
//! means for kstatus, and whether only a change by the user can help.

use std::fmt;

/// The reason of the Ready condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The last run handled every stale upload.
    Succeeded,
    /// A sweep is under way.
    Running,
    /// A sweep is due and waits for a sweep slot.
    Queued,
    Suspended,
    InvalidSpec,
    SecretNotFound,
    SecretInvalid,
    SecretUnreadable,
    /// The Secret does not carry the labels the operator requires of tenants' credentials.
    SecretNotAllowed,
    CABundleInvalid,
    /// The endpoint is outside what the operator allows (a denied address, not allowed host,
    /// plain HTTP where HTTPS is required); no connection was made.
    EndpointForbidden,
    CredentialsRejected,
    AccessDenied,
    BucketNotFound,
    EndpointUnreachable,
    ListingFailed,
    AbortsFailed,
    /// Some buckets of a run over several could not be swept; the others were.
    BucketsFailed,
    DeadlineExceeded,
    /// The run was cut short (shutdown, a change to the resource) or lost with its controller.
    Interrupted,
}

impl Reason {
    /// Every reason, for checks that the documentation and the Argo CD health check know them.
    pub const ALL: [Reason; 20] = [
        Reason::Succeeded,
        Reason::Running,
        Reason::Queued,
        Reason::Suspended,
        Reason::InvalidSpec,
        Reason::SecretNotFound,
        Reason::SecretInvalid,
        Reason::SecretUnreadable,
        Reason::SecretNotAllowed,
        Reason::CABundleInvalid,
        Reason::EndpointForbidden,
        Reason::CredentialsRejected,
        Reason::AccessDenied,
        Reason::BucketNotFound,
        Reason::EndpointUnreachable,
        Reason::ListingFailed,
        Reason::AbortsFailed,
        Reason::BucketsFailed,
        Reason::DeadlineExceeded,
        Reason::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Succeeded => "Succeeded",
            Reason::Running => "Running",
            Reason::Queued => "Queued",
            Reason::Suspended => "Suspended",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::SecretInvalid => "SecretInvalid",
            Reason::SecretUnreadable => "SecretUnreadable",
            Reason::SecretNotAllowed => "SecretNotAllowed",
            Reason::CABundleInvalid => "CABundleInvalid",
            Reason::EndpointForbidden => "EndpointForbidden",
            Reason::CredentialsRejected => "CredentialsRejected",
            Reason::AccessDenied => "AccessDenied",
            Reason::BucketNotFound => "BucketNotFound",
            Reason::EndpointUnreachable => "EndpointUnreachable",
            Reason::ListingFailed => "ListingFailed",
            Reason::AbortsFailed => "AbortsFailed",
            Reason::BucketsFailed => "BucketsFailed",
            Reason::DeadlineExceeded => "DeadlineExceeded",
            Reason::Interrupted => "Interrupted",
        }
    }

    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Whether only a change to the spec, a Secret or the operator's settings can help
    /// (kstatus Stalled); the controller still retries with backoff where the outside may change.
    pub fn stalled(self) -> bool {
        matches!(
            self,
            Reason::InvalidSpec
                | Reason::SecretNotFound
                | Reason::SecretInvalid
                | Reason::SecretNotAllowed
                | Reason::CABundleInvalid
                | Reason::EndpointForbidden
                | Reason::CredentialsRejected
                | Reason::AccessDenied
                | Reason::BucketNotFound
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_and_is_listed_once() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
        }
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
        assert_eq!(Reason::parse("Bogus"), None);
    }

    #[test]
    fn the_argo_cd_health_check_names_only_these_reasons() {
        let script = include_str!("../../deploy/argocd/health.lua");
        let named: Vec<&str> = script
            .split("reason == \"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap())
            .collect();
        assert!(!named.is_empty());
        for reason in named {
            assert!(
                Reason::parse(reason).is_some(),
                "health.lua names {reason:?}"
            );
        }
    }
}
