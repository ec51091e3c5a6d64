//! Test certificates made with rcgen: a CA, a server certificate for `localhost`/`127.0.0.1`,
//! and a client certificate, all signed by the CA.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// The certificate, PEM.
    pub cert: String,
    /// The private key, PEM (PKCS#8).
    pub key: String,
}

/// A CA and the server and client certificates it signed.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The CA (self-signed).
    pub ca: CertPair,
    /// Server certificate for `localhost` and `127.0.0.1` (and any extra names asked for).
    pub server: CertPair,
    /// Client certificate for mutual TLS (CN `natty-client`).
    pub client: CertPair,
}

impl TestCerts {
    /// Generates a fresh set; `server_names` are added to `localhost` and `127.0.0.1`.
    pub fn generate(server_names: &[&str]) -> anyhow::Result<Self> {
        Self::generate_with_ca_name("natty test CA", server_names)
    }

    /// Like [`generate`](Self::generate), with a chosen CA common name (two sets with
    /// different CAs do not trust each other).
    pub fn generate_with_ca_name(ca_name: &str, server_names: &[&str]) -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = CertPair {
            cert: ca_cert.pem(),
            key: ca_key.serialize_pem(),
        };
        let issuer = Issuer::new(ca_params, ca_key);

        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        names.extend(server_names.iter().map(|s| (*s).to_owned()));
        let server = leaf(
            &issuer,
            names,
            "natty-server",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let client = leaf(
            &issuer,
            Vec::new(),
            "natty-client",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(Self { ca, server, client })
    }
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    names: Vec<String>,
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<CertPair> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer)?;
    Ok(CertPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}
