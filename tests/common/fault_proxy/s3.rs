//! Which S3 operation a path-style request is, from its method, path and query alone.

use serde::{Deserialize, Serialize};

/// The S3 operations the proxy tells apart; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Op {
    ListBuckets,
    ListMultipartUploads,
    CreateMultipartUpload,
    UploadPart,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    ListParts,
    GetBucketLifecycle,
    PutBucketLifecycle,
    DeleteBucketLifecycle,
    CreateBucket,
    DeleteBucket,
    HeadBucket,
    ListObjects,
    GetObject,
    PutObject,
    DeleteObject,
    HeadObject,
    Other,
}

/// One request as S3 sees it. `bucket`, `key` and `upload_id` are empty when absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Request {
    pub op: Op,
    pub method: String,
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
}

impl S3Request {
    /// Classifies a path-style request (`/bucket/key?query`).
    pub fn classify(method: &http::Method, path: &str, query: Option<&str>) -> Self {
        let path = path.strip_prefix('/').unwrap_or(path);
        let (bucket, key) = match path.split_once('/') {
            Some((bucket, key)) => (percent_decode(bucket), percent_decode(key)),
            None => (percent_decode(path), String::new()),
        };
        let query = Query::parse(query.unwrap_or(""));
        let op = if key.is_empty() {
            bucket_op(method, &bucket, &query)
        } else {
            object_op(method, &query)
        };
        Self {
            op,
            method: method.as_str().to_owned(),
            bucket,
            key,
            upload_id: query.value("uploadId").unwrap_or_default().to_owned(),
        }
    }
}

fn bucket_op(method: &http::Method, bucket: &str, query: &Query) -> Op {
    use http::Method;
    if bucket.is_empty() {
        return if method == Method::GET {
            Op::ListBuckets
        } else {
            Op::Other
        };
    }
    if query.has("lifecycle") {
        return match *method {
            Method::GET => Op::GetBucketLifecycle,
            Method::PUT => Op::PutBucketLifecycle,
            Method::DELETE => Op::DeleteBucketLifecycle,
            _ => Op::Other,
        };
    }
    if query.has("uploads") {
        return if method == Method::GET {
            Op::ListMultipartUploads
        } else {
            Op::Other
        };
    }
    // Any other sub-resource (?acl, ?policy, ?delete, ?versioning...) is not one of ours.
    let plain = query.names().all(|name| LISTING_PARAMETERS.contains(&name));
    let bare = query.names().all(|name| name == "x-id");
    match *method {
        Method::PUT if bare => Op::CreateBucket,
        Method::DELETE if bare => Op::DeleteBucket,
        Method::HEAD if bare => Op::HeadBucket,
        Method::GET if plain => Op::ListObjects,
        _ => Op::Other,
    }
}

/// Query parameters of ListObjects (v1 and v2); any other one names a sub-resource.
const LISTING_PARAMETERS: &[&str] = &[
    "list-type",
    "prefix",
    "delimiter",
    "marker",
    "max-keys",
    "continuation-token",
    "start-after",
    "fetch-owner",
    "encoding-type",
    "x-id",
];

fn object_op(method: &http::Method, query: &Query) -> Op {
    use http::Method;
    let upload = query.has("uploadId");
    match *method {
        Method::POST if query.has("uploads") => Op::CreateMultipartUpload,
        Method::POST if upload => Op::CompleteMultipartUpload,
        Method::PUT if upload && query.has("partNumber") => Op::UploadPart,
        Method::DELETE if upload => Op::AbortMultipartUpload,
        Method::GET if upload => Op::ListParts,
        Method::GET if query.is_plain_object_access() => Op::GetObject,
        Method::PUT if query.is_plain_object_access() => Op::PutObject,
        Method::DELETE if query.is_plain_object_access() => Op::DeleteObject,
        Method::HEAD if query.is_plain_object_access() => Op::HeadObject,
        _ => Op::Other,
    }
}

/// A decoded query string, in order.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Self {
        let pairs = query
            .split('&')
            .filter(|part| !part.is_empty())
            .map(|part| {
                let (name, value) = part.split_once('=').unwrap_or((part, ""));
                (percent_decode(name), percent_decode(value))
            })
            .collect();
        Self(pairs)
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }

    /// No sub-resource: only parameters that GET/PUT/DELETE/HEAD Object take (`x-id` is the
    /// SDK's operation hint, `versionId`, `partNumber` on GET and `response-*` overrides).
    fn is_plain_object_access(&self) -> bool {
        self.names().all(|name| {
            matches!(name, "x-id" | "versionId" | "partNumber") || name.starts_with("response-")
        })
    }
}

/// Decodes `%XX` escapes; `+` stays a plus, as S3 paths and SigV4 queries use `%20` for spaces.
/// Invalid escapes are kept as they are and invalid UTF-8 is replaced, never rejected.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn op(method: Method, path: &str, query: &str) -> S3Request {
        S3Request::classify(&method, path, Some(query))
    }

    #[test]
    fn classifies_the_multipart_operations_and_decodes_names() {
        let list = op(Method::GET, "/b", "uploads&max-uploads=10");
        assert_eq!(
            (list.op, list.bucket.as_str()),
            (Op::ListMultipartUploads, "b")
        );
        let abort = op(Method::DELETE, "/b/a%20b/c%7E", "uploadId=2~x%2By");
        assert_eq!(abort.op, Op::AbortMultipartUpload);
        assert_eq!(
            (abort.key.as_str(), abort.upload_id.as_str()),
            ("a b/c~", "2~x+y")
        );
        assert_eq!(
            op(Method::POST, "/b/k", "uploads").op,
            Op::CreateMultipartUpload
        );
        assert_eq!(
            op(Method::PUT, "/b/k", "partNumber=1&uploadId=u").op,
            Op::UploadPart
        );
        assert_eq!(
            op(Method::POST, "/b/k", "uploadId=u").op,
            Op::CompleteMultipartUpload
        );
        assert_eq!(op(Method::GET, "/b/k", "uploadId=u").op, Op::ListParts);
        assert_eq!(op(Method::GET, "/", "").op, Op::ListBuckets);
        assert_eq!(op(Method::PUT, "/b", "").op, Op::CreateBucket);
        assert_eq!(
            op(Method::PUT, "/b", "lifecycle").op,
            Op::PutBucketLifecycle
        );
        assert_eq!(
            op(Method::GET, "/b", "list-type=2&prefix=a").op,
            Op::ListObjects
        );
        assert_eq!(op(Method::GET, "/b/k", "x-id=GetObject").op, Op::GetObject);
        assert_eq!(op(Method::HEAD, "/b/k", "").op, Op::HeadObject);
        assert_eq!(op(Method::POST, "/b", "delete").op, Op::Other);
        assert_eq!(op(Method::GET, "/b", "acl").op, Op::Other);
    }
}
