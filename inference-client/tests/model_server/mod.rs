//! The real model for tests: `model-server/serve.sh` installs SmolLM2-135M-Instruct and llama.cpp's OpenAI server
//! (cached after the first run) and starts it on a free port of 127.0.0.1; dropping the handle stops it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

/// The model name the server answers to.
pub const MODEL: &str = "smollm2";

pub struct ModelServer {
    pid: Option<u32>,
    pub url: String,
}

/// The script, found from the crate that includes this module (`inference-client` or a sibling such as `engine`).
fn script() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let own = manifest.join("model-server/serve.sh");
    if own.exists() {
        own
    } else {
        manifest.join("../inference-client/model-server/serve.sh")
    }
}

impl ModelServer {
    /// Starts a server and waits until it answers `/health`. Panics with the script's output when it cannot: a
    /// missing model fails the test, it never skips it.
    pub fn start() -> ModelServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let output = Command::new(script())
            .arg("start")
            .env("TWITCHY_MODEL_PORT", port.to_string())
            .output()
            .expect("model-server/serve.sh runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "model-server/serve.sh start failed: {}\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let mut fields = stdout.split_whitespace();
        let pid = fields
            .next()
            .and_then(|pid| pid.parse().ok())
            .expect("serve.sh prints the pid");
        let url = fields.next().expect("serve.sh prints the URL").to_owned();
        eprintln!("model server {pid} at {url}");
        ModelServer {
            pid: Some(pid),
            url,
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL if it lingers) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new(script())
                .args(["stop", &pid.to_string()])
                .status();
        }
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        self.kill();
    }
}
