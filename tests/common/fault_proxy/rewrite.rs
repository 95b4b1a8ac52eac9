//! Small string-based XML work on S3 answers: error bodies, and rewrites of a
//! ListMultipartUploadsResult. It only has to handle what Ceph RGW and SeaweedFS send: no
//! attributes on the elements it edits, and empty elements written as `<X></X>` or `<X/>`.

use std::fmt::Write as _;
use std::ops::Range;

const LISTING_ROOT: &str = "ListMultipartUploadsResult";

/// Escapes text for XML; every character outside printable ASCII becomes a character reference
/// (`&#x1B;`), so control characters and bidi overrides survive any transport.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            ' '..='~' => out.push(c),
            _ => {
                let _ = write!(out, "&#x{:X};", u32::from(c));
            }
        }
    }
    out
}

/// Resolves the five named entities and character references; anything else is kept as is.
pub fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let resolved = rest
            .find(';')
            .and_then(|semi| Some((entity(&rest[1..semi])?, semi)));
        match resolved {
            Some((c, semi)) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn entity(name: &str) -> Option<char> {
    let code = match name {
        "amp" => return Some('&'),
        "lt" => return Some('<'),
        "gt" => return Some('>'),
        "quot" => return Some('"'),
        "apos" => return Some('\''),
        _ => match name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => name.strip_prefix('#')?.parse().ok()?,
        },
    };
    char::from_u32(code)
}

/// An S3 error document; no code and no message give an empty body. `message_bytes` pads the
/// message (before escaping) to that many bytes.
pub fn error_body(
    code: Option<&str>,
    message: Option<&str>,
    message_bytes: Option<usize>,
    request_id: &str,
) -> String {
    if code.is_none() && message.is_none() && message_bytes.is_none() {
        return String::new();
    }
    let mut message = message.unwrap_or_default().to_owned();
    if let Some(bytes) = message_bytes {
        let padding = bytes.saturating_sub(message.len());
        message.extend(std::iter::repeat_n('x', padding));
    }
    let code = code.map(|c| format!("<Code>{}</Code>", escape(c)));
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>{}<Message>{}</Message><RequestId>{}</RequestId></Error>",
        code.unwrap_or_default(),
        escape(&message),
        escape(request_id),
    )
}

/// Where an element is: the whole of it and its content (`None` for `<X/>`).
#[derive(Debug, Clone, PartialEq)]
struct Element {
    whole: Range<usize>,
    content: Option<Range<usize>>,
}

/// The first `<name>` element starting in `xml[from..]`.
fn find_element(xml: &str, name: &str, from: usize) -> Option<Element> {
    let open = format!("<{name}");
    let mut search = from;
    loop {
        let start = search + xml.get(search..)?.find(&open)?;
        let after_name = start + open.len();
        search = after_name;
        // `<Upload` must not match `<UploadId>`.
        let next = xml[after_name..].chars().next()?;
        if !(next == '>' || next == '/' || next.is_ascii_whitespace()) {
            continue;
        }
        let tag_end = after_name + xml[after_name..].find('>')? + 1;
        if xml[..tag_end].ends_with("/>") {
            return Some(Element {
                whole: start..tag_end,
                content: None,
            });
        }
        let close = format!("</{name}>");
        let close_start = tag_end + xml[tag_end..].find(&close)?;
        return Some(Element {
            whole: start..close_start + close.len(),
            content: Some(tag_end..close_start),
        });
    }
}

fn content<'a>(xml: &'a str, element: &Element) -> &'a str {
    element.content.clone().map_or("", |range| &xml[range])
}

/// Sets the (already escaped) text of element `name`, inserting it at `insert_at` when absent.
fn set_element(xml: &str, name: &str, escaped: &str, insert_at: usize) -> String {
    let element = format!("<{name}>{escaped}</{name}>");
    let span = find_element(xml, name, 0).map_or(insert_at..insert_at, |e| e.whole);
    let mut out = String::with_capacity(xml.len() + element.len());
    out.push_str(&xml[..span.start]);
    out.push_str(&element);
    out.push_str(&xml[span.end..]);
    out
}

/// Where a listing's first child goes: just after the root's opening tag; `None` when the
/// document is not a ListMultipartUploadsResult.
fn after_listing_root(xml: &str) -> Option<usize> {
    let root = find_element(xml, LISTING_ROOT, 0)?;
    Some(root.whole.start + xml[root.whole.start..].find('>')? + 1)
}

/// Marks a listing page truncated with the given next markers; `None` if it is no listing.
pub fn set_markers(xml: &str, key_marker: &str, upload_id_marker: &str) -> Option<String> {
    let start = after_listing_root(xml)?;
    let xml = set_element(xml, "IsTruncated", "true", start);
    let xml = set_element(&xml, "NextKeyMarker", &escape(key_marker), start);
    Some(set_element(
        &xml,
        "NextUploadIdMarker",
        &escape(upload_id_marker),
        start,
    ))
}

/// Applies `edit` to the content of every `<Upload>` whose key starts with `key_prefix`.
fn edit_uploads(xml: &str, key_prefix: &str, edit: impl Fn(&str) -> String) -> Option<String> {
    after_listing_root(xml)?;
    let mut out = String::with_capacity(xml.len());
    let mut copied = 0;
    while let Some(upload) = find_element(xml, "Upload", copied) {
        let Some(inner) = upload.content.clone() else {
            break;
        };
        let block = &xml[inner.clone()];
        let key = find_element(block, "Key", 0).map(|k| unescape(content(block, &k)));
        out.push_str(&xml[copied..inner.start]);
        match key {
            Some(key) if key.starts_with(key_prefix) => out.push_str(&edit(block)),
            _ => out.push_str(block),
        }
        copied = inner.end;
    }
    out.push_str(&xml[copied..]);
    Some(out)
}

/// Sets the `<Initiated>` of the listed uploads under `key_prefix`, or removes it (`None`).
pub fn set_initiated(xml: &str, key_prefix: &str, value: Option<&str>) -> Option<String> {
    edit_uploads(xml, key_prefix, |block| match value {
        Some(value) => set_element(block, "Initiated", &escape(value), block.len()),
        None => match find_element(block, "Initiated", 0) {
            Some(e) => format!("{}{}", &block[..e.whole.start], &block[e.whole.end..]),
            None => block.to_owned(),
        },
    })
}

/// Appends text to the key and upload ID of the listed uploads under `key_prefix`.
pub fn inject(
    xml: &str,
    key_prefix: &str,
    key_suffix: Option<&str>,
    upload_id_suffix: Option<&str>,
) -> Option<String> {
    edit_uploads(xml, key_prefix, |block| {
        let block = append_to(block, "Key", key_suffix);
        append_to(&block, "UploadId", upload_id_suffix)
    })
}

fn append_to(block: &str, name: &str, suffix: Option<&str>) -> String {
    let (Some(suffix), Some(element)) = (suffix, find_element(block, name, 0)) else {
        return block.to_owned();
    };
    let text = format!("{}{}", content(block, &element), escape(suffix));
    set_element(block, name, &text, block.len())
}

/// The pieces of a generated ListMultipartUploadsResult: every upload entry has the same length,
/// so the total is known before the first byte is sent.
pub struct GeneratedListing {
    head: String,
    tail: &'static str,
    digits: usize,
    entry_len: usize,
    pub entries: u64,
}

impl GeneratedListing {
    const KEY_PREFIX: &'static str = "huge/";
    const INITIATED: &'static str = "2020-01-01T00:00:00.000Z";

    /// About `bytes` bytes of listing for `bucket` (at least the head, the tail and one entry).
    pub fn new(bucket: &str, bytes: u64) -> Self {
        let head = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{LISTING_ROOT} xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>{}</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker><MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>",
            escape(bucket)
        );
        let tail = "</ListMultipartUploadsResult>";
        let fixed = (head.len() + tail.len()) as u64;
        let mut listing = Self {
            head,
            tail,
            digits: 9,
            entry_len: 0,
            entries: 0,
        };
        // Wider numbers make longer entries; a second pass settles the width.
        for _ in 0..2 {
            listing.entry_len = listing.entry(1).len();
            listing.entries = (bytes.saturating_sub(fixed) / listing.entry_len as u64).max(1);
            listing.digits = listing.entries.to_string().len().max(9);
        }
        listing.entry_len = listing.entry(1).len();
        listing
    }

    pub fn total_len(&self) -> u64 {
        (self.head.len() + self.tail.len()) as u64 + self.entries * self.entry_len as u64
    }

    pub fn head(&self) -> &str {
        &self.head
    }

    pub fn tail(&self) -> &'static str {
        self.tail
    }

    /// Entry `number` (from 1): `huge/000000001` and its upload ID.
    pub fn entry(&self, number: u64) -> String {
        let width = self.digits;
        format!(
            "<Upload><Key>{}{number:0width$}</Key><UploadId>huge-upload-{number:0width$}</UploadId><Initiator><ID>fault-proxy</ID><DisplayName>fault-proxy</DisplayName></Initiator><Owner><ID>fault-proxy</ID><DisplayName>fault-proxy</DisplayName></Owner><StorageClass>STANDARD</StorageClass><Initiated>{}</Initiated></Upload>",
            Self::KEY_PREFIX,
            Self::INITIATED,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real pages, trimmed: Ceph RGW 16.2 (next markers present) and SeaweedFS 4.48 (none, and
    // `<Initiated>` before `<Key>`).
    const CEPH: &str = r#"<?xml version="1.0" encoding="UTF-8"?><ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket><NextKeyMarker>b/2</NextKeyMarker><NextUploadIdMarker>2~y</NextUploadIdMarker><MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated><Upload><Key>a/1&amp;</Key><UploadId>2~x</UploadId><Initiator><ID>t</ID><DisplayName>t</DisplayName></Initiator><Owner><ID>t</ID><DisplayName>t</DisplayName></Owner><StorageClass>STANDARD</StorageClass><Initiated>2026-11-27T20:22:42.447Z</Initiated></Upload><Upload><Key>b/2</Key><UploadId>2~y</UploadId><Initiator><ID>t</ID><DisplayName>t</DisplayName></Initiator><Owner><ID>t</ID><DisplayName>t</DisplayName></Owner><StorageClass>STANDARD</StorageClass><Initiated>2026-11-27T20:22:42.450Z</Initiated></Upload></ListMultipartUploadsResult>"#;
    const SEAWEED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket><Delimiter></Delimiter><EncodingType></EncodingType><IsTruncated>false</IsTruncated><KeyMarker>~a</KeyMarker><MaxUploads>10000</MaxUploads><Prefix></Prefix><Upload><Initiated>2026-11-27T20:22:42Z</Initiated><Key>m/0</Key><UploadId>096fa6_0b830d</UploadId></Upload></ListMultipartUploadsResult>"#;

    #[test]
    fn markers_are_replaced_or_inserted() {
        let ceph = set_markers(CEPH, "~a<", "~b").unwrap();
        assert!(
            ceph.contains("<NextKeyMarker>~a&lt;</NextKeyMarker>"),
            "{ceph}"
        );
        assert!(ceph.contains("<NextUploadIdMarker>~b</NextUploadIdMarker>"));
        assert!(ceph.contains("<IsTruncated>true</IsTruncated>") && !ceph.contains("false"));
        let seaweed = set_markers(SEAWEED, "~a", "~b").unwrap();
        assert!(
            seaweed.contains("<NextKeyMarker>~a</NextKeyMarker>"),
            "{seaweed}"
        );
        assert!(seaweed.contains("<NextUploadIdMarker>~b</NextUploadIdMarker>"));
        assert!(seaweed.contains("<IsTruncated>true</IsTruncated><KeyMarker>~a</KeyMarker>"));
        let empty = "<ListMultipartUploadsResult><IsTruncated/><NextKeyMarker/></ListMultipartUploadsResult>";
        let filled = set_markers(empty, "k", "u").unwrap();
        assert!(
            filled.contains("<IsTruncated>true</IsTruncated>"),
            "{filled}"
        );
        assert!(
            filled.contains("<NextKeyMarker>k</NextKeyMarker>"),
            "{filled}"
        );
        assert_eq!(set_markers("<Error></Error>", "a", "b"), None);
    }

    #[test]
    fn uploads_under_a_prefix_are_edited_and_others_kept() {
        let epoch = set_initiated(CEPH, "a/", Some("1970-01-01T00:00:00.000Z")).unwrap();
        assert_eq!(epoch.matches("1970-01-01").count(), 1, "{epoch}");
        let removed = set_initiated(CEPH, "", None).unwrap();
        assert!(!removed.contains("Initiated"), "{removed}");
        let seaweed = set_initiated(SEAWEED, "m/", Some("1970-01-01T00:00:00Z")).unwrap();
        assert!(seaweed.contains("<Upload><Initiated>1970-01-01T00:00:00Z</Initiated><Key>m/0"));
        let injected = inject(CEPH, "a/1&", Some("\u{1b}[31m\u{7}\u{202e}"), Some("\r")).unwrap();
        assert!(
            injected.contains("<Key>a/1&amp;&#x1B;[31m&#x7;&#x202E;</Key>"),
            "{injected}"
        );
        assert!(injected.contains("<UploadId>2~x&#xD;</UploadId>"));
        assert!(injected.contains("<Key>b/2</Key><UploadId>2~y</UploadId>"));
        assert_eq!(unescape("a&amp;&#x1B;&#65;&bogus;&"), "a&\u{1b}A&bogus;&");
    }

    #[test]
    fn generated_listing_has_the_announced_length() {
        let listing = GeneratedListing::new("b", 100_000);
        let body: String = std::iter::once(listing.head().to_owned())
            .chain((1..=listing.entries).map(|n| listing.entry(n)))
            .chain(std::iter::once(listing.tail().to_owned()))
            .collect();
        assert_eq!(body.len() as u64, listing.total_len());
        assert!(listing.total_len() <= 100_000 && listing.total_len() > 99_000);
        assert!(body.contains("<Key>huge/000000001</Key>"));
        assert_eq!(error_body(None, None, None, "r"), "");
        let big = error_body(Some("SlowDown"), Some("m<"), Some(10), "r");
        assert!(
            big.contains("<Code>SlowDown</Code><Message>m&lt;xxxxxxxx</Message>"),
            "{big}"
        );
    }
}
