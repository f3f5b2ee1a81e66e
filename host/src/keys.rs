//! Merchant API keys, verified offline.
//!
//! A key is `sk_<mode>_<merchant id>_<tag>`, where tag is the first 128 bits
//! of HMAC-SHA256(secret, "payfn-api-key:v1:<merchant id>") in hex. Verifying
//! is one HMAC: no network hop, no key table. Rotating the secret revokes
//! every key at once; `[keys] previous_secrets` keeps old keys valid during a
//! rotation.

use std::path::Path;

use anyhow::{bail, Context};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of MAC kept in a key.
const TAG_BYTES: usize = 16;
/// Environment variable that carries the production secret.
pub const SECRET_ENV: &str = "PAYFN_KEY_SECRET";
/// File under the state directory holding the development secret.
const DEV_SECRET_FILE: &str = "dev-key-secret";

/// The `[keys]` section of the runtime config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Hex secret, at least 32 bytes. `PAYFN_KEY_SECRET` takes precedence;
    /// with neither, a development secret is created in the state directory.
    pub secret: Option<String>,
    /// Older secrets whose keys are still accepted.
    #[serde(default)]
    pub previous_secrets: Vec<String>,
}

/// Issues and verifies keys.
#[derive(Clone)]
pub struct KeyRing {
    /// `dev` for the local development secret, `live` otherwise.
    pub mode: &'static str,
    current: Vec<u8>,
    previous: Vec<Vec<u8>>,
}

impl KeyRing {
    /// The secrets from the environment, the config, or the state directory.
    pub fn load(config: &KeysConfig, state_dir: &Path) -> anyhow::Result<Self> {
        let previous = config
            .previous_secrets
            .iter()
            .map(|s| parse_secret(s).context("[keys] previous_secrets"))
            .collect::<anyhow::Result<_>>()?;
        if let Ok(secret) = std::env::var(SECRET_ENV) {
            let current = parse_secret(&secret).with_context(|| format!("${SECRET_ENV}"))?;
            return Ok(Self { mode: "live", current, previous });
        }
        if let Some(secret) = &config.secret {
            let current = parse_secret(secret).context("[keys] secret")?;
            return Ok(Self { mode: "live", current, previous });
        }
        Ok(Self { mode: "dev", current: dev_secret(state_dir)?, previous })
    }

    #[cfg(test)]
    fn with_secret(secret: &[u8]) -> Self {
        Self { mode: "test", current: secret.to_vec(), previous: Vec::new() }
    }

    /// The key of `merchant_id`.
    pub fn issue(&self, merchant_id: i64) -> String {
        format!("sk_{}_{merchant_id}_{}", self.mode, hex::encode(tag(&self.current, merchant_id)))
    }

    /// The merchant a key belongs to, or `None` if it is not a valid key.
    pub fn verify(&self, key: &str) -> Option<i64> {
        let rest = key.strip_prefix("sk_")?;
        let (_mode, rest) = rest.split_once('_')?;
        let (merchant, tag_hex) = rest.split_once('_')?;
        let merchant_id: i64 = merchant.parse().ok().filter(|id| *id > 0)?;
        let given = hex::decode(tag_hex).ok().filter(|t| t.len() == TAG_BYTES)?;
        std::iter::once(&self.current)
            .chain(&self.previous)
            .any(|secret| mac(secret, merchant_id).verify_truncated_left(&given).is_ok())
            .then_some(merchant_id)
    }
}

fn mac(secret: &[u8], merchant_id: i64) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(format!("payfn-api-key:v1:{merchant_id}").as_bytes());
    mac
}

fn tag(secret: &[u8], merchant_id: i64) -> Vec<u8> {
    mac(secret, merchant_id).finalize().into_bytes()[..TAG_BYTES].to_vec()
}

fn parse_secret(hex_text: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = hex::decode(hex_text.trim()).context("the key secret must be hex")?;
    if bytes.len() < 32 {
        bail!("the key secret must be at least 32 bytes (64 hex digits)");
    }
    Ok(bytes)
}

/// The development secret, created on first use, readable only by its owner.
fn dev_secret(state_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = state_dir.join(DEV_SECRET_FILE);
    let text = local_secret(&path)?;
    parse_secret(&text).with_context(|| format!("{}", path.display()))
}

/// The hex secret in `path`, created (32 random bytes, mode 0600) if absent.
/// Several hosts on one state directory may race here: one file wins and
/// every one of them reads it.
pub fn local_secret(path: &Path) -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        return Ok(text.trim().to_string());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let secret: [u8; 32] = rand::random();
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, hex::encode(secret))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    if std::fs::hard_link(&tmp, path).is_err() && !path.exists() {
        bail!("cannot create {}", path.display());
    }
    let _ = std::fs::remove_file(&tmp);
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_verify_and_forgeries_do_not() {
        let ring = KeyRing::with_secret(&[7; 32]);
        let key = ring.issue(42);
        assert_eq!(ring.verify(&key), Some(42));
        let other = KeyRing::with_secret(&[8; 32]);
        assert_eq!(other.verify(&key), None);
        // Same tag, another merchant.
        assert_eq!(ring.verify(&key.replace("_42_", "_43_")), None);
        for bad in ["", "sk_", "sk_test_42", "sk_test_x_00", "sk_test_-1_00", "Bearer", &key[..key.len() - 2]]
        {
            assert_eq!(ring.verify(bad), None, "{bad}");
        }
    }
}
