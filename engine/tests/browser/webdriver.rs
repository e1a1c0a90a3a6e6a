//! Headless Chromium driven over WebDriver: starts `chromedriver` on a free 127.0.0.1 port,
//! opens a fantoccini session, and kills the driver's whole process group when dropped (so a
//! panicking test leaves no browser behind).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// Longest wait for chromedriver to accept connections after it started.
const DRIVER_START_TIMEOUT_MS: u64 = 20_000;
/// Interval between two checks of a waited-for condition in the page.
const POLL_INTERVAL_MS: u64 = 100;

const CHROMIUM_CANDIDATES: &[&str] = &[
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
];
const DRIVER_CANDIDATES: &[&str] = &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];

fn find_executable(env_key: &str, candidates: &[&str], name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_key) {
        // An explicit choice is final: a wrong path is reported as missing, not replaced.
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| {
            let paths = std::env::var_os("PATH")?;
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
}

/// Where screenshots and failure dumps go: `target/browser-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    let target_tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = target_tmp
        .parent()
        .unwrap_or(target_tmp)
        .join("browser-artifacts");
    std::fs::create_dir_all(&dir).expect("create artifacts dir");
    dir
}

/// The chromedriver process. Dropping it kills the process group it leads, which holds the
/// browser processes too.
struct DriverProcess {
    child: Child,
}

impl Drop for DriverProcess {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on the process group this test created for its own child.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session plus the processes behind it.
pub struct Browser {
    pub client: Client,
    pub name: String,
    // Field order matters: the session handle goes before the driver is killed, and the profile
    // directory is removed last.
    _driver: DriverProcess,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile, window `width`×`height`.
    /// Panics with installation advice when Chromium or chromedriver is missing.
    pub async fn start(name: &str, width: u32, height: u32) -> Browser {
        Browser::start_with(name, width, height, &[]).await
    }

    /// As [`Browser::start`], with extra Chromium switches.
    pub async fn start_with(name: &str, width: u32, height: u32, extra_args: &[&str]) -> Browser {
        let chromium = find_executable("CHROMIUM", CHROMIUM_CANDIDATES, "chromium");
        let driver = find_executable("CHROMEDRIVER", DRIVER_CANDIDATES, "chromedriver");
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            panic!(
                "the browser tests need Chromium and chromedriver, and at least one is missing \
                 (looked in $CHROMIUM / $CHROMEDRIVER, {CHROMIUM_CANDIDATES:?}, {DRIVER_CANDIDATES:?} and PATH). \
                 On Debian: apt-get install -y chromium chromium-driver"
            );
        };
        let port = free_port();
        let mut command = Command::new(&driver);
        command
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the browser it starts can be killed with it.
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", driver.display()));
        let driver_process = DriverProcess { child };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                started.elapsed() < Duration::from_millis(DRIVER_START_TIMEOUT_MS),
                "chromedriver did not listen on {addr} within {DRIVER_START_TIMEOUT_MS} ms"
            );
            std::thread::sleep(Duration::from_millis(50));
        }

        let profile = tempfile::tempdir().expect("profile dir");
        let mut args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium, "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://{addr}"))
            .await
            .unwrap_or_else(|e| panic!("start a Chromium session through chromedriver: {e}"));
        Browser {
            client,
            name: name.to_owned(),
            _driver: driver_process,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        match self.client.execute(script, args).await {
            Ok(value) => value,
            Err(e) => self.fail(&format!("script failed: {e}\n{script}")).await,
        }
    }

    /// Polls `script` until it returns something truthy (not null/false/0/""), and returns that.
    pub async fn wait_js(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
        args: Vec<Value>,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.js(script, args.clone()).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                self.fail::<()>(&format!(
                    "timed out after {timeout:?} waiting for: {what} (last value {value})"
                ))
                .await;
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        let element = match self.client.find(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => self.fail(&format!("find {css}: {e}")).await,
        };
        if let Err(e) = element.click().await {
            self.fail::<()>(&format!("click {css}: {e}")).await;
        }
    }

    /// Types `keys` into the element matching `css` (real key events; "\u{E007}" is Enter).
    pub async fn type_into(&self, css: &str, keys: &str) {
        let element = match self.client.find(Locator::Css(css)).await {
            Ok(element) => element,
            Err(e) => self.fail(&format!("find {css}: {e}")).await,
        };
        if let Err(e) = element.send_keys(keys).await {
            self.fail::<()>(&format!("type into {css}: {e}")).await;
        }
    }

    /// Types into the focused element, as a keyboard-only user would.
    pub async fn type_active(&self, keys: &str) {
        let element = match self.client.active_element().await {
            Ok(element) => element,
            Err(e) => self.fail(&format!("active element: {e}")).await,
        };
        if let Err(e) = element.send_keys(keys).await {
            self.fail::<()>(&format!("type into the focused element: {e}"))
                .await;
        }
    }

    /// Saves a PNG of the window under `target/browser-artifacts/`.
    pub async fn screenshot(&self, file: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = artifacts_dir().join(file);
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Saves a screenshot and the visible chat text, then panics with `message`.
    pub async fn fail<T>(&self, message: &str) -> T {
        let shot = match self.client.screenshot().await {
            Ok(png) => {
                let path = artifacts_dir().join(format!("failure-{}.png", self.name));
                std::fs::write(&path, png).ok().map(|_| path)
            }
            Err(_) => None,
        };
        let page_text = self
            .client
            .execute(
                "return document.body ? document.body.innerText : ''",
                vec![],
            )
            .await
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        let tail: String = {
            let lines: Vec<&str> = page_text.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        };
        panic!(
            "[{}] {message}\nscreenshot: {shot:?}\npage text (tail):\n{tail}",
            self.name
        );
    }

    /// Ends the session; Chromium exits, then chromedriver is killed on drop.
    pub async fn close(self) {
        let Browser {
            client,
            _driver,
            _profile,
            ..
        } = self;
        let _ = client.close().await;
        drop(_driver);
        drop(_profile);
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind for a free port");
    listener.local_addr().expect("local addr").port()
}
