//! Which buckets a run sweeps: named ones, or those of the credential's own (ListBuckets) whose
//! names match `include` and not `exclude` patterns.

use aws_sdk_s3::Client;

use super::error::{S3Error, S3ErrorKind};
use super::requests::{Lane, Requests};

/// Buckets a credential may list before the listing is taken for one that never ends (AWS
/// allows 10,000 per account by default; 1,000 per page).
pub const MAX_LISTED_BUCKETS: usize = 100_000;

/// Which buckets to sweep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketSelection {
    /// Buckets swept by name, whether or not the credential may list them.
    pub names: Vec<String>,
    /// Patterns (`*` any run of characters, `?` one) of the credential's buckets to sweep; when
    /// set, the buckets come from ListBuckets.
    pub include: Vec<String>,
    /// Patterns of buckets not to sweep, among the named and the included.
    pub exclude: Vec<String>,
}

impl BucketSelection {
    pub fn one(bucket: impl Into<String>) -> Self {
        Self {
            names: vec![bucket.into()],
            ..Self::default()
        }
    }

    /// Every bucket the credential can list.
    pub fn all() -> Self {
        Self {
            include: vec!["*".into()],
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.names.is_empty() && self.include.is_empty() {
            return Err("no bucket selected: name buckets, or include patterns".into());
        }
        if let Some(empty) = self.names.iter().find(|n| n.trim().is_empty()) {
            return Err(format!("bucket name {empty:?} is empty"));
        }
        Ok(())
    }

    pub fn lists_buckets(&self) -> bool {
        !self.include.is_empty()
    }

    /// The buckets to sweep, in name order, each once. `listed` is what ListBuckets gave (empty
    /// unless [`Self::lists_buckets`]).
    pub fn choose(&self, listed: &[String]) -> Vec<String> {
        let included = listed
            .iter()
            .filter(|b| self.include.iter().any(|p| glob_matches(p, b)));
        let mut chosen: Vec<String> = self
            .names
            .iter()
            .chain(included)
            .filter(|b| !self.exclude.iter().any(|p| glob_matches(p, b)))
            .cloned()
            .collect();
        chosen.sort();
        chosen.dedup();
        chosen
    }
}

/// `*` matches any run of characters (also none), `?` any one; the rest matches itself.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // Classic two-pointer matching with backtracking to the last `*`: linear in practice,
    // never exponential.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some('?') => {
                p += 1;
                n += 1;
            }
            Some(c) if *c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// The names of the credential's buckets (ListBuckets, following its pages).
pub async fn list_buckets(client: &Client, requests: &Requests) -> Result<Vec<String>, S3Error> {
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let output = requests
            .send(Lane::Listing, || async {
                client
                    .list_buckets()
                    .set_continuation_token(token.clone())
                    .send()
                    .await
                    .map_err(|e| S3Error::from_sdk(&e))
            })
            .await
            .result?;
        names.extend(
            output
                .buckets()
                .iter()
                .filter_map(|b| b.name().map(str::to_owned)),
        );
        if names.len() > MAX_LISTED_BUCKETS {
            return Err(S3Error::new(
                S3ErrorKind::Other,
                None,
                format!("the server listed more than {MAX_LISTED_BUCKETS} buckets; stopping"),
            ));
        }
        let next = output
            .continuation_token()
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        if next.is_none() || next == token {
            return Ok(names);
        }
        token = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_stars_and_question_marks() {
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("logs-*", "logs-2026"));
        assert!(!glob_matches("logs-*", "mylogs-2026"));
        assert!(glob_matches("*-tmp", "scratch-tmp"));
        assert!(glob_matches("team-?-*", "team-a-data"));
        assert!(!glob_matches("team-?-*", "team-ab-data"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
        // No blow-up on patterns that backtrack a lot.
        let long = "a".repeat(10_000);
        assert!(!glob_matches("*a*a*a*a*a*a*a*b", &long));
    }

    #[test]
    fn names_and_patterns_choose_sorted_unique_buckets() {
        let listed: Vec<String> = ["logs-1", "logs-2", "data", "logs-tmp"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let selection = BucketSelection {
            names: vec!["named".into(), "logs-1".into()],
            include: vec!["logs-*".into()],
            exclude: vec!["*-tmp".into()],
        };
        assert_eq!(selection.choose(&listed), ["logs-1", "logs-2", "named"]);
        assert_eq!(BucketSelection::all().choose(&listed).len(), 4);
        assert!(BucketSelection::default().validate().is_err());
        assert!(BucketSelection::one(" ").validate().is_err());
        assert!(BucketSelection::one("b").validate().is_ok());
    }
}
