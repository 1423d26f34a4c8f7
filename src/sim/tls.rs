//! TLS identity of one simulated printer: an own test CA (standing in for "BBL CA") and a leaf
//! with `CN=<serial>` and no IP SAN, like a real printer's certificate (docs/bambu-protocol.md §2.1).
//! Keys are ECDSA P-256 (rcgen cannot generate RSA with the ring backend); the protocol shape
//! (TLS 1.2 only, CN = serial, no SAN for the IP) is what matters to the client under test.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Certificate chain and key a simulated printer presents.
#[derive(Clone)]
pub struct SimIdentity {
    pub serial: String,
    pub ca_der: CertificateDer<'static>,
    pub leaf_der: CertificateDer<'static>,
    key_der: Vec<u8>,
    /// Send the CA after the leaf (X2D style) instead of the leaf only (X1C style).
    pub send_chain: bool,
}

impl SimIdentity {
    /// A fresh CA and leaf for `serial`. Calling it again yields a different leaf (the
    /// "regenerate certificate" knob used to test fingerprint pinning).
    pub fn generate(serial: &str) -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::OrganizationName, "printgate simulator");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "printgate sim CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate()?;
        let mut leaf_params = CertificateParams::new(Vec::<String>::new())?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, serial);
        let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer)?;
        Ok(Self {
            serial: serial.to_string(),
            ca_der: ca_cert.der().clone(),
            leaf_der: leaf_cert.der().clone(),
            key_der: leaf_key.serialize_der(),
            send_chain: false,
        })
    }

    /// Lowercase hex SHA-256 of the leaf certificate (what the gateway pins).
    pub fn leaf_fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.leaf_der.as_ref()))
    }

    /// A rustls server config: TLS 1.2 only unless `allow_tls13`, ring provider, session
    /// resumption enabled (the FTPS data channel must resume the control session).
    pub fn server_config(&self, allow_tls13: bool) -> anyhow::Result<Arc<ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = if allow_tls13 {
            &[&rustls::version::TLS12, &rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS12]
        };
        let mut chain = vec![self.leaf_der.clone()];
        if self.send_chain {
            chain.push(self.ca_der.clone());
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(256);
        Ok(Arc::new(cfg))
    }
}
