//! A test certificate authority for `https://` test identity providers, made with the
//! `openssl` command (`cargo xtask setup` installs it): a P-256 CA and a server certificate
//! it signed for 127.0.0.1 only. Shared by admin's `issuers` tests and the e2e `oidc` suite
//! (which includes this file by path).

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The files of a test CA.
pub struct TestCa {
    /// The CA's certificate: what admin is given with `--issuer-ca-file`.
    pub ca: PathBuf,
    /// The server certificate (for 127.0.0.1) and its key.
    pub leaf: PathBuf,
    pub leaf_key: PathBuf,
}

/// Runs `openssl args` in `dir`; its standard output.
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("these tests make their keys and test CA with the openssl command (cargo xtask setup installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Makes a test CA in `dir`.
pub fn make(dir: &Path) -> TestCa {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    openssl(
        dir,
        &[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=keygate test CA", "-days", "2"]].concat(),
    );
    openssl(dir, &[&["req"][..], &ec, &["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(dir.join("leaf.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ],
    );
    TestCa { ca: dir.join("ca.pem"), leaf: dir.join("leaf.pem"), leaf_key: dir.join("leaf.key") }
}

impl TestCa {
    /// A TLS server set-up presenting the server certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.leaf).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(&self.leaf_key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }
}
