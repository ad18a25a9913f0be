//! Trusted issuers' signing keys: fetched over HTTP(S) (OIDC discovery, then the JWKS), pinned
//! in the store, and fetched again every `issuer_refresh_secs`; when they change the store
//! writes a changelog entry, so every proxy has the new keys within seconds.
//!
//! The client is hyper's own HTTP/1 client (hyper is already here for warp) over a plain TCP
//! stream or, for `https://`, rustls (certificates checked against the Mozilla roots compiled
//! in, plus the operator's `--issuer-ca-file`): one GET per URL, no redirects, at most
//! [`MAX_DOCUMENT_BYTES`] read within [`FETCH_TIMEOUT`]. A failed fetch keeps the pinned
//! keys and is logged (the URL and the reason; a provider's answer body is never logged).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::Uri;
use hyper_util::rt::TokioIo;
use keygate_core::oidc::{keys_from_jwks, IssuerKey};
use keygate_core::UnixTime;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::api::durable_write;
use crate::clock::now;
use crate::error::AdminError;
use crate::state::AppState;
use crate::store::{IssuerRecord, IssuerSource};

/// Default seconds between two fetches of an issuer's keys.
pub const DEFAULT_REFRESH_SECS: u64 = 15;
/// The most of a discovery document or JWKS read.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Connect, send and read one document within this.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest URL accepted.
pub const MAX_URL_CHARS: usize = 2048;

/// The last refresh of one issuer, as this replica saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuerStatus {
    pub refreshed_at: Option<UnixTime>,
    /// Why the last fetch failed (`None` after a success).
    pub error: Option<String>,
}

#[derive(Debug, Default)]
pub struct IssuerStatuses(Mutex<HashMap<String, IssuerStatus>>);

impl IssuerStatuses {
    pub fn get(&self, id: &str) -> Option<IssuerStatus> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(id).cloned()
    }

    pub fn set(&self, id: &str, status: IssuerStatus) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(id.to_owned(), status);
    }

    pub fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }
}

/// Fetches issuers' documents over `http://`, or `https://` with the server's certificate
/// checked against the Mozilla roots (webpki-roots, compiled in) and the operator's extra
/// roots. Cheap to clone.
#[derive(Clone)]
pub struct IssuerClient {
    tls: tokio_rustls::TlsConnector,
    /// How many roots the operator added (for the startup log).
    extra_roots: usize,
    /// Refuse loopback and private addresses too (`--issuer-public-only`).
    public_only: bool,
}

impl std::fmt::Debug for IssuerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerClient")
            .field("extra_roots", &self.extra_roots)
            .field("public_only", &self.public_only)
            .finish_non_exhaustive()
    }
}

impl IssuerClient {
    /// The client, trusting the Mozilla roots and every certificate of the PEM file at
    /// `extra_roots` (a private CA, or a test issuer's); `public_only` refuses loopback and
    /// private addresses besides the ones always refused (see [`refused_address`]).
    pub fn new(extra_roots: Option<&Path>, public_only: bool) -> Result<IssuerClient, AdminError> {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let mut added = 0;
        if let Some(path) = extra_roots {
            let bad = |why: String| AdminError::Config(format!("--issuer-ca-file {}: {why}", path.display()));
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
            for cert in certs {
                let cert = cert.map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
                roots.add(cert).map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(bad("holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")".to_owned()));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AdminError::Config(format!("TLS client: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(IssuerClient { tls: tokio_rustls::TlsConnector::from(Arc::new(config)), extra_roots: added, public_only })
    }

    /// How many CA certificates `--issuer-ca-file` added.
    pub fn extra_roots(&self) -> usize {
        self.extra_roots
    }

    /// GETs `url` and parses the answer as JSON: status 200, at most [`MAX_DOCUMENT_BYTES`],
    /// within [`FETCH_TIMEOUT`].
    pub async fn fetch_json(&self, url: &str) -> Result<Value, String> {
        let uri = check_url(url)?;
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch(&uri)).await {
            Ok(result) => result.map_err(|e| format!("GET {url}: {e}")),
            Err(_) => Err(format!("GET {url}: no answer within {} s", FETCH_TIMEOUT.as_secs())),
        }
    }

    async fn fetch(&self, uri: &Uri) -> Result<Value, String> {
        let authority = uri.authority().ok_or("no host")?;
        let https = uri.scheme_str() == Some("https");
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let stream = self.connect(&host, port).await?;
        if !https {
            return get_json(stream, uri).await;
        }
        let name = ServerName::try_from(host).map_err(|_| "not a valid TLS server name".to_owned())?;
        let tls = self.tls.connect(name, stream).await.map_err(|e| format!("TLS handshake failed: {e}"))?;
        get_json(tls, uri).await
    }

    /// Resolves `host` once and connects to the first address it may reach (the address
    /// checked is the one connected to: a second lookup could answer otherwise).
    async fn connect(&self, host: &str, port: u16) -> Result<tokio::net::TcpStream, String> {
        let addresses: Vec<SocketAddr> =
            tokio::net::lookup_host((host, port)).await.map_err(|e| format!("cannot resolve {host:?}: {e}"))?.collect();
        let mut last = None;
        for address in &addresses {
            if let Some(why) = refused_address(address.ip(), self.public_only) {
                last = Some(format!("{host} is {why} ({}): admin does not fetch from there", address.ip()));
                continue;
            }
            match tokio::net::TcpStream::connect(address).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(format!("cannot connect: {e}")),
            }
        }
        Err(last.unwrap_or_else(|| format!("{host:?} resolves to no address")))
    }

    /// The JWKS URL an issuer's discovery document names (whose `issuer` must be the issuer's own).
    pub async fn discover(&self, issuer: &str) -> Result<String, String> {
        let url = discovery_url(issuer);
        let document = self.fetch_json(&url).await?;
        if document.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err(format!("{url}: its \"issuer\" is not {issuer:?}"));
        }
        let jwks_uri = document.get("jwks_uri").and_then(Value::as_str).ok_or_else(|| format!("{url}: no \"jwks_uri\""))?;
        check_url(jwks_uri)?;
        Ok(jwks_uri.to_owned())
    }

    /// Fetches an issuer's keys as its record says where from: (keys, the JWKS URL used).
    pub async fn fetch_keys(
        &self,
        source: IssuerSource,
        issuer: &str,
        jwks_uri: Option<&str>,
    ) -> Result<(Vec<IssuerKey>, Option<String>), String> {
        let uri = match (source, jwks_uri) {
            (IssuerSource::Static, _) => return Err("a static JWKS is not fetched".to_owned()),
            (IssuerSource::Discovery, _) => self.discover(issuer).await?,
            (IssuerSource::JwksUri, Some(uri)) => uri.to_owned(),
            (IssuerSource::JwksUri, None) => return Err("no jwks_uri".to_owned()),
        };
        let jwks = self.fetch_json(&uri).await?;
        Ok((usable_keys(&jwks, &uri)?, Some(uri)))
    }
}

/// Why admin will not fetch from `ip`, if it will not. Always refused: link-local addresses
/// (a cloud's instance metadata service lives at 169.254.169.254), unspecified, multicast
/// and broadcast. With `public_only`, also loopback, private (RFC 1918, unique local),
/// shared (100.64.0.0/10) and IPv4 addresses mapped into IPv6 that are any of these.
pub fn refused_address(ip: IpAddr, public_only: bool) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_link_local() {
                Some("a link-local address")
            } else if v4.is_unspecified() || a == 0 || v4.is_multicast() || v4.is_broadcast() {
                Some("not a unicast address")
            } else if public_only && v4.is_loopback() {
                Some("a loopback address")
            } else if public_only && (v4.is_private() || (a == 100 && (64..128).contains(&b))) {
                Some("a private address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if first & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not a unicast address")
            } else if public_only && v6.is_loopback() {
                Some("a loopback address")
            } else if public_only && first & 0xfe00 == 0xfc00 {
                Some("a private address")
            } else {
                None
            }
        }
    }
}

/// Checks a URL admin may fetch: `http(s)://host[:port]/path`, no user info, bounded.
pub fn check_url(text: &str) -> Result<Uri, String> {
    if text.len() > MAX_URL_CHARS {
        return Err(format!("a URL must be at most {MAX_URL_CHARS} characters"));
    }
    let uri: Uri = text.parse().map_err(|_| format!("{text:?} is not a valid URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("{text:?} is not an http:// or https:// URL"));
    }
    let Some(authority) = uri.authority() else { return Err(format!("{text:?} has no host")) };
    if authority.as_str().contains('@') {
        return Err(format!("{text:?} must not carry user info"));
    }
    Ok(uri)
}

/// One GET of `uri` over an open connection (plain or TLS), the answer parsed as JSON.
async fn get_json<Io>(io: Io, uri: &Uri) -> Result<Value, String>
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let authority = uri.authority().ok_or("no host")?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let driver = tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::ACCEPT, "application/json")
        .header(hyper::header::USER_AGENT, "keygate-admin")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    if status != hyper::StatusCode::OK {
        driver.abort();
        return Err(format!("answered {status}"));
    }
    let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
        .collect()
        .await
        .map_err(|_| format!("the answer is not readable or larger than {MAX_DOCUMENT_BYTES} bytes"))?
        .to_bytes();
    driver.abort();
    serde_json::from_slice(&body).map_err(|_| "the answer is not JSON".to_owned())
}

/// The discovery document's URL for an issuer.
pub fn discovery_url(issuer: &str) -> String {
    format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))
}

/// The usable keys of a JWKS document, or why there are none.
pub fn usable_keys(jwks: &Value, from: &str) -> Result<Vec<IssuerKey>, String> {
    let keys = keys_from_jwks(jwks);
    if keys.is_empty() {
        return Err(format!("{from}: no usable signing key (RS256 ≥ 2048 bits, ES256 P-256 or EdDSA Ed25519, each with a kid)"));
    }
    Ok(keys)
}

/// Fetches one issuer's keys and pins them if they changed. A failure keeps the pinned keys.
pub async fn refresh_issuer(state: &AppState, record: &IssuerRecord) {
    if record.source == IssuerSource::Static {
        return;
    }
    match state.issuer_client().fetch_keys(record.source, &record.issuer, record.jwks_uri.as_deref()).await {
        Ok((keys, uri)) => {
            let id = record.id.clone();
            let written = durable_write(state.store(), move |s| s.pin_issuer_keys(&id, &keys, uri.as_deref())).await;
            match written {
                Ok(Some(changed)) => {
                    let kids: Vec<&str> = changed.keys.iter().map(|k| k.kid.as_str()).collect();
                    tracing::info!(issuer = %record.id, business = %record.business, kids = ?kids, "trusted issuer's signing keys changed; pinned");
                    state.issuer_status().set(&record.id, IssuerStatus { refreshed_at: Some(now()), error: None });
                }
                Ok(None) => state.issuer_status().set(&record.id, IssuerStatus { refreshed_at: Some(now()), error: None }),
                Err(e) => tracing::error!(issuer = %record.id, error = %e.chain(), "cannot pin a trusted issuer's keys"),
            }
        }
        Err(error) => {
            let previous = state.issuer_status().get(&record.id);
            if previous.as_ref().and_then(|p| p.error.as_ref()) != Some(&error) {
                tracing::warn!(issuer = %record.id, business = %record.business, %error, "cannot refresh a trusted issuer's signing keys; keeping the pinned ones");
            }
            let refreshed_at = previous.and_then(|p| p.refreshed_at);
            state.issuer_status().set(&record.id, IssuerStatus { refreshed_at, error: Some(error) });
        }
    }
}

/// Every `issuer_refresh_secs`, fetches every fetched issuer's keys (one after another;
/// each bounded by [`FETCH_TIMEOUT`] per document). Stops at shutdown.
pub async fn refresh_loop(state: AppState) {
    let every = Duration::from_secs(state.config().issuer_refresh_secs.max(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = state.shutting_down();
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let store = state.store().clone();
                let issuers = match tokio::task::spawn_blocking(move || store.issuers()).await {
                    Ok(Ok(issuers)) => issuers,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot list the trusted issuers");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot list the trusted issuers");
                        continue;
                    }
                };
                for record in issuers.iter().filter(|r| r.source != IssuerSource::Static) {
                    tokio::select! {
                        _ = refresh_issuer(&state, record) => {}
                        _ = async { stopping.wait_for(|stop| *stop).await.is_ok() } => return,
                    }
                }
            }
            _ = async { stopping.wait_for(|stop| *stop).await.is_ok() } => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn urls_are_http_or_https_without_user_info() {
        assert!(check_url("https://idp.example.com/.well-known/jwks.json").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        for bad in ["ftp://idp/jwks", "idp.example.com/jwks", "https://user:pw@idp/jwks", "https:///jwks"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url(&format!("https://idp/{}", "a".repeat(MAX_URL_CHARS))).is_err());
    }

    #[test]
    fn an_extra_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(IssuerClient::new(None, false).unwrap().extra_roots(), 0);
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = IssuerClient::new(Some(&empty), false).unwrap_err().to_string();
        assert!(error.contains("holds no PEM certificate"), "{error}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        assert!(IssuerClient::new(Some(&garbage), false).is_err());
        assert!(IssuerClient::new(Some(&dir.path().join("missing.pem")), false).is_err());
    }

    #[test]
    fn metadata_and_link_local_addresses_are_always_refused_private_ones_on_request() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for always in ["169.254.169.254", "fe80::1", "0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "::ffff:169.254.169.254", "ff02::1"] {
            assert!(refused_address(ip(always), false).is_some(), "{always}");
        }
        for private in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "::1", "fd00::1", "::ffff:10.0.0.1"] {
            assert_eq!(refused_address(ip(private), false), None, "{private}");
            assert!(refused_address(ip(private), true).is_some(), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1", "100.128.0.1"] {
            assert_eq!(refused_address(ip(public), true), None, "{public}");
        }
    }
}
