//! TLS to the server, with libpq's meanings of `sslmode` and `sslrootcert`.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, and no root certificate, so
//! the URL's TLS parameters are taken off here and turned into a rustls configuration:
//!
//! | sslmode              | encrypted                  | certificate checked                    |
//! |----------------------|----------------------------|----------------------------------------|
//! | disable              | never                      | —                                      |
//! | allow, prefer (default) | when the server offers it | only against `sslrootcert`, if given  |
//! | require              | always                     | only against `sslrootcert`, if given   |
//! | verify-ca            | always                     | signed by `sslrootcert` (or a system root) |
//! | verify-full          | always                     | as verify-ca, and it names the host     |
//!
//! As with libpq, `prefer` and `require` without a root certificate protect against
//! eavesdropping but not against a server pretending to be yours: say `verify-full`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// The URL without its TLS parameters, and the connector they ask for.
pub struct Tls {
    pub url: String,
    pub connector: MakeRustlsConnect,
}

/// Takes `sslmode` and `sslrootcert` off `url`. Errors read as the end of "… is not a valid
/// PostgreSQL URL (…)".
pub fn from_url(url: &str) -> Result<Tls, String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut mode = "prefer".to_owned();
    let mut root_cert = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", value)) => mode = value.to_owned(),
            Some(("sslrootcert", value)) => root_cert = Some(PathBuf::from(percent_decode(value))),
            _ => kept.push(pair),
        }
    }
    let (tokio_mode, check) = match mode.as_str() {
        "disable" => ("disable", Check::Nothing),
        "allow" | "prefer" if root_cert.is_some() => ("prefer", Check::Chain),
        "allow" | "prefer" => ("prefer", Check::Nothing),
        "require" if root_cert.is_some() => ("require", Check::Chain),
        "require" => ("require", Check::Nothing),
        "verify-ca" => ("require", Check::Chain),
        "verify-full" => ("require", Check::ChainAndName),
        other => {
            return Err(format!("sslmode={other}: use disable, allow, prefer, require, verify-ca or verify-full"));
        }
    };
    kept.push(match tokio_mode {
        "disable" => "sslmode=disable",
        "prefer" => "sslmode=prefer",
        _ => "sslmode=require",
    });
    let config = client_config(check, root_cert.as_deref())?;
    Ok(Tls { url: format!("{base}?{}", kept.join("&")), connector: MakeRustlsConnect::new(config) })
}

fn client_config(check: Check, root_cert: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS setup failed: {err}"))?;
    let algorithms = provider.signature_verification_algorithms;
    let chain = match check {
        Check::Nothing => None,
        Check::Chain | Check::ChainAndName => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots(root_cert)?), provider)
                .build()
                .map_err(|err| format!("TLS setup failed: {err}"))?,
        ),
    };
    let config = match (check, chain) {
        (Check::ChainAndName, Some(webpki)) => builder.with_webpki_verifier(webpki),
        (_, chain) => builder.dangerous().with_custom_certificate_verifier(Arc::new(Lenient { chain, algorithms })),
    };
    Ok(config.with_no_client_auth())
}

/// The certificates in `sslrootcert`, or else the system's trusted roots.
fn roots(root_cert: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = match root_cert {
        Some(path) => CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|err| format!("cannot read sslrootcert {}: {err}", path.display()))?,
        None => rustls_native_certs::load_native_certs().certs,
    };
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(match root_cert {
            Some(path) => format!("sslrootcert {} holds no usable certificate", path.display()),
            None => "no trusted root certificates on this system: give sslrootcert=PATH".to_owned(),
        });
    }
    Ok(roots)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The checks short of `verify-full` (which is rustls's own verifier): none, as libpq's
/// `prefer` and `require` do without a root certificate, or the chain but not the name
/// (`verify-ca`). The handshake's signatures are verified either way.
#[derive(Debug)]
struct Lenient {
    /// `None`: the certificate is taken as it comes.
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
