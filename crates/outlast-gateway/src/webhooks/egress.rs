//! The webhook egress policy: which addresses the gateway may connect to. Loopback, private,
//! link-local, unspecified, shared (CGNAT), multicast and reserved addresses are refused unless
//! `webhooks.allow_private` or an `allow_cidrs` block allows them. Host names are resolved and
//! every address checked; the connection then goes to a checked address only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use crate::config::WebhookConfig;

/// What may be reached.
#[derive(Debug, Clone)]
pub struct Egress {
    allow_private: bool,
    allow: Vec<IpNet>,
}

/// A parsed webhook target.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given.
    pub url: reqwest::Url,
    /// The host name, when the URL names one (not an address).
    pub domain: Option<String>,
    /// The port (explicit or the scheme's).
    pub port: u16,
}

impl Egress {
    /// From `[webhooks]` (validated: the CIDRs parse).
    pub fn new(config: &WebhookConfig) -> Self {
        Self {
            allow_private: config.allow_private,
            allow: config
                .allow_cidrs
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
        }
    }

    /// May the gateway connect to `ip`?
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allow_private || self.allow.iter().any(|n| n.contains(&ip)) || is_public(ip)
    }

    /// Parses and checks a URL without resolving names: `http`/`https`, a host, no user info,
    /// and an address host must be allowed. `Err` says why not.
    pub fn check_url(&self, url: &str) -> Result<Target, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("the URL must be http:// or https://".into());
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("the URL must not carry credentials".into());
        }
        let port = parsed
            .port_or_known_default()
            .ok_or("the URL has no port")?;
        let domain = match parsed.host() {
            None => return Err("the URL has no host".into()),
            Some(url::Host::Domain(d)) => Some(d.to_owned()),
            Some(url::Host::Ipv4(ip)) => {
                self.check_ip(IpAddr::V4(ip))?;
                None
            }
            Some(url::Host::Ipv6(ip)) => {
                self.check_ip(IpAddr::V6(ip))?;
                None
            }
        };
        Ok(Target {
            url: parsed,
            domain,
            port,
        })
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if self.allows(ip) {
            Ok(())
        } else {
            Err(format!(
                "{ip} is a private, loopback, link-local or reserved address (see webhooks.allow_private)"
            ))
        }
    }

    /// The addresses to connect to for `target`: the URL's address, or every address its host
    /// name resolves to, each of which must be allowed (one refused address refuses them all).
    pub async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, Resolve> {
        let Some(domain) = &target.domain else {
            let ip = match target.url.host() {
                Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
                Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
                _ => return Err(Resolve::Failed("no host".into())),
            };
            self.check_ip(ip).map_err(Resolve::Refused)?;
            return Ok(vec![SocketAddr::new(ip, target.port)]);
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((domain.as_str(), target.port))
            .await
            .map_err(|e| Resolve::Failed(format!("cannot resolve {domain}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(Resolve::Failed(format!("{domain} has no address")));
        }
        for a in &addrs {
            self.check_ip(a.ip())
                .map_err(|m| Resolve::Refused(format!("{domain} resolves to {m}")))?;
        }
        Ok(addrs)
    }
}

/// Why resolving a target gave no address to connect to.
#[derive(Debug, Clone)]
pub enum Resolve {
    /// The policy refuses an address (final).
    Refused(String),
    /// The name did not resolve (retried).
    Failed(String),
}

/// IPv4-mapped IPv6 addresses are checked as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64 may reach private IPv4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(allow_private: bool, cidrs: &[&str]) -> Egress {
        Egress::new(&WebhookConfig {
            allow_private,
            allow_cidrs: cidrs.iter().map(|c| (*c).to_owned()).collect(),
            ..WebhookConfig::default()
        })
    }

    #[test]
    fn refuses_private_targets_by_default() {
        let e = egress(false, &[]);
        for url in [
            "http://127.0.0.1:9/",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1/",
            "http://192.168.1.1/",
            "http://172.16.0.1/",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433/", // 127.0.0.1 written as a number
            "http://0x7f.1/",
        ] {
            assert!(e.check_url(url).is_err(), "{url} allowed");
        }
        for url in [
            "https://93.184.215.14/hook",
            "http://[2606:4700::1]/",
            "https://example.com/x",
        ] {
            assert!(e.check_url(url).is_ok(), "{url} refused");
        }
        for url in [
            "ftp://example.com/",
            "http://user:pw@example.com/",
            "not a url",
        ] {
            assert!(e.check_url(url).is_err(), "{url} allowed");
        }
    }

    #[test]
    fn allow_lists_open_exactly_what_they_name() {
        assert!(egress(true, &[]).check_url("http://127.0.0.1:9/").is_ok());
        let e = egress(false, &["10.1.2.0/24"]);
        assert!(e.check_url("http://10.1.2.3/").is_ok());
        assert!(e.check_url("http://10.1.3.1/").is_err());
        assert!(e.check_url("http://127.0.0.1/").is_err());
    }
}
