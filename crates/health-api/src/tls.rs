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
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certfile)
        .with_context(|| format!("read restapi.certfile {}", certfile.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parse restapi.certfile {} (PEM certificates expected)", certfile.display()))?;
    if certs.is_empty() {
        bail!("restapi.certfile {} holds no certificate", certfile.display());
    }
    let keyfile = restapi.keyfile.as_ref().unwrap_or(certfile);
    // Decrypted with restapi.keyfile_password when it is encrypted, as Patroni's.
    let pem = pgwarden_runtime::keyfile::read_private_key_pem(
        keyfile,
        restapi.keyfile_password.as_ref(),
        "restapi.keyfile",
        "restapi.keyfile_password",
    )?;
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .with_context(|| format!("read the private key from {} (restapi.keyfile)", keyfile.display()))?;
    let provider = Arc::new(provider(restapi.ciphers.as_deref()));
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

/// The TLS provider with the TLS 1.2 suites `restapi.ciphers` allows, in
/// its order (TLS 1.3's always, as OpenSSL's cipher string leaves them).
fn provider(ciphers: Option<&[&str]>) -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(names) = ciphers {
        let (mut chosen, tls12): (Vec<_>, Vec<_>) =
            provider.cipher_suites.iter().copied().partition(|s| matches!(s, rustls::SupportedCipherSuite::Tls13(_)));
        for name in names {
            chosen.extend(tls12.iter().copied().filter(|s| openssl_name(s.suite()) == Some(*name)));
        }
        provider.cipher_suites = chosen;
    }
    provider
}

/// OpenSSL's name of a TLS 1.2 suite (`pgwarden_config::ciphers::TLS12_SUITES`).
fn openssl_name(suite: rustls::CipherSuite) -> Option<&'static str> {
    use rustls::CipherSuite as C;
    Some(match suite {
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => return None,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphers_keep_tls13_and_the_chosen_tls12_suites_in_order() {
        let every = provider(None).cipher_suites.len();
        let all_named = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)))
            .all(|s| openssl_name(s.suite()).is_some());
        assert!(all_named && every == 9, "each TLS 1.2 suite has its OpenSSL name");
        let chosen = provider(Some(&["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"]));
        let names: Vec<Option<&str>> = chosen.cipher_suites.iter().map(|s| openssl_name(s.suite())).collect();
        assert_eq!(
            names,
            [None, None, None, Some("ECDHE-RSA-AES128-GCM-SHA256"), Some("ECDHE-ECDSA-AES256-GCM-SHA384")],
            "TLS 1.3's three, then the chosen ones in order"
        );
    }
}
