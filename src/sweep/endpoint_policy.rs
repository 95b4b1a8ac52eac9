//! Which endpoints a sweep may connect to. An operator that sweeps for tenants who choose their
//! own endpoints must not become a way into its own network: cloud metadata services, the API
//! server, cluster-internal services. The policy is checked on the endpoint as written, and on
//! every address DNS gives for it, at every connection (so a name that later resolves elsewhere
//! is caught too); a refused endpoint is never connected to.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDns, ResolveDnsError};
use ipnet::IpNet;

/// Addresses denied when the operator names none: the link-local ranges, which hold cloud
/// metadata services (169.254.169.254 and friends).
pub const DEFAULT_DENIED: [&str; 2] = ["169.254.0.0/16", "fe80::/10"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPolicy {
    /// No connection to an address in these ranges.
    pub denied: Vec<IpNet>,
    /// When not empty, only hosts matching one of these may be used: `s3.example.com` exactly,
    /// or `*.example.com` for any name below `example.com`.
    pub allowed_hosts: Vec<String>,
    pub require_https: bool,
}

impl Default for EndpointPolicy {
    /// Denies the link-local ranges, allows everything else.
    fn default() -> Self {
        Self {
            denied: DEFAULT_DENIED
                .iter()
                .map(|net| net.parse().expect("static ranges parse"))
                .collect(),
            allowed_hosts: Vec::new(),
            require_https: false,
        }
    }
}

/// Why an endpoint may not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EndpointForbidden(String);

impl EndpointPolicy {
    /// No restriction at all (the one-shot command uses it unless told otherwise).
    pub fn unrestricted() -> Self {
        Self {
            denied: Vec::new(),
            allowed_hosts: Vec::new(),
            require_https: false,
        }
    }

    /// Checks the endpoint as written: scheme, host name, and the address when it is one (a
    /// literal address is connected to without asking DNS).
    pub fn check_endpoint(&self, scheme: &str, host: &str) -> Result<(), EndpointForbidden> {
        if self.require_https && scheme != "https" {
            return Err(EndpointForbidden(
                "the operator requires https:// endpoints".into(),
            ));
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if !self.allowed_hosts.is_empty()
            && !self.allowed_hosts.iter().any(|p| host_matches(p, bare))
        {
            return Err(EndpointForbidden(
                "the endpoint's host is not among the hosts the operator allows".into(),
            ));
        }
        match bare.parse::<IpAddr>() {
            Ok(address) => self.check_address(address),
            Err(_) => Ok(()),
        }
    }

    pub fn check_address(&self, address: IpAddr) -> Result<(), EndpointForbidden> {
        let address = canonical(address);
        if self.denied.iter().any(|net| net.contains(&address)) {
            return Err(EndpointForbidden(
                "the endpoint's address is in a range the operator denies".into(),
            ));
        }
        Ok(())
    }

    /// A DNS resolver that gives only allowed addresses, and fails when none are.
    pub fn resolver(&self) -> PolicyResolver {
        PolicyResolver {
            policy: Arc::new(self.clone()),
        }
    }
}

/// IPv4 addresses written as IPv6 (`::ffff:169.254.169.254`) are checked as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// `pattern` is a host name, or `*.` followed by a domain that any deeper name matches.
fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => host == pattern,
    }
}

/// Resolves with the system resolver, then drops the addresses the policy denies.
#[derive(Clone)]
pub struct PolicyResolver {
    policy: Arc<EndpointPolicy>,
}

impl fmt::Debug for PolicyResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PolicyResolver")
    }
}

impl ResolveDns for PolicyResolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> DnsFuture<'a> {
        DnsFuture::new(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((name, 0))
                .await
                .map_err(ResolveDnsError::new)?
                .collect();
            let mut forbidden = None;
            let allowed: Vec<IpAddr> = resolved
                .iter()
                .map(|a| a.ip())
                .filter(|ip| match self.policy.check_address(*ip) {
                    Ok(()) => true,
                    Err(why) => {
                        forbidden = Some(why);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), forbidden) {
                (true, Some(why)) => Err(ResolveDnsError::new(why)),
                _ => Ok(allowed),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(denied: &[&str], allowed: &[&str], https: bool) -> EndpointPolicy {
        EndpointPolicy {
            denied: denied.iter().map(|n| n.parse().unwrap()).collect(),
            allowed_hosts: allowed.iter().map(|h| h.to_string()).collect(),
            require_https: https,
        }
    }

    #[test]
    fn the_default_denies_metadata_addresses_only() {
        let default = EndpointPolicy::default();
        assert!(default.check_endpoint("http", "169.254.169.254").is_err());
        assert!(default.check_endpoint("http", "[fe80::1]").is_err());
        assert!(
            default
                .check_endpoint("http", "[::ffff:169.254.169.254]")
                .is_err()
        );
        assert!(default.check_endpoint("http", "127.0.0.1").is_ok());
        assert!(default.check_endpoint("https", "s3.example.com").is_ok());
    }

    #[test]
    fn allowed_hosts_are_exact_or_below_a_domain() {
        let only = policy(&[], &["s3.example.com", "*.cwobject.com"], false);
        assert!(only.check_endpoint("https", "s3.example.com").is_ok());
        assert!(only.check_endpoint("https", "S3.Example.com.").is_ok());
        assert!(only.check_endpoint("https", "bucket.cwobject.com").is_ok());
        assert!(only.check_endpoint("https", "cwobject.com").is_err());
        assert!(only.check_endpoint("https", "evil-cwobject.com").is_err());
        assert!(only.check_endpoint("https", "10.0.0.1").is_err());
    }

    #[test]
    fn https_can_be_required() {
        let https = policy(&[], &[], true);
        assert!(https.check_endpoint("http", "s3.example.com").is_err());
        assert!(https.check_endpoint("https", "s3.example.com").is_ok());
    }

    #[tokio::test]
    async fn the_resolver_drops_denied_addresses_and_fails_when_none_are_left() {
        let loopback = policy(&["127.0.0.0/8", "::1/128"], &[], false);
        let err = loopback
            .resolver()
            .resolve_dns("localhost")
            .await
            .unwrap_err();
        assert!(
            std::error::Error::source(&err)
                .and_then(|s| s.downcast_ref::<EndpointForbidden>())
                .is_some(),
            "{err:?}"
        );
        let open = EndpointPolicy::unrestricted();
        assert!(
            !open
                .resolver()
                .resolve_dns("localhost")
                .await
                .unwrap()
                .is_empty()
        );
    }
}
