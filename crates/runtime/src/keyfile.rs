//! Private keys read from PEM files, as Patroni's Python `ssl` reads them:
//! unencrypted, or PKCS#8 encrypted (`-----BEGIN ENCRYPTED PRIVATE
//! KEY-----`, what `openssl pkcs8 -topk8 -v2 aes-256-cbc` and OpenSSL 3's
//! `genpkey -aes256` write) with the passphrase from `keyfile_password`.
//! OpenSSL's older per-key encryption (`Proc-Type: 4,ENCRYPTED`) is refused
//! with the command that converts it.

use anyhow::{Context as _, bail};
use pgwarden_config::Secret;
use pkcs8::der::pem::LineEnding;

const ENCRYPTED_BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
const ENCRYPTED_END: &str = "-----END ENCRYPTED PRIVATE KEY-----";

/// The unencrypted PEM private key in `path` (`setting` names the file's
/// setting, `password_setting` the passphrase's, for the messages).
pub fn read_private_key_pem(
    path: &std::path::Path,
    password: Option<&Secret>,
    setting: &str,
    password_setting: &str,
) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {setting} {}", path.display()))?;
    decrypt_pem(&text, password, password_setting).with_context(|| format!("{setting} {}", path.display()))
}

/// `text` with its private key decrypted, if it is encrypted; the key alone.
pub fn decrypt_pem(text: &str, password: Option<&Secret>, password_setting: &str) -> anyhow::Result<String> {
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        bail!(
            "the key is encrypted in OpenSSL's legacy format, which pgwarden does not read: convert it with \
             `openssl pkcs8 -topk8 -v2 aes-256-cbc -in OLD -out NEW` (same passphrase), or store it unencrypted \
             with mode 0600"
        );
    }
    let Some(start) = text.find(ENCRYPTED_BEGIN) else {
        if !text.contains("PRIVATE KEY-----") {
            bail!("holds no PEM private key");
        }
        return Ok(text.to_string());
    };
    let end = text[start..].find(ENCRYPTED_END).context("an encrypted private key without its END line")? + start;
    let Some(password) = password else {
        bail!("the private key is encrypted: set {password_setting} to its passphrase");
    };
    let block = &text[start..end + ENCRYPTED_END.len()];
    let (_, document) = pkcs8::SecretDocument::from_pem(block).context("read the encrypted private key")?;
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(document.as_bytes())
        .context("the encrypted private key is not PKCS#8")?;
    let key = info.decrypt(password.expose()).map_err(|e| {
        anyhow::anyhow!("the private key does not decrypt with {password_setting} ({e}): check the passphrase")
    })?;
    Ok(key.to_pem("PRIVATE KEY", LineEnding::LF).context("encode the decrypted key")?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_keys_pass_and_legacy_encryption_is_refused_with_the_fix() {
        let plain = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
        assert_eq!(decrypt_pem(plain, None, "restapi.keyfile_password").expect("plain"), plain);
        let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nAA==\n\
                      -----END RSA PRIVATE KEY-----\n";
        let err = decrypt_pem(legacy, Some(&Secret::new("x")), "restapi.keyfile_password").expect_err("legacy");
        assert!(err.to_string().contains("openssl pkcs8 -topk8"), "{err}");
        let encrypted = format!("{ENCRYPTED_BEGIN}\nAA==\n{ENCRYPTED_END}\n");
        let err = decrypt_pem(&encrypted, None, "restapi.keyfile_password").expect_err("no passphrase");
        assert!(err.to_string().contains("set restapi.keyfile_password"), "{err}");
        assert!(decrypt_pem("nothing", None, "x").is_err());
    }
}
