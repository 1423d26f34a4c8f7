//! TLS to a Bambu printer (docs/bambu-protocol.md §2.1): rustls with the ring provider, TLS 1.2 only, and
//! a certificate verifier that pins the printer instead of trusting a CA.
//!
//! In [`TlsMode::Pin`] the first successful login records the leaf's SHA-256 (trust on first
//! use, [`PrinterTls::pin_after_login`]); every later handshake requires the same fingerprint and
//! `CN == configured serial`. A changed fingerprint is never accepted automatically: the session
//! reports [`CertRejection::FingerprintChanged`] and a person re-pairs. [`TlsMode::Insecure`]
//! accepts any certificate (logged once). Handshake signatures are always checked with the
//! provider's algorithms. The MQTT session and the FTPS uploader share one [`ClientConfig`] per
//! printer (and with it the TLS session cache the FTPS data channel needs).

use crate::config::TlsMode;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Where pinned certificate fingerprints live (SQLite in the app, memory in tests).
pub trait PinStore: Send + Sync {
    /// Lowercase hex SHA-256 of the pinned leaf for this serial, if paired.
    fn pinned(&self, serial: &str) -> Option<String>;
    fn store_pin(&self, serial: &str, fingerprint: &str) -> Result<(), String>;
}

/// A [`PinStore`] in memory (tests, demo).
#[derive(Debug, Default)]
pub struct MemoryPinStore {
    pins: Mutex<HashMap<String, String>>,
}

impl MemoryPinStore {
    pub fn new() -> Self {
        Self::default()
    }
    /// Forget a pin (what "re-pair" does).
    pub fn clear(&self, serial: &str) {
        lock(&self.pins).remove(serial);
    }
}

impl PinStore for MemoryPinStore {
    fn pinned(&self, serial: &str) -> Option<String> {
        lock(&self.pins).get(serial).cloned()
    }
    fn store_pin(&self, serial: &str, fingerprint: &str) -> Result<(), String> {
        lock(&self.pins).insert(serial.to_string(), fingerprint.to_string());
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Lowercase hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The subject CN of a DER certificate.
pub fn common_name(der: &[u8]) -> Result<Option<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("cannot parse the printer's certificate: {e}"))?;
    Ok(cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string))
}

/// Why the verifier refused a printer's certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertRejection {
    #[error(
        "the printer's certificate changed (pinned {pinned}, now {seen}); if the printer was replaced or reset, re-pair it"
    )]
    FingerprintChanged { pinned: String, seen: String },
    #[error(
        "the certificate belongs to serial {seen:?}, not the configured {expected}; check the serial (case-sensitive) in the configuration"
    )]
    WrongSerial {
        expected: String,
        seen: Option<String>,
    },
    #[error("{0}")]
    Unreadable(String),
}

#[derive(Debug, Default)]
struct Observed {
    /// Fingerprint of the last leaf that passed verification.
    accepted: Option<String>,
    /// The last refusal, until taken.
    rejection: Option<CertRejection>,
}

/// The per-printer certificate verifier.
pub struct PrinterVerifier {
    serial: String,
    mode: TlsMode,
    pins: Arc<dyn PinStore>,
    provider: Arc<CryptoProvider>,
    observed: Mutex<Observed>,
    warned_insecure: AtomicBool,
}

impl std::fmt::Debug for PrinterVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrinterVerifier")
            .field("serial", &self.serial)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl PrinterVerifier {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<String, CertRejection> {
        let seen = fingerprint(end_entity.as_ref());
        if self.mode == TlsMode::Insecure {
            if !self.warned_insecure.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    serial = %self.serial,
                    fingerprint = %seen,
                    "TLS certificate checks are OFF for this printer (tls = \"insecure\"); anyone on the LAN could impersonate it"
                );
            }
            return Ok(seen);
        }
        let cn = common_name(end_entity.as_ref()).map_err(CertRejection::Unreadable)?;
        if cn.as_deref() != Some(self.serial.as_str()) {
            return Err(CertRejection::WrongSerial {
                expected: self.serial.clone(),
                seen: cn,
            });
        }
        match self.pins.pinned(&self.serial) {
            Some(pinned) if !pinned.eq_ignore_ascii_case(&seen) => {
                Err(CertRejection::FingerprintChanged { pinned, seen })
            }
            _ => Ok(seen),
        }
    }
}

impl ServerCertVerifier for PrinterVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The server name is deliberately not matched: printers have no SAN for their IP;
        // identity is the CN (= serial) plus the pinned fingerprint.
        match self.check(end_entity) {
            Ok(seen) => {
                lock(&self.observed).accepted = Some(seen);
                Ok(ServerCertVerified::assertion())
            }
            Err(rejection) => {
                tracing::warn!(serial = %self.serial, "printer certificate refused: {rejection}");
                lock(&self.observed).rejection = Some(rejection);
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Could not build the TLS configuration (a programming or platform error, not a printer one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot set up TLS for the printer: {0}")]
pub struct TlsSetupError(String);

/// TLS for one printer: the shared client config and access to its verifier's observations.
#[derive(Debug, Clone)]
pub struct PrinterTls {
    config: Arc<ClientConfig>,
    verifier: Arc<PrinterVerifier>,
}

impl PrinterTls {
    /// Build the config: ring provider passed explicitly, TLS 1.2 only, pinning verifier.
    pub fn new(
        serial: &str,
        mode: TlsMode,
        pins: Arc<dyn PinStore>,
    ) -> Result<Self, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PrinterVerifier {
            serial: serial.to_string(),
            mode,
            pins,
            provider: provider.clone(),
            observed: Mutex::new(Observed::default()),
            warned_insecure: AtomicBool::new(false),
        });
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .map_err(|e| TlsSetupError(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        Ok(Self {
            config: Arc::new(config),
            verifier,
        })
    }

    /// The client config to use for MQTT and FTPS to this printer (same `Arc` every time).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// The most recent certificate refusal, cleared by taking it.
    pub fn take_rejection(&self) -> Option<CertRejection> {
        lock(&self.verifier.observed).rejection.take()
    }

    /// Fingerprint of the last certificate that passed verification.
    pub fn last_accepted(&self) -> Option<String> {
        lock(&self.verifier.observed).accepted.clone()
    }

    /// After a successful login: in pin mode with no pin stored yet, pin the certificate just
    /// seen (trust on first use). Returns the fingerprint pinned now, if any.
    pub fn pin_after_login(&self) -> Result<Option<String>, String> {
        let v = &self.verifier;
        if v.mode != TlsMode::Pin || v.pins.pinned(&v.serial).is_some() {
            return Ok(None);
        }
        let Some(seen) = self.last_accepted() else {
            return Ok(None);
        };
        v.pins.store_pin(&v.serial, &seen)?;
        tracing::info!(serial = %v.serial, fingerprint = %seen, "pinned the printer's certificate (first use)");
        Ok(Some(seen))
    }
}

/// The TLS client config for a printer, for the FTPS uploader when it is used without a
/// running [`crate::printer::bambu::BambuPrinter`] (which exposes its own shared instance).
pub fn printer_client_config(
    serial: &str,
    mode: TlsMode,
    pins: Arc<dyn PinStore>,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    PrinterTls::new(serial, mode, pins).map(|t| t.client_config())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::tls::SimIdentity;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const SERIAL: &str = "01P00A451200318";

    /// One TLS handshake against a server presenting `id`; returns whether it succeeded.
    async fn handshake(tls: &PrinterTls, id: &SimIdentity, allow_tls13: bool) -> bool {
        let Ok(server_cfg) = id.server_config(allow_tls13) else {
            return false;
        };
        let Ok(listener) = TcpListener::bind("127.0.0.1:0").await else {
            return false;
        };
        let Ok(addr) = listener.local_addr() else {
            return false;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.ok()?;
            let mut s = acceptor.accept(tcp).await.ok()?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.ok()?;
            Some(())
        });
        let connector = tokio_rustls::TlsConnector::from(tls.client_config());
        let Ok(tcp) = TcpStream::connect(addr).await else {
            return false;
        };
        let Ok(name) = ServerName::try_from(SERIAL.to_string()) else {
            return false;
        };
        let ok = match connector.connect(name, tcp).await {
            Ok(mut s) => s.write_all(b"x").await.is_ok(),
            Err(_) => false,
        };
        let _ = server.await;
        ok
    }

    #[tokio::test]
    async fn trust_on_first_use_then_pinned() {
        let pins = Arc::new(MemoryPinStore::new());
        let tls = PrinterTls::new(SERIAL, TlsMode::Pin, pins.clone()).expect("tls");
        let id = SimIdentity::generate(SERIAL).expect("identity");
        assert!(handshake(&tls, &id, false).await);
        assert_eq!(
            pins.pinned(SERIAL),
            None,
            "pinned only after a successful login"
        );
        assert_eq!(tls.pin_after_login(), Ok(Some(id.leaf_fingerprint())));
        assert_eq!(pins.pinned(SERIAL), Some(id.leaf_fingerprint()));
        assert_eq!(tls.pin_after_login(), Ok(None));
        assert!(
            handshake(&tls, &id, false).await,
            "same certificate accepted"
        );

        let regenerated = SimIdentity::generate(SERIAL).expect("identity");
        assert!(!handshake(&tls, &regenerated, false).await);
        assert_eq!(
            tls.take_rejection(),
            Some(CertRejection::FingerprintChanged {
                pinned: id.leaf_fingerprint(),
                seen: regenerated.leaf_fingerprint()
            })
        );
        assert_eq!(tls.take_rejection(), None);
        pins.clear(SERIAL);
        assert!(handshake(&tls, &regenerated, false).await, "re-paired");
    }

    #[tokio::test]
    async fn wrong_cn_is_refused_even_before_pinning() {
        let pins = Arc::new(MemoryPinStore::new());
        let tls = PrinterTls::new(SERIAL, TlsMode::Pin, pins.clone()).expect("tls");
        let other = SimIdentity::generate("01P00A000000000").expect("identity");
        assert!(!handshake(&tls, &other, false).await);
        assert!(matches!(
            tls.take_rejection(),
            Some(CertRejection::WrongSerial { seen: Some(cn), .. }) if cn == "01P00A000000000"
        ));
        assert_eq!(pins.pinned(SERIAL), None);
    }

    #[tokio::test]
    async fn insecure_accepts_anything_and_never_pins() {
        let pins = Arc::new(MemoryPinStore::new());
        pins.store_pin(SERIAL, "00").expect("pin");
        let tls = PrinterTls::new(SERIAL, TlsMode::Insecure, pins.clone()).expect("tls");
        let other = SimIdentity::generate("SOMETHING-ELSE").expect("identity");
        assert!(handshake(&tls, &other, false).await);
        assert_eq!(tls.pin_after_login(), Ok(None));
    }

    #[tokio::test]
    async fn tls_1_2_is_negotiated_against_a_server_offering_1_3() {
        let pins = Arc::new(MemoryPinStore::new());
        let tls = PrinterTls::new(SERIAL, TlsMode::Pin, pins).expect("tls");
        let id = SimIdentity::generate(SERIAL).expect("identity");
        assert!(handshake(&tls, &id, true).await);
        let cfg = tls.client_config();
        assert!(Arc::ptr_eq(&cfg, &tls.client_config()), "one shared config");
    }
}
