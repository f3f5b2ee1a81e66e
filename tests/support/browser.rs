//! A headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`), for end-to-end tests of the admin console. Each
//! [`Browser`] runs its own chromedriver on a free port and stops it when
//! dropped. Screenshots go to `target/test-artifacts/<suite>/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// The browser binary Debian installs.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Its WebDriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long a wait for the page lasts before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(45);

pub struct Browser {
    pub client: Client,
    driver: Child,
    artifacts: PathBuf,
    shots: usize,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session. Fails (never
    /// skips) when either is missing: `.ci/run` installs them.
    pub async fn start(suite: &str) -> Browser {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(binary).exists(),
                "{binary} is missing: install Debian's chromium and chromium-driver (see .ci/run)"
            );
        }
        let (mut driver, port) = start_driver().await;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                // Root in a container: no sandbox; no GPU; a screen-sized window.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1440,1800"],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last_error = String::new();
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(capabilities.clone()).connect(&url).await {
                Ok(client) => {
                    let artifacts = crate::support::repo().join("target/test-artifacts").join(suite);
                    std::fs::create_dir_all(&artifacts).expect("artifacts directory");
                    return Browser { client, driver, artifacts, shots: 0 };
                }
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = driver.kill();
        panic!("no WebDriver session: {last_error}");
    }

    /// Saves a screenshot as `NN-name.png` and returns its path.
    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
        self.shots += 1;
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.artifacts.join(format!("{:02}-{name}.png", self.shots));
        std::fs::write(&path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// The element at `css`, once it exists.
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element `{css}`: {e}"))
    }

    /// Waits until the text of the element at `css` satisfies `check`, and
    /// returns it.
    pub async fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut seen = String::new();
        while tokio::time::Instant::now() < deadline {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                if let Ok(text) = element.text().await {
                    if check(&text) {
                        return text;
                    }
                    seen = text;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("waited {PATIENCE:?} for {what} at `{css}`; last text: {seen:?}");
    }

    /// Clicks the element at `css`.
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap_or_else(|e| panic!("click `{css}`: {e}"));
    }

    /// Clicks the element at `css` and accepts the confirmation it opens
    /// (clicking again, found afresh, if no confirmation came).
    pub async fn click_and_confirm(&self, css: &str) {
        for _ in 0..5 {
            self.click(css).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while tokio::time::Instant::now() < deadline {
                if self.client.accept_alert().await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("no confirmation after clicking `{css}`");
    }

    /// Ends the session and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

/// chromedriver on a port picked free and then released: another process
/// may take the port first (chromedriver then exits, or serves only IPv6),
/// so it counts as started only once it holds the IPv4 listener itself,
/// and a new port is tried otherwise.
async fn start_driver() -> (Child, u16) {
    for _attempt in 0..5 {
        let port = crate::support::free_port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        if crate::support::listening(&mut driver, port).await {
            return (driver, port);
        }
        let _ = driver.kill();
        let _ = driver.wait();
    }
    panic!("chromedriver did not start on a free port in 5 attempts");
}
