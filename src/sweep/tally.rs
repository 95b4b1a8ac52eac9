//! Where stale uploads come from: counts (and bytes, when measured) by key prefix, so that a
//! report names the application that leaks them. Bounded: a listing with millions of distinct
//! prefixes keeps the first few thousand and lumps the rest together.

use std::collections::HashMap;

use serde::Serialize;

use crate::text;

/// Prefixes counted one by one; the rest go to [`PrefixTally::other`].
const MAX_PREFIXES: usize = 10_000;
/// Prefixes a report lists.
pub const TOP_PREFIXES: usize = 10;

/// Stale uploads (and their bytes) under one prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrefixCount {
    /// The key up to and including its `depth`-th `/` (the whole key when it has fewer), escaped
    /// and cut for showing; `(other prefixes)` for those past the tally's bound.
    pub prefix: String,
    pub uploads: u64,
    /// Bytes of those whose size was measured; `None` unless measuring.
    pub bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Count {
    uploads: u64,
    bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixTally {
    depth: usize,
    measuring: bool,
    counts: HashMap<String, Count>,
    other: Count,
}

impl PrefixTally {
    /// `depth`: how many `/`-separated levels make a prefix (at least 1).
    pub fn new(depth: usize, measuring: bool) -> Self {
        Self {
            depth: depth.max(1),
            measuring,
            counts: HashMap::new(),
            other: Count::default(),
        }
    }

    /// The prefix of `key` this tally counts it under.
    pub fn prefix_of<'k>(&self, key: &'k str) -> &'k str {
        match key.match_indices('/').nth(self.depth - 1) {
            Some((at, _)) => &key[..=at],
            None => key,
        }
    }

    /// Counts one stale upload.
    pub fn add_upload(&mut self, key: &str) {
        self.count_for(key).uploads += 1;
    }

    /// Adds the measured size of a stale upload already counted.
    pub fn add_bytes(&mut self, key: &str, bytes: u64) {
        let count = self.count_for(key);
        count.bytes = count.bytes.saturating_add(bytes);
    }

    fn count_for(&mut self, key: &str) -> &mut Count {
        let prefix = self.prefix_of(key);
        if !self.counts.contains_key(prefix) && self.counts.len() >= MAX_PREFIXES {
            return &mut self.other;
        }
        self.counts.entry(prefix.to_owned()).or_default()
    }

    /// Merges another bucket's tally, its prefixes shown under `label` (the bucket's name).
    pub fn merge_labelled(&mut self, other: &PrefixTally, label: &str) {
        for (prefix, count) in &other.counts {
            let key = format!("{label}/{prefix}");
            let merged = if self.counts.contains_key(&key) || self.counts.len() < MAX_PREFIXES {
                self.counts.entry(key).or_default()
            } else {
                &mut self.other
            };
            merged.uploads += count.uploads;
            merged.bytes = merged.bytes.saturating_add(count.bytes);
        }
        self.other.uploads += other.other.uploads;
        self.other.bytes = self.other.bytes.saturating_add(other.other.bytes);
    }

    /// The prefixes with the most stale uploads (most bytes, then name, breaking ties), shown
    /// escaped and cut.
    pub fn top(&self) -> Vec<PrefixCount> {
        let mut all: Vec<(&str, &Count)> = self
            .counts
            .iter()
            .map(|(prefix, count)| (prefix.as_str(), count))
            .collect();
        if self.other.uploads > 0 {
            all.push(("(other prefixes)", &self.other));
        }
        all.sort_by(|a, b| {
            b.1.uploads
                .cmp(&a.1.uploads)
                .then(b.1.bytes.cmp(&a.1.bytes))
                .then(a.0.cmp(b.0))
        });
        all.into_iter()
            .take(TOP_PREFIXES)
            .map(|(prefix, count)| PrefixCount {
                prefix: text::name(prefix).to_string(),
                uploads: count.uploads,
                bytes: self.measuring.then_some(count.bytes),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_cut_at_the_given_depth() {
        let one = PrefixTally::new(1, false);
        assert_eq!(one.prefix_of("logs/2026/11/a.bin"), "logs/");
        assert_eq!(one.prefix_of("flat-key"), "flat-key");
        let two = PrefixTally::new(2, false);
        assert_eq!(two.prefix_of("logs/2026/11/a.bin"), "logs/2026/");
        assert_eq!(two.prefix_of("logs/a.bin"), "logs/a.bin");
    }

    #[test]
    fn the_top_ten_are_ranked_by_uploads_then_bytes() {
        let mut tally = PrefixTally::new(1, true);
        for (prefix, n) in [("a/", 5), ("b/", 30), ("c/", 30), ("d/", 1)] {
            for i in 0..n {
                let key = format!("{prefix}{i}");
                tally.add_upload(&key);
                tally.add_bytes(&key, if prefix == "c/" { 10 } else { 1 });
            }
        }
        let top = tally.top();
        let order: Vec<&str> = top.iter().map(|p| p.prefix.as_str()).collect();
        assert_eq!(order, ["c/", "b/", "a/", "d/"]);
        assert_eq!(top[0].bytes, Some(300));
        for i in 0..20 {
            tally.add_upload(&format!("p{i}/x"));
        }
        assert_eq!(tally.top().len(), TOP_PREFIXES);
    }

    #[test]
    fn a_flood_of_prefixes_is_bounded() {
        let mut tally = PrefixTally::new(1, false);
        for i in 0..(MAX_PREFIXES + 500) {
            tally.add_upload(&format!("p{i}/key"));
        }
        for _ in 0..1000 {
            tally.add_upload("p99999999/key");
        }
        assert_eq!(tally.counts.len(), MAX_PREFIXES);
        let top = tally.top();
        assert_eq!(top[0].prefix, "(other prefixes)");
        assert_eq!(top[0].uploads, 1500);
        assert_eq!(top[0].bytes, None);
    }

    #[test]
    fn tallies_of_several_buckets_merge_under_their_names() {
        let mut one = PrefixTally::new(1, false);
        one.add_upload("logs/a");
        let mut all = PrefixTally::new(1, false);
        all.merge_labelled(&one, "b1");
        all.merge_labelled(&one, "b2");
        let names: Vec<String> = all.top().into_iter().map(|p| p.prefix).collect();
        assert_eq!(names, ["b1/logs/", "b2/logs/"]);
    }
}
