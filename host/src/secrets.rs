//! Where secrets come from, and keeping them out of logs, banners and
//! error messages.
//!
//! Invariant: a password, key or token from the runtime config or the
//! environment is never written to a log line, the start-up summary, the
//! admin API or an error message; what names a backend (a URL) is shown
//! through [`redact_url`].

/// `scheme://user:secret@host/db` -> `scheme://user:***@host/db`; a URL
/// without a password is returned as it is.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A backend URL given as `url` or as `url_env` (the name of an
/// environment variable holding it, so a password stays out of files):
/// `None` when neither is given. `place` names the section in errors
/// (`[kv]`, `[control]`, ``shard `a`:``); no error shows a value.
pub fn url_or_env(
    place: &str,
    url: Option<&String>,
    url_env: Option<&String>,
) -> anyhow::Result<Option<String>> {
    match (url, url_env) {
        (None, None) => Ok(None),
        (Some(url), None) => Ok(Some(url.clone())),
        (None, Some(var)) => std::env::var(var)
            .map(Some)
            .map_err(|_| anyhow::anyhow!("runtime config: {place} url_env names `{var}`, which is not set")),
        (Some(_), Some(_)) => anyhow::bail!("runtime config: {place} takes `url` or `url_env`, not both"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_urls_shown() {
        assert_eq!(redact_url("mysql://payfn:s3cret@db-1:3306/payfn"), "mysql://payfn:***@db-1:3306/payfn");
        assert_eq!(redact_url("rediss://:s3cret@cache:6380/0"), "rediss://:***@cache:6380/0");
        assert_eq!(redact_url("postgres://localhost/payfn"), "postgres://localhost/payfn");
        assert_eq!(redact_url("postgres://payfn@db/payfn"), "postgres://payfn@db/payfn");
        // An @ in the password is still hidden: the last @ ends the credentials.
        assert_eq!(redact_url("mysql://u:p@ss@db/x"), "mysql://u:***@db/x");
    }
}
