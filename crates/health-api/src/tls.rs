//! HTTPS for the REST API: `restapi.certfile` / `keyfile` (PEM), and client
//! certificates checked against `restapi.cafile` per `restapi.verify_client`
//! (`none`; `optional`: the unsafe endpoints need one; `required`: every
//! request needs one, refused at the handshake).

use std::sync::Arc;

use anyhow::{Context as _, bail};
use pgwarden_config::{RestApi, VerifyClient};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// Whether write endpoints need a verified client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    None,
    OptionalForReads,
    Required,
}

/// The TLS acceptor for `restapi`, or `None` for plain HTTP.
pub fn acceptor(restapi: &RestApi) -> anyhow::Result<Option<(tokio_rustls::TlsAcceptor, ClientCerts)>> {
    let Some(certfile) = &restapi.certfile else {
        if restapi.verify_client != VerifyClient::None {
            bail!(
                "restapi.verify_client is {:?} but restapi.certfile is not set: client certificates need HTTPS",
                restapi.verify_client.as_str()
            );
        }
        return Ok(None);
    };
    if restapi.keyfile_password.is_some() {
        bail!(
            "restapi.keyfile_password: encrypted private keys are not supported; store the key unencrypted with mode 0600"
        );
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certfile)
        .with_context(|| format!("read restapi.certfile {}", certfile.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parse restapi.certfile {} (PEM certificates expected)", certfile.display()))?;
    if certs.is_empty() {
        bail!("restapi.certfile {} holds no certificate", certfile.display());
    }
    let keyfile = restapi.keyfile.as_ref().unwrap_or(certfile);
    let key = PrivateKeyDer::from_pem_file(keyfile)
        .with_context(|| format!("read the private key from {} (restapi.keyfile)", keyfile.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let mode = match restapi.verify_client {
        VerifyClient::Required => ClientCerts::Required,
        VerifyClient::Optional => ClientCerts::OptionalForReads,
        VerifyClient::None => ClientCerts::None,
    };
    let builder = if mode == ClientCerts::None {
        builder.with_no_client_auth()
    } else {
        let cafile = restapi
            .cafile
            .as_ref()
            .context("restapi.verify_client needs restapi.cafile: the CA that signs client certificates")?;
        let mut roots = rustls::RootCertStore::empty();
        let mut trusted = Vec::new();
        for cert in CertificateDer::pem_file_iter(cafile)
            .with_context(|| format!("read restapi.cafile {}", cafile.display()))?
        {
            let cert = cert.with_context(|| format!("parse restapi.cafile {}", cafile.display()))?;
            trusted.push(cert.clone());
            roots.add(cert)?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if mode == ClientCerts::OptionalForReads { verifier.allow_unauthenticated() } else { verifier };
        let inner = verifier.build().context("client certificate verifier")?;
        builder.with_client_cert_verifier(Arc::new(PinnedSelfSigned { inner, trusted }))
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .with_context(|| format!("restapi.keyfile {} does not match restapi.certfile", keyfile.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some((tokio_rustls::TlsAcceptor::from(Arc::new(config)), mode)))
}

/// Client certificates as webpki checks them, plus one case Patroni (Python's
/// ssl) accepts and webpki refuses: a self-signed certificate that is its own
/// CA (`CA:TRUE`), presented by a client while `restapi.cafile` lists that very
/// certificate (as Patroni's own test suite sets it up). It is accepted only
/// when webpki's one objection is `CaUsedAsEndEntity` (its validity period was
/// checked before that) and the certificate is byte for byte one of
/// `restapi.cafile`'s; the handshake's signature still proves the key.
#[derive(Debug)]
struct PinnedSelfSigned {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    trusted: Vec<CertificateDer<'static>>,
}

impl rustls::server::danger::ClientCertVerifier for PinnedSelfSigned {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        match self.inner.verify_client_cert(end_entity, intermediates, now) {
            Err(e) if ca_used_as_end_entity(&e) && self.trusted.iter().any(|t| t.as_ref() == end_entity.as_ref()) => {
                Ok(rustls::server::danger::ClientCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// rustls passes webpki's `CaUsedAsEndEntity` on as an opaque error.
fn ca_used_as_end_entity(error: &rustls::Error) -> bool {
    matches!(error, rustls::Error::InvalidCertificate(rustls::CertificateError::Other(_)))
        && format!("{error:?}").contains("CaUsedAsEndEntity")
}
