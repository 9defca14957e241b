//! `restapi.ciphers`: an OpenSSL cipher string (`ECDHE-RSA-AES256-GCM-SHA384:
//! ECDHE-ECDSA-AES256-GCM-SHA384`, `HIGH:!aNULL:!MD5`), as Patroni hands it
//! to Python's `ssl`, read against the TLS 1.2 suites pgwarden's TLS
//! library has (all ECDHE with AES-GCM or ChaCha20-Poly1305). As in OpenSSL
//! the string chooses TLS 1.2 suites only; TLS 1.3's are always on. A
//! string that leaves none is refused, as Python's `ssl` refuses it ("No
//! cipher can be selected").

/// The TLS 1.2 suites pgwarden can offer, by OpenSSL name, with the
/// attributes OpenSSL's aliases select on: authentication, cipher, digest.
pub const TLS12_SUITES: &[(&str, &str, &str, &str)] = &[
    ("ECDHE-ECDSA-AES256-GCM-SHA384", "ECDSA", "AES256GCM", "SHA384"),
    ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDSA", "AES128GCM", "SHA256"),
    ("ECDHE-ECDSA-CHACHA20-POLY1305", "ECDSA", "CHACHA20", "SHA256"),
    ("ECDHE-RSA-AES256-GCM-SHA384", "RSA", "AES256GCM", "SHA384"),
    ("ECDHE-RSA-AES128-GCM-SHA256", "RSA", "AES128GCM", "SHA256"),
    ("ECDHE-RSA-CHACHA20-POLY1305", "RSA", "CHACHA20", "SHA256"),
];

/// OpenSSL aliases that select only suites pgwarden never offers (weak,
/// export, anonymous, static-key, other ciphers): they add nothing and
/// their exclusion changes nothing.
const NOTHING_HERE: &[&str] = &[
    "aNULL",
    "eNULL",
    "NULL",
    "ADH",
    "AECDH",
    "EXP",
    "EXPORT",
    "LOW",
    "MEDIUM",
    "MD5",
    "RC4",
    "DES",
    "3DES",
    "IDEA",
    "SEED",
    "CAMELLIA",
    "ARIA",
    "PSK",
    "SRP",
    "DSS",
    "aDSS",
    "kRSA",
    "RSAPSK",
    "kDHE",
    "kEDH",
    "DHE",
    "EDH",
    "DH",
    "kDH",
    "ECDH",
    "kECDH",
    "aECDH",
    "SHA1",
    "SHA",
    "CBC",
    "AESCCM",
    "AESCCM8",
    "CCM",
    "GOST",
    "kGOST",
    "SSLv3",
    "TLSv1",
    "TLSv1.0",
    "aPSK",
    "kPSK",
    "kECDHEPSK",
    "kDHEPSK",
    "kSRP",
    "aGOST",
    "COMPLEMENTOFDEFAULT",
];

/// Whether one alias (no `+` inside) selects suite `s`.
fn selects(alias: &str, s: &(&str, &str, &str, &str)) -> Option<bool> {
    let (name, auth, cipher, digest) = *s;
    if TLS12_SUITES.iter().any(|(other, ..)| alias.eq_ignore_ascii_case(other)) {
        return Some(alias.eq_ignore_ascii_case(name));
    }
    Some(match alias {
        "ALL" | "DEFAULT" | "HIGH" | "FIPS" | "TLSv1.2" | "ECDHE" | "EECDH" | "kECDHE" | "kEECDH" | "AEAD" => true,
        "COMPLEMENTOFALL" => false,
        "ECDSA" | "aECDSA" => auth == "ECDSA",
        "RSA" | "aRSA" => auth == "RSA",
        "AES" | "AESGCM" => cipher.starts_with("AES"),
        "AES256" => cipher == "AES256GCM",
        "AES128" => cipher == "AES128GCM",
        "CHACHA20" => cipher == "CHACHA20",
        "SHA384" => digest == "SHA384",
        "SHA256" => digest == "SHA256",
        _ if NOTHING_HERE.contains(&alias) => false,
        _ => return None,
    })
}

/// The TLS 1.2 suites `text` chooses, in order, or why it cannot be used;
/// the second list holds the parts no OpenSSL alias pgwarden knows names
/// (ignored, as OpenSSL ignores them).
pub fn parse(text: &str) -> Result<(Vec<&'static str>, Vec<String>), String> {
    let mut chosen: Vec<&'static str> = Vec::new();
    let mut banned: Vec<&'static str> = Vec::new();
    let mut unknown = Vec::new();
    for token in text.split([':', ',', ' ']).map(str::trim).filter(|t| !t.is_empty()) {
        if token.starts_with('@') {
            continue; // @STRENGTH, @SECLEVEL=n: every suite here is strong
        }
        let (op, body) = match token.as_bytes()[0] {
            b'!' | b'-' | b'+' => (token.as_bytes()[0], &token[1..]),
            _ => (b' ', token),
        };
        let mut matched = Vec::new();
        let mut known = true;
        for suite in TLS12_SUITES {
            let mut all = true;
            for alias in body.split('+') {
                match selects(alias, suite) {
                    Some(yes) => all &= yes,
                    None => known = false,
                }
            }
            if all && known {
                matched.push(suite.0);
            }
        }
        if !known {
            unknown.push(token.to_string());
            continue;
        }
        match op {
            b'!' => {
                chosen.retain(|s| !matched.contains(s));
                banned.extend(matched);
            }
            b'-' => chosen.retain(|s| !matched.contains(s)),
            b'+' => {
                let moved: Vec<&'static str> = chosen.iter().copied().filter(|s| matched.contains(s)).collect();
                chosen.retain(|s| !matched.contains(s));
                chosen.extend(moved);
            }
            _ => {
                for suite in matched {
                    if !chosen.contains(&suite) && !banned.contains(&suite) {
                        chosen.push(suite);
                    }
                }
            }
        }
    }
    if chosen.is_empty() {
        let offered: Vec<&str> = TLS12_SUITES.iter().map(|s| s.0).collect();
        return Err(format!(
            "selects no cipher pgwarden can offer (as Python's ssl: \"No cipher can be selected\"); it has the \
             TLS 1.2 suites {}",
            offered.join(", ")
        ));
    }
    Ok((chosen, unknown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_cipher_strings_choose_as_openssl_does() {
        let names = |text: &str| parse(text).expect("valid").0;
        assert_eq!(
            names("ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384"),
            ["ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384"],
            "in the order written"
        );
        assert_eq!(names("HIGH:!aNULL:!MD5").len(), 6, "every suite here is HIGH");
        assert_eq!(names("ECDHE+AESGCM:!ECDSA"), ["ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256"]);
        assert_eq!(
            names("AES128:AES256:-AES128:AES128"),
            [
                "ECDHE-ECDSA-AES256-GCM-SHA384",
                "ECDHE-RSA-AES256-GCM-SHA384",
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "ECDHE-RSA-AES128-GCM-SHA256"
            ],
            "`-` removes, a later mention adds again"
        );
        assert_eq!(names("!CHACHA20:ALL").len(), 4, "`!` bans for good");
        assert_eq!(names("ALL:+CHACHA20")[4..], ["ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"]);
        let (chosen, unknown) = parse("ECDHE-RSA-AES128-GCM-SHA256:BOGUS-CIPHER").expect("valid");
        assert_eq!((chosen, unknown), (vec!["ECDHE-RSA-AES128-GCM-SHA256"], vec!["BOGUS-CIPHER".to_string()]));
        let err = parse("AES128-SHA:DES-CBC3-SHA:!ECDHE").expect_err("nothing left");
        assert!(err.contains("No cipher can be selected"), "{err}");
        assert!(parse("RC4:MD5").is_err(), "weak aliases select nothing here");
    }
}
