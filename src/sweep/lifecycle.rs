//! Prevention: the bucket's own `AbortIncompleteMultipartUpload` lifecycle rule. Report reads it;
//! Ensure adds or updates one rule of ours and keeps every other rule as it was. Servers differ
//! (some reject the action, some answer 200 and drop it), so a written configuration is always
//! read back before it counts, and a write that would lose a rule someone else added between our
//! read and our write is caught by reading back too.

use aws_sdk_s3::Client;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, ExpirationStatus, LifecycleRule,
    LifecycleRuleFilter,
};
use serde::Serialize;

use super::error::{S3Error, S3ErrorKind};
use super::requests::{Lane, Requests};

/// The ID of the one rule mpu-sweeper writes.
pub const RULE_ID: &str = "mpu-sweeper-abort-incomplete";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LifecycleMode {
    /// Read the configuration and say whether a rule covers the uploads swept.
    Report,
    /// Also add or update our rule when none does.
    Ensure,
}

/// What the run does about the bucket's lifecycle rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleGoal {
    pub mode: LifecycleMode,
    pub days_after_initiation: i32,
}

/// What a bucket's lifecycle configuration says about incomplete uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LifecycleState {
    /// An enabled rule covers the swept uploads (its days are in the report).
    Present,
    /// Our rule was written and read back.
    Applied,
    /// No enabled rule covers them (Report mode, or Ensure could not write one).
    Missing,
    /// The server does not support the rule (it refused it, or dropped it silently).
    Unsupported,
    /// The credentials may not read or write the lifecycle configuration.
    Denied,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleReport {
    pub state: LifecycleState,
    /// The days of the rule that covers the uploads, when one does.
    pub days_after_initiation: Option<i32>,
    pub message: String,
}

impl LifecycleReport {
    fn new(state: LifecycleState, days: Option<i32>, message: impl Into<String>) -> Self {
        Self {
            state,
            days_after_initiation: days,
            message: message.into(),
        }
    }
}

/// Reads (and with Ensure, writes and reads back) the lifecycle rule of `bucket` for uploads
/// under `prefix`.
pub async fn lifecycle_rule(
    client: &Client,
    requests: &Requests,
    bucket: &str,
    prefix: Option<&str>,
    goal: &LifecycleGoal,
) -> LifecycleReport {
    let prefix = prefix.unwrap_or("");
    let rules = match read_rules(client, requests, bucket).await {
        Ok(rules) => rules,
        Err(err) => return failure_report(&err, "read"),
    };
    let ours_differs = rules
        .iter()
        .find(|r| r.id() == Some(RULE_ID))
        .is_some_and(|ours| !is_as_wanted(ours, prefix, goal.days_after_initiation));
    if goal.mode == LifecycleMode::Ensure && ours_differs {
        return ensure(
            client,
            requests,
            bucket,
            prefix,
            goal.days_after_initiation,
            rules,
        )
        .await;
    }
    if let Some(days) = covering_days(&rules, prefix) {
        return LifecycleReport::new(
            LifecycleState::Present,
            Some(days),
            format!("an enabled rule aborts incomplete uploads after {days} days"),
        );
    }
    if goal.mode == LifecycleMode::Report {
        return LifecycleReport::new(
            LifecycleState::Missing,
            None,
            "no enabled AbortIncompleteMultipartUpload rule covers these uploads",
        );
    }
    ensure(
        client,
        requests,
        bucket,
        prefix,
        goal.days_after_initiation,
        rules,
    )
    .await
}

async fn ensure(
    client: &Client,
    requests: &Requests,
    bucket: &str,
    prefix: &str,
    days: i32,
    before: Vec<LifecycleRule>,
) -> LifecycleReport {
    let others: Vec<LifecycleRule> = before
        .iter()
        .filter(|r| r.id() != Some(RULE_ID))
        .cloned()
        .collect();
    let mut wanted = others.clone();
    wanted.push(our_rule(prefix, days));
    if let Err(err) = write_rules(client, requests, bucket, wanted).await {
        return failure_report(&err, "write");
    }
    let after = match read_rules(client, requests, bucket).await {
        Ok(rules) => rules,
        Err(err) => return failure_report(&err, "read back"),
    };
    let after_others: Vec<&LifecycleRule> =
        after.iter().filter(|r| r.id() != Some(RULE_ID)).collect();
    if after_others != others.iter().collect::<Vec<_>>() {
        return LifecycleReport::new(
            LifecycleState::Failed,
            None,
            "after our write the bucket's other rules differ from what we read: another writer changed the configuration meanwhile (or the server rewrote it); check it by hand",
        );
    }
    match covering_days(&after, prefix) {
        Some(read_back) if read_back == days => LifecycleReport::new(
            LifecycleState::Applied,
            Some(days),
            format!(
                "rule {RULE_ID} written and read back: incomplete uploads are aborted after {days} days"
            ),
        ),
        _ => LifecycleReport::new(
            LifecycleState::Unsupported,
            None,
            "the server accepted the rule but does not keep it (it is missing when read back)",
        ),
    }
}

/// Whether our rule says what the goal asks for, however the server wrote it back.
fn is_as_wanted(rule: &LifecycleRule, prefix: &str, days: i32) -> bool {
    rule.status() == &ExpirationStatus::Enabled
        && rule_prefix(rule) == Some(prefix)
        && rule
            .abort_incomplete_multipart_upload()
            .and_then(|a| a.days_after_initiation())
            == Some(days)
}

fn our_rule(prefix: &str, days: i32) -> LifecycleRule {
    LifecycleRule::builder()
        .id(RULE_ID)
        .status(ExpirationStatus::Enabled)
        // The prefix goes in Filter, not the legacy Rule/Prefix, which some servers reject.
        .filter(LifecycleRuleFilter::builder().prefix(prefix).build())
        .abort_incomplete_multipart_upload(
            AbortIncompleteMultipartUpload::builder()
                .days_after_initiation(days)
                .build(),
        )
        .build()
        .expect("status is set")
}

/// The days of an enabled rule that aborts incomplete uploads of every key under `prefix`: its
/// filter is empty or only a prefix that `prefix` starts with (a rule that also filters on tags
/// or sizes does not cover every upload).
pub fn covering_days(rules: &[LifecycleRule], prefix: &str) -> Option<i32> {
    rules
        .iter()
        .filter(|rule| rule.status() == &ExpirationStatus::Enabled)
        .filter(|rule| rule_prefix(rule).is_some_and(|p| prefix.starts_with(p)))
        .filter_map(|rule| {
            rule.abort_incomplete_multipart_upload()?
                .days_after_initiation()
        })
        .min()
}

/// The one prefix a rule applies to, or `None` when it filters on more than a prefix.
#[allow(
    deprecated,
    reason = "servers still send the legacy Rule/Prefix; it must be read"
)]
fn rule_prefix(rule: &LifecycleRule) -> Option<&str> {
    match rule.filter() {
        None => Some(rule.prefix().unwrap_or("")),
        Some(filter) => {
            let only_prefix = filter.tag().is_none()
                && filter.and().is_none()
                && filter.object_size_greater_than().is_none()
                && filter.object_size_less_than().is_none();
            only_prefix.then(|| filter.prefix().unwrap_or(""))
        }
    }
}

/// The bucket's rules; none when it has no lifecycle configuration.
async fn read_rules(
    client: &Client,
    requests: &Requests,
    bucket: &str,
) -> Result<Vec<LifecycleRule>, S3Error> {
    let sent = requests
        .send(Lane::Listing, || async {
            client
                .get_bucket_lifecycle_configuration()
                .bucket(bucket)
                .send()
                .await
                .map_err(|e| S3Error::from_sdk(&e))
        })
        .await;
    match sent.result {
        Ok(output) => Ok(output.rules().to_vec()),
        Err(err) if err.code.as_deref() == Some("NoSuchLifecycleConfiguration") => Ok(Vec::new()),
        Err(err) => Err(err),
    }
}

async fn write_rules(
    client: &Client,
    requests: &Requests,
    bucket: &str,
    rules: Vec<LifecycleRule>,
) -> Result<(), S3Error> {
    let configuration = BucketLifecycleConfiguration::builder()
        .set_rules(Some(rules))
        .build()
        .map_err(|e| S3Error::new(S3ErrorKind::Other, None, e.to_string()))?;
    requests
        .send(Lane::Listing, || async {
            client
                .put_bucket_lifecycle_configuration()
                .bucket(bucket)
                .lifecycle_configuration(configuration.clone())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| S3Error::from_sdk(&e))
        })
        .await
        .result
}

fn failure_report(err: &S3Error, doing: &str) -> LifecycleReport {
    let unsupported = matches!(
        err.code.as_deref(),
        Some("NotImplemented" | "MethodNotAllowed" | "UnsupportedOperation")
    ) || matches!(err.status, Some(405 | 501))
        || (doing == "write" && err.code.as_deref() == Some("MalformedXML"));
    let state = if unsupported {
        LifecycleState::Unsupported
    } else if err.kind == S3ErrorKind::AccessDenied {
        LifecycleState::Denied
    } else {
        LifecycleState::Failed
    };
    LifecycleReport::new(
        state,
        None,
        format!("could not {doing} the lifecycle configuration: {err}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::types::{LifecycleExpiration, Tag};

    fn abort_rule(id: &str, prefix: Option<&str>, days: i32, enabled: bool) -> LifecycleRule {
        let mut rule = LifecycleRule::builder()
            .id(id)
            .status(if enabled {
                ExpirationStatus::Enabled
            } else {
                ExpirationStatus::Disabled
            })
            .abort_incomplete_multipart_upload(
                AbortIncompleteMultipartUpload::builder()
                    .days_after_initiation(days)
                    .build(),
            );
        if let Some(prefix) = prefix {
            rule = rule.filter(LifecycleRuleFilter::builder().prefix(prefix).build());
        }
        rule.build().unwrap()
    }

    #[test]
    fn a_rule_covers_the_uploads_when_its_prefix_contains_theirs() {
        let rules = vec![abort_rule("logs", Some("logs/"), 3, true)];
        assert_eq!(covering_days(&rules, "logs/2026/"), Some(3));
        assert_eq!(covering_days(&rules, "logs/"), Some(3));
        assert_eq!(
            covering_days(&rules, ""),
            None,
            "the whole bucket is not covered"
        );
        assert_eq!(covering_days(&rules, "data/"), None);
        let whole = vec![
            abort_rule("all", None, 7, true),
            abort_rule("x", Some(""), 2, true),
        ];
        assert_eq!(
            covering_days(&whole, "anything/"),
            Some(2),
            "the shortest wins"
        );
    }

    #[test]
    fn disabled_tagged_or_other_rules_do_not_cover() {
        let disabled = vec![abort_rule("off", None, 3, false)];
        assert_eq!(covering_days(&disabled, ""), None);
        let tagged = LifecycleRule::builder()
            .id("tagged")
            .status(ExpirationStatus::Enabled)
            .filter(
                LifecycleRuleFilter::builder()
                    .tag(Tag::builder().key("k").value("v").build().unwrap())
                    .build(),
            )
            .abort_incomplete_multipart_upload(
                AbortIncompleteMultipartUpload::builder()
                    .days_after_initiation(1)
                    .build(),
            )
            .build()
            .unwrap();
        assert_eq!(covering_days(&[tagged], ""), None);
        let expiration = LifecycleRule::builder()
            .id("expire")
            .status(ExpirationStatus::Enabled)
            .expiration(LifecycleExpiration::builder().days(30).build())
            .build()
            .unwrap();
        assert_eq!(covering_days(&[expiration], ""), None);
    }

    #[test]
    #[allow(deprecated, reason = "checks that the legacy Rule/Prefix stays unset")]
    fn our_rule_puts_the_prefix_in_the_filter() {
        let rule = our_rule("ckpt/", 2);
        assert_eq!(rule.id(), Some(RULE_ID));
        assert_eq!(rule.prefix(), None);
        assert_eq!(rule.filter().and_then(|f| f.prefix()), Some("ckpt/"));
        assert!(is_as_wanted(&rule, "ckpt/", 2));
        assert!(!is_as_wanted(&rule, "ckpt/", 3));
        assert!(!is_as_wanted(&rule, "", 2));
        assert_eq!(covering_days(&[rule], "ckpt/x"), Some(2));
    }

    #[test]
    fn failures_are_told_apart() {
        let err = |status, code: &str| {
            let mut e = S3Error::new(
                if status == 403 {
                    S3ErrorKind::AccessDenied
                } else {
                    S3ErrorKind::Other
                },
                Some(code.into()),
                "x",
            );
            e.status = Some(status);
            e
        };
        assert_eq!(
            failure_report(&err(403, "AccessDenied"), "read").state,
            LifecycleState::Denied
        );
        assert_eq!(
            failure_report(&err(501, "NotImplemented"), "write").state,
            LifecycleState::Unsupported
        );
        assert_eq!(
            failure_report(&err(400, "MalformedXML"), "write").state,
            LifecycleState::Unsupported
        );
        assert_eq!(
            failure_report(&err(400, "InvalidArgument"), "read").state,
            LifecycleState::Failed
        );
    }
}
