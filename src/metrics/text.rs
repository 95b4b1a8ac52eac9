//! The Prometheus text format, written as the prometheus crate's `TextEncoder` writes it, for
//! series kept outside that crate.

use std::fmt::Write;

/// A metric family's type, as its `# TYPE` line says it.
#[derive(Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Writes one family: its `# HELP` and `# TYPE` lines, then what `samples` writes. A family
/// that has no sample is left out entirely, as the prometheus crate leaves out a vector
/// without children.
pub fn family(
    out: &mut String,
    name: &str,
    help: &str,
    kind: Kind,
    samples: impl FnOnce(&mut String),
) {
    let start = out.len();
    let _ = writeln!(out, "# HELP {name} {}", escape(help, false));
    let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
    let header_end = out.len();
    samples(out);
    if out.len() == header_end {
        out.truncate(start);
    }
}

/// Writes one sample line: `name{label="value",...} value`.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl ToString) {
    out.push_str(name);
    let mut separator = '{';
    for (label, value) in labels {
        out.push(separator);
        out.push_str(label);
        out.push_str("=\"");
        out.push_str(&escape(value, true));
        out.push('"');
        separator = ',';
    }
    if !labels.is_empty() {
        out.push('}');
    }
    out.push(' ');
    out.push_str(&value.to_string());
    out.push('\n');
}

/// The text format's escapes: `\` and newlines, and `"` in label values.
fn escape(text: &str, in_label: bool) -> std::borrow::Cow<'_, str> {
    let special = |c: char| c == '\\' || c == '\n' || (in_label && c == '"');
    if !text.contains(special) {
        return text.into();
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            c if special(c) => {
                escaped.push('\\');
                escaped.push(c);
            }
            c => escaped.push(c),
        }
    }
    escaped.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_empty_families_left_out() {
        let mut out = String::new();
        family(&mut out, "empty", "Nothing.", Kind::Gauge, |_| {});
        assert_eq!(out, "");
        family(&mut out, "m", "Help \\ me.", Kind::Counter, |out| {
            sample(out, "m", &[("a", "x\"y\\z\nw")], 3);
            sample(out, "m", &[], 1.5);
        });
        assert_eq!(
            out,
            "# HELP m Help \\\\ me.\n# TYPE m counter\nm{a=\"x\\\"y\\\\z\\nw\"} 3\nm 1.5\n"
        );
    }
}
