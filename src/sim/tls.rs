//! TLS identity of one simulated printer, shaped like a real printer's (BAMBU-LAN.md §2.1): an
//! RSA-2048 root standing in for "BBL CA" (`C=CN`, basicConstraints CA:TRUE and no keyUsage
//! extension, valid 2022-04-04 → 2032-04-01) and an RSA leaf with `CN=<serial>` and no SAN for
//! the IP, so a TLS 1.2 handshake negotiates an ECDHE-RSA suite as with a printer.
//!
//! rcgen cannot generate RSA keys with the ring backend, so the two RSA keys were made once with
//! `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048` and are kept in `keys/`.
//! They are test keys of the simulator and protect nothing. Every call signs a new leaf with a
//! random serial number, so a "regenerated" certificate has a new fingerprint.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber, date_time_ymd,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The simulated root's RSA-2048 key (PKCS#8 PEM; a test key, see the module comment).
const CA_KEY_PEM: &str = include_str!("keys/ca.key.pem");
/// The simulated printers' RSA-2048 leaf key (PKCS#8 PEM; a test key).
const LEAF_KEY_PEM: &str = include_str!("keys/leaf.key.pem");

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
        let ca_key = KeyPair::from_pem(CA_KEY_PEM)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.not_before = date_time_ymd(2022, 4, 4);
        ca_params.not_after = date_time_ymd(2032, 4, 1);
        ca_params.serial_number = Some(SerialNumber::from_slice(&[0x01]));
        ca_params.distinguished_name.push(DnType::CountryName, "CN");
        ca_params
            .distinguished_name
            .push(DnType::OrganizationName, "printgate simulator");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "BBL CA (printgate simulator)");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::from_pem(LEAF_KEY_PEM)?;
        let mut leaf_params = CertificateParams::new(Vec::<String>::new())?;
        leaf_params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
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

/// 16 random bytes with the top bit clear (a positive DER integer), as a certificate serial.
fn random_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    serial
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn the_identity_is_rsa_with_the_serial_as_cn_and_a_root_without_key_usage() {
        let id = SimIdentity::generate("01P00A391800001").expect("identity");
        let (_, leaf) = X509Certificate::from_der(id.leaf_der.as_ref()).expect("leaf parses");
        assert_eq!(
            leaf.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION,
            "the leaf key is RSA, as on a printer"
        );
        let cn: Vec<_> = leaf.subject().iter_common_name().collect();
        assert_eq!(cn[0].as_str().unwrap(), "01P00A391800001");
        assert!(leaf.subject_alternative_name().unwrap().is_none(), "no SAN");
        let (_, ca) = X509Certificate::from_der(id.ca_der.as_ref()).expect("ca parses");
        assert!(ca.is_ca());
        assert!(
            ca.key_usage().unwrap().is_none(),
            "the BBL root has no keyUsage"
        );
        assert_eq!(leaf.issuer(), ca.subject());
    }

    #[test]
    fn a_regenerated_certificate_has_a_new_fingerprint() {
        let a = SimIdentity::generate("S").expect("identity");
        let b = SimIdentity::generate("S").expect("identity");
        assert_ne!(a.leaf_fingerprint(), b.leaf_fingerprint());
        assert_eq!(a.ca_der, b.ca_der, "the root stays the same");
    }
}
