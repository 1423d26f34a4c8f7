//! Who a virtual printer is: its own serial and access code (random on first start, then kept in
//! the data directory so that slicers and Home Assistant stay paired across restarts), and the
//! TLS identity it presents: a leaf with `CN=<virtual serial>` signed by printgate's own
//! certificate authority, which is made once per data directory. A user who wants their tools
//! to verify the virtual printer trusts that CA (`virtual-printers/ca.pem`) the way they trust
//! Bambu's for a real printer.
//!
//! Keys are ECDSA P-256 (rcgen makes them with the ring backend; clients negotiate
//! ECDHE-ECDSA over TLS 1.2 as they negotiate ECDHE-RSA with a printer).

use crate::printer::Model;
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber, date_time_ymd,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Folder under the data directory with the CA and the identities.
pub const DIR: &str = "virtual-printers";
const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key.pem";
const IDENTITIES_FILE: &str = "identities.json";

/// The serial and access code a virtual printer answers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub serial: String,
    pub access_code: String,
}

/// A 15-character serial with the real printer's model prefix (tools read the model from it),
/// `0PG` where a printer has its batch code (so a person can tell it is printgate's), and nine
/// random digits.
pub fn new_serial(model: Model) -> String {
    let n: u64 = rand::rng().random_range(0..1_000_000_000);
    format!("{}0PG{n:09}", model.serial_prefix())
}

/// Eight random digits, shaped like a printer's LAN access code.
pub fn new_access_code() -> String {
    let n: u32 = rand::rng().random_range(0..100_000_000);
    format!("{n:08}")
}

/// The identities of every virtual printer of one data directory, by printer name.
pub struct IdentityStore {
    dir: PathBuf,
}

impl IdentityStore {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(DIR),
        }
    }

    /// Where the CA certificate users may import is kept.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// The credentials of `printer`, made and persisted on first use.
    pub fn credentials(&self, printer: &str, model: Model) -> anyhow::Result<Credentials> {
        let mut all = self.load()?;
        if let Some(c) = all.get(printer) {
            return Ok(c.clone());
        }
        let made = Credentials {
            serial: new_serial(model),
            access_code: new_access_code(),
        };
        all.insert(printer.to_string(), made.clone());
        self.save(&all)?;
        Ok(made)
    }

    fn load(&self) -> anyhow::Result<BTreeMap<String, Credentials>> {
        let path = self.dir.join(IDENTITIES_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a virtual printer identity file ({e}); move it away to make new identities (slicers must then be paired again)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    fn save(&self, all: &BTreeMap<String, Credentials>) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(all)?;
        write_private(&self.dir, IDENTITIES_FILE, &bytes)
    }

    /// printgate's CA for virtual printers: loaded, or made and persisted on first use.
    pub fn authority(&self) -> anyhow::Result<Authority> {
        let key_path = self.dir.join(CA_KEY_FILE);
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => KeyPair::from_pem(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a private key ({e}); move the folder {} away to make a new CA (tools that trusted the old one must trust the new one)",
                    key_path.display(),
                    self.dir.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate()?;
                write_private(&self.dir, CA_KEY_FILE, key.serialize_pem().as_bytes())?;
                let _ = std::fs::remove_file(self.ca_cert_path());
                key
            }
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", key_path.display())),
        };
        let params = ca_params()?;
        let cert_path = self.ca_cert_path();
        let ca_der = match std::fs::read(&cert_path) {
            Ok(pem) => first_certificate(&pem).ok_or_else(|| {
                anyhow::anyhow!(
                    "{} holds no certificate; delete it and printgate writes it again",
                    cert_path.display()
                )
            })?,
            Err(_) => {
                let cert = params.self_signed(&key)?;
                write_private(&self.dir, CA_CERT_FILE, cert.pem().as_bytes())?;
                cert.der().clone()
            }
        };
        Ok(Authority {
            issuer: Issuer::new(params, key),
            ca_der,
        })
    }
}

/// The CA's fixed name and validity: the same parameters every start, so leaves signed now chain
/// to the certificate written on the first start.
fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = date_time_ymd(2024, 1, 1);
    p.not_after = date_time_ymd(2049, 12, 31);
    p.serial_number = Some(SerialNumber::from_slice(&[0x01]));
    p.distinguished_name
        .push(DnType::OrganizationName, "printgate");
    p.distinguished_name
        .push(DnType::CommonName, "printgate virtual printer CA");
    Ok(p)
}

fn first_certificate(pem: &[u8]) -> Option<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem).next()?.ok()
}

/// Write `name` in `dir` readable by the owner only, atomically (temp file, then rename).
fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    };
    write().map_err(|e| anyhow::anyhow!("cannot write {}: {e}", dir.join(name).display()))
}

/// printgate's CA, able to sign virtual printers' certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pub ca_der: CertificateDer<'static>,
}

impl Authority {
    /// A TLS server config for the virtual printer `serial`: a fresh leaf (`CN` and DNS name =
    /// the serial, as tools that check names compare the serial), leaf then CA in the chain,
    /// TLS 1.2 only like a printer's port 8883.
    pub fn server_config(&self, serial: &str) -> anyhow::Result<Arc<ServerConfig>> {
        let leaf_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![serial.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, serial);
        let mut sn: [u8; 16] = rand::random();
        sn[0] = (sn[0] & 0x7f) | 0x01;
        params.serial_number = Some(SerialNumber::from_slice(&sn));
        let leaf = params.signed_by(&leaf_key, &self.issuer)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let cfg = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.ca_der.clone()], key)?;
        Ok(Arc::new(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn credentials_and_the_ca_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityStore::new(dir.path());
        let a = store.credentials("Garage P1S", Model::P1S).unwrap();
        assert_eq!(a.serial.len(), 15, "{}", a.serial);
        assert!(a.serial.starts_with(Model::P1S.serial_prefix()));
        assert_eq!(a.access_code.len(), 8);
        let ca1 = store.authority().unwrap().ca_der;
        let again = IdentityStore::new(dir.path());
        assert_eq!(again.credentials("Garage P1S", Model::P1S).unwrap(), a);
        assert_ne!(
            again.credentials("Office X1C", Model::X1C).unwrap().serial,
            a.serial
        );
        assert_eq!(
            again.authority().unwrap().ca_der,
            ca1,
            "same CA after restart"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = dir.path().join(DIR).join(CA_KEY_FILE);
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the CA key is private");
        }
    }

    #[test]
    fn a_corrupt_identity_file_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(DIR)).unwrap();
        std::fs::write(dir.path().join(DIR).join(IDENTITIES_FILE), b"{nope").unwrap();
        let e = IdentityStore::new(dir.path())
            .credentials("p", Model::P1S)
            .unwrap_err()
            .to_string();
        assert!(e.contains("move it away"), "{e}");
    }

    #[test]
    fn the_ca_is_a_ca_and_a_leaf_config_builds() {
        let dir = tempfile::tempdir().unwrap();
        let auth = IdentityStore::new(dir.path()).authority().unwrap();
        let (_, ca) = X509Certificate::from_der(auth.ca_der.as_ref()).unwrap();
        assert!(ca.is_ca());
        let cn: Vec<_> = ca.subject().iter_common_name().collect();
        assert_eq!(cn[0].as_str().unwrap(), "printgate virtual printer CA");
        // The chain itself is verified by a TLS client in tests/virtual_printers.rs.
        auth.server_config("01P0PG123456789").unwrap();
    }
}
