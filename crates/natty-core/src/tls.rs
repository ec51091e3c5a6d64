//! Building the rustls client configuration from natty's TLS options.
//!
//! async-nats takes CA and client certificates only as file paths; Go natty users pass PEM text
//! where a file is expected, and skip-verify needs a custom verifier. So when any of those is set
//! we build the `rustls::ClientConfig` here (with async-nats' own rustls) and hand it over.

use std::{path::PathBuf, sync::Arc};

use async_nats::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};

use crate::{Error, ErrorKind};

/// Where a PEM document comes from: a file, or the PEM text itself.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pem {
    /// A path to a PEM file.
    File(PathBuf),
    /// The PEM text.
    Text(String),
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            // PEM text may be a private key: never print it.
            Self::Text(_) => f.write_str("Text(..)"),
        }
    }
}

impl Pem {
    fn describe(&self) -> String {
        match self {
            Self::File(path) => format!("file {}", path.display()),
            Self::Text(_) => "in-memory PEM".to_owned(),
        }
    }

    fn bytes(&self, what: &str) -> Result<Vec<u8>, Error> {
        match self {
            Self::File(path) => std::fs::read(path).map_err(|e| {
                Error::with_source(
                    ErrorKind::Io,
                    format!("reading the {what} from {}", self.describe()),
                    e,
                )
            }),
            Self::Text(text) => Ok(text.as_bytes().to_vec()),
        }
    }

    fn certificates(&self, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
        let bytes = self.bytes(what)?;
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::Io,
                    format!("parsing the {what} in {}", self.describe()),
                    e,
                )
            })?;
        if certs.is_empty() {
            return Err(Error::new(
                ErrorKind::Io,
                format!("the {what} in {} holds no certificate", self.describe()),
            ));
        }
        Ok(certs)
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, Error> {
        let bytes = self.bytes("client key")?;
        PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
            Error::with_source(
                ErrorKind::Io,
                format!("parsing the client key in {}", self.describe()),
                e,
            )
        })
    }
}

/// TLS settings, as collected by [`ConnectOptions`](crate::ConnectOptions).
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsOptions {
    pub(crate) ca: Option<Pem>,
    pub(crate) client_cert: Option<(Pem, Pem)>,
    pub(crate) skip_verify: bool,
    pub(crate) handshake_first: bool,
    pub(crate) required: bool,
}

impl TlsOptions {
    /// Whether TLS must be used at all.
    pub(crate) fn enabled(&self) -> bool {
        self.required
            || self.handshake_first
            || self.skip_verify
            || self.ca.is_some()
            || self.client_cert.is_some()
    }

    /// Our own rustls config when the options need one; `None` leaves it to async-nats
    /// (system roots).
    pub(crate) fn client_config(&self) -> Result<Option<ClientConfig>, Error> {
        if self.ca.is_none() && self.client_cert.is_none() && !self.skip_verify {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::with_source(ErrorKind::InvalidConfig, "configuring TLS", e))?;
        let builder = if self.skip_verify {
            tracing::warn!(
                "TLS server certificate verification is disabled (skip_verify): \
                 the connection is encrypted but the server is not authenticated"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            builder.with_root_certificates(self.roots()?)
        };
        let config = match &self.client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(cert.certificates("client certificate")?, key.private_key()?)
                .map_err(|e| {
                    Error::with_source(
                        ErrorKind::InvalidConfig,
                        format!(
                            "using the client certificate from {} with the key from {}",
                            cert.describe(),
                            key.describe()
                        ),
                        e,
                    )
                })?,
            None => builder.with_no_client_auth(),
        };
        Ok(Some(config))
    }

    fn roots(&self) -> Result<RootCertStore, Error> {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                for cert in ca.certificates("CA certificate")? {
                    roots.add(cert).map_err(|e| {
                        Error::with_source(
                            ErrorKind::Io,
                            format!("using the CA certificate in {}", ca.describe()),
                            e,
                        )
                    })?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
        Ok(roots)
    }
}

/// Accepts any server certificate but still checks handshake signatures. rustls deliberately
/// ships no such verifier; this is the minimal one for the explicit `skip_verify` opt-in.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
