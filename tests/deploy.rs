//! The files in `deploy/`, checked: Debian's nginx started with `deploy/nginx.conf` in front of
//! the real gateway (a job streams over the WebSocket, SSE arrives unbuffered, a large tus
//! PATCH passes, the access log holds no ticket); the systemd unit through
//! `systemd-analyze verify` and `security`; the compose file (YAML parsed by PyYAML, then its
//! structure checked here) and the Dockerfile (parsed here: no Docker daemon runs on the test
//! machine, so neither `docker compose config` nor `docker build --check` can); the Grafana
//! dashboard against the metrics the gateway really exports; `outlast health`.
//!
//! Tools missing on the machine are installed with apt-get (the test machine is Debian, root).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use outlast_e2e::Gateway;
use outlast_e2e::ws::Client;
use outlast_protocol::v1::ClientMsg;
use outlast_protocol::{Codec, JobState};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);
const ALICE: &str = "alice-static-secret-0123456789";
/// `uploads.max_chunk_bytes`' default (docs/operations.md): nginx must let a chunk this big in.
const DEFAULT_MAX_CHUNK: u64 = 64 << 20;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

fn deploy_file(name: &str) -> anyhow::Result<String> {
    let path = root().join("deploy").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The path of `bin`, installing Debian's `package` with apt-get when it is missing.
fn ensure_tool(bin: &str, package: &str) -> anyhow::Result<PathBuf> {
    let find = || {
        std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .chain(["/usr/sbin", "/sbin"])
            .map(|d| Path::new(d).join(bin))
            .find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let install = || {
        std::process::Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300", "install", "-y"])
            .args(["--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !install() {
        let _ = std::process::Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300", "update"])
            .stdout(Stdio::null())
            .status();
        ensure!(install(), "apt-get install {package} failed");
    }
    find().with_context(|| format!("{bin} is missing after installing {package}"))
}

/// A free port on 127.0.0.1 (bound, then released for the child that will take it).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One directive's value in an nginx file (`name value;`), first occurrence.
fn directive<'a>(conf: &'a str, name: &str) -> Option<&'a str> {
    conf.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().trim_end_matches(';').trim())
}

/// nginx sizes (`100m`, `1k`, `512`) in bytes.
fn nginx_size(v: &str) -> Option<u64> {
    let (num, mult) = match v.chars().last()? {
        'k' | 'K' => (&v[..v.len() - 1], 1 << 10),
        'm' | 'M' => (&v[..v.len() - 1], 1 << 20),
        'g' | 'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

/// nginx times (`120s`, `2m`, `90`) in seconds.
fn nginx_secs(v: &str) -> Option<u64> {
    if let Some(m) = v.strip_suffix('m') {
        return m.parse::<u64>().ok().map(|n| n * 60);
    }
    v.trim_end_matches('s').parse().ok()
}

#[test]
fn nginx_conf_has_upgrade_long_timeouts_no_buffering_and_room_for_a_chunk() -> anyhow::Result<()> {
    let conf = deploy_file("nginx.conf")?;
    let want = [
        ("proxy_http_version", "1.1"),
        ("proxy_set_header Upgrade", "$http_upgrade"),
        ("proxy_set_header Connection", "$connection_upgrade"),
        ("proxy_set_header Host", "$host"),
        ("proxy_buffering", "off"),
        ("proxy_request_buffering", "off"),
    ];
    for (name, value) in want {
        assert_eq!(directive(&conf, name), Some(value), "{name}");
    }
    // Longer than the 25 s ping with room to spare, and than nginx's 60 s default.
    for name in [
        "proxy_read_timeout",
        "proxy_send_timeout",
        "client_body_timeout",
    ] {
        let secs = directive(&conf, name).and_then(nginx_secs);
        assert!(secs.is_some_and(|s| s > 60), "{name}: {secs:?}");
    }
    let body = directive(&conf, "client_max_body_size").and_then(nginx_size);
    assert!(
        body.is_some_and(|b| b > DEFAULT_MAX_CHUNK),
        "client_max_body_size {body:?} must exceed the largest chunk ({DEFAULT_MAX_CHUNK})"
    );
    // The access log format leaves out the query string (tickets).
    let format_start = conf.find("log_format").context("a log_format")?;
    let format = &conf[format_start
        ..conf[format_start..]
            .find(';')
            .map_or(conf.len(), |e| e + format_start)];
    assert!(
        !format.contains("$request ")
            && !format.contains("$request\"")
            && !format.contains("$args")
            && !format.contains("$request_uri")
            && !format.contains("$query_string"),
        "the access log must not contain query strings: {format}"
    );
    Ok(())
}

/// nginx running `deploy/nginx.conf` (templated: listen port, upstream port, log path) in the
/// foreground as one process; killed on drop.
struct Nginx {
    child: tokio::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(upstream: u16) -> anyhow::Result<Nginx> {
        let bin = ensure_tool("nginx", "nginx")?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let d = dir.path();
        let site = deploy_file("nginx.conf")?
            .replace(
                "server 127.0.0.1:8080;",
                &format!("server 127.0.0.1:{upstream};"),
            )
            .replace(
                "listen 443 ssl http2;",
                &format!("listen 127.0.0.1:{port};"),
            )
            .replace(
                "/var/log/nginx/outlast.access.log",
                &d.join("access.log").display().to_string(),
            );
        ensure!(
            site.contains(&format!("listen 127.0.0.1:{port};"))
                && site.contains(&format!("server 127.0.0.1:{upstream};"))
                && site.contains("access.log outlast_noquery"),
            "deploy/nginx.conf changed shape; update the template in tests/deploy.rs"
        );
        std::fs::write(d.join("site.conf"), site)?;
        let p = |name: &str| d.join(name).display().to_string();
        let main = format!(
            "daemon off;\nmaster_process off;\npid {pid};\nerror_log {err} info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n  \
             fastcgi_temp_path {t}/fastcgi;\n  uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n  \
             include {site};\n}}\n",
            pid = p("nginx.pid"),
            err = p("error.log"),
            t = d.display(),
            site = p("site.conf"),
        );
        std::fs::write(d.join("nginx.conf"), main)?;
        let test = std::process::Command::new(&bin)
            .args(["-t", "-q", "-p"])
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .output()?;
        ensure!(
            test.status.success(),
            "nginx -t: {}",
            String::from_utf8_lossy(&test.stderr)
        );
        let child = tokio::process::Command::new(&bin)
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let deadline = tokio::time::Instant::now() + T;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "nginx did not listen: {}",
                std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Nginx { child, port, dir })
    }

    fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn ticket(base: &str, token: &str) -> anyhow::Result<String> {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/tickets"))
        .bearer_auth(token)
        .send()
        .await?;
    ensure!(r.status() == 201, "ticket answered {}", r.status());
    let v: Value = r.json().await?;
    Ok(v["ticket"].as_str().context("ticket")?.to_owned())
}

#[tokio::test]
async fn nginx_with_the_deploy_conf_streams_a_job_sse_and_a_large_upload() -> anyhow::Result<()> {
    let gw = Gateway::start_with_tokens(&[("alice", ALICE)], &[]).await?;
    let nginx = Nginx::start(gw.addr.port()).await?;
    let via = outlast_e2e::Api::new(nginx.http()).with_token(ALICE);
    let direct = gw.api().with_token(ALICE);

    // 1. A job submitted and followed over the WebSocket through nginx.
    let job = via
        .submit(&json!({"backend": "demo", "workflow": {"steps": 4, "step_ms": 50}}))
        .await?
        .job_id;
    let ws_url = format!("ws://127.0.0.1:{}/v1/ws", nginx.port);
    let mut ws = Client::connect_bearer(&ws_url, Codec::MsgPack, ALICE).await?;
    ws.send(&ClientMsg::Subscribe {
        req: Some(1),
        job_id: job,
        after: None,
    })
    .await?;
    let mut got = Vec::new();
    while let Some(e) = ws.next_event(T).await? {
        let end = e.kind.is_terminal();
        got.push(e);
        if end {
            break;
        }
    }
    assert_eq!(
        got,
        direct.events(job).await?,
        "every event, in order, through nginx"
    );
    assert_eq!(got.last().map(|e| e.kind.name()), Some("completed"));

    // 2. SSE through nginx arrives while the job still runs (not buffered until the end).
    let slow = via
        .submit(&json!({"backend": "demo", "workflow": {"steps": 10, "step_ms": 300}}))
        .await?
        .job_id;
    let t = ticket(&nginx.http(), ALICE).await?;
    let mut sse = reqwest::Client::new()
        .get(format!("{}/v1/jobs/{slow}/events?ticket={t}", nginx.http()))
        .send()
        .await?;
    assert_eq!(sse.status(), 200);
    let mut text = String::new();
    let state_at_first_progress = loop {
        let chunk = tokio::time::timeout(T, sse.chunk())
            .await??
            .context("the stream ended before any progress")?;
        text.push_str(&String::from_utf8_lossy(&chunk));
        if text.contains("event: progress") {
            break direct.snapshot(slow).await?.state;
        }
    };
    assert!(
        !state_at_first_progress.is_terminal(),
        "the first progress event arrived only after the job ended ({state_at_first_progress:?}): \
         nginx buffered the SSE response"
    );
    while let Some(chunk) = tokio::time::timeout(T, sse.chunk()).await?? {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: completed"), "{text}");
    assert_eq!(direct.snapshot(slow).await?.state, JobState::Completed);

    // 3. A tus PATCH far above nginx's default 1 MiB body limit passes in one piece.
    let size = 16usize << 20;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/uploads", nginx.http()))
        .bearer_auth(ALICE)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", size.to_string())
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("location")?
        .to_owned();
    let path = location
        .find("/v1/uploads/")
        .map(|at| location[at..].to_owned())
        .context("an upload path")?;
    let r = http
        .patch(format!("{}{path}", nginx.http()))
        .bearer_auth(ALICE)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(data)
        .send()
        .await?;
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap_or_default());
    let r = http
        .head(format!("{}{path}", gw.http()))
        .bearer_auth(ALICE)
        .header("tus-resumable", "1.0.0")
        .send()
        .await?;
    assert_eq!(
        r.headers()
            .get("upload-offset")
            .and_then(|v| v.to_str().ok()),
        Some(size.to_string().as_str()),
        "the gateway stored the whole PATCH"
    );

    // 4. The access log saw these requests, but neither the ticket nor the token. nginx logs
    // the WebSocket when it closes.
    ws.ws.close(None).await?;
    drop(ws);
    let deadline = tokio::time::Instant::now() + T;
    let log = loop {
        let log = nginx.access_log();
        if log.contains("/v1/ws") && log.contains(&format!("/v1/jobs/{slow}/events")) {
            break log;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "requests missing in the access log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        !log.contains(&t),
        "the ticket is in nginx's access log:\n{log}"
    );
    assert!(
        !log.contains(ALICE),
        "the token is in nginx's access log:\n{log}"
    );
    Ok(())
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() -> anyhow::Result<()> {
    let analyze = ensure_tool("systemd-analyze", "systemd")?;
    let unit = deploy_file("outlast.service")?;
    for option in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "DynamicUser=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "StateDirectory=outlast",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == option),
            "the unit lacks {option}"
        );
    }
    // `verify` needs ExecStart's binary to exist: point it at a copy in a temp directory.
    let dir = tempfile::tempdir()?;
    let bin = dir.path().join("outlast");
    std::fs::copy(outlast_e2e::binary(), &bin)?;
    ensure!(
        unit.contains("ExecStart=/usr/local/bin/outlast "),
        "ExecStart moved"
    );
    let path = dir.path().join("outlast.service");
    std::fs::write(
        &path,
        unit.replace(
            "ExecStart=/usr/local/bin/outlast ",
            &format!("ExecStart={} ", bin.display()),
        ),
    )?;
    let out = std::process::Command::new(&analyze)
        .arg("verify")
        .arg(&path)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and bad values too, and only warns: any word is a defect.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
    // The exposure score (0 best, 10 worst) must stay at 2.0 or below.
    let out = std::process::Command::new(&analyze)
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&path)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let overall = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("");
    assert!(
        out.status.success(),
        "systemd-analyze security: {overall}\n{stdout}"
    );
    eprintln!("{overall}");
    Ok(())
}

/// Every `OUTLAST_*` variable `outlast --help` documents, plus `OUTLAST_LOG` (the log filter).
fn known_env_vars() -> anyhow::Result<BTreeSet<String>> {
    let out = std::process::Command::new(outlast_e2e::binary())
        .arg("--help")
        .output()?;
    let help = String::from_utf8(out.stdout)?;
    let mut known = env_vars(&help);
    ensure!(known.len() > 20, "--help lists the environment: {help}");
    known.insert("OUTLAST_LOG".to_owned());
    Ok(known)
}

fn env_vars(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("OUTLAST_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        found.insert(name);
    }
    found
}

/// One Dockerfile instruction: keyword (upper case) and its arguments, continuations joined.
fn dockerfile_instructions(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    const KNOWN: [&str; 18] = [
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
        "MAINTAINER",
    ];
    let mut out = Vec::new();
    let mut current = String::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if t.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                let (word, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                let word = word.to_ascii_uppercase();
                ensure!(
                    KNOWN.contains(&word.as_str()),
                    "line {}: unknown instruction {word}",
                    n + 1
                );
                ensure!(
                    !args.trim().is_empty(),
                    "line {}: {word} without arguments",
                    n + 1
                );
                out.push((word, args.trim().to_owned()));
                current.clear();
            }
        }
    }
    ensure!(current.is_empty(), "the file ends inside a continued line");
    Ok(out)
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_with_a_health_check() -> anyhow::Result<()> {
    let text = deploy_file("Dockerfile")?;
    let instructions = dockerfile_instructions(&text)?;
    ensure!(
        instructions.first().map(|(w, _)| w.as_str()) == Some("FROM"),
        "the first instruction is FROM"
    );
    // Stages: FROM image [AS name].
    let mut stages: Vec<(String, Option<String>)> = Vec::new();
    let mut final_stage: Vec<(String, String)> = Vec::new();
    for (word, args) in &instructions {
        if word == "FROM" {
            let parts: Vec<&str> = args.split_whitespace().collect();
            let name = match parts.as_slice() {
                [_image] => None,
                [_image, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                    Some((*name).to_owned())
                }
                _ => bail!("FROM {args}: expected `image [AS name]`"),
            };
            stages.push((parts[0].to_owned(), name));
            final_stage.clear();
            continue;
        }
        if let Some(from) = args.strip_prefix("--from=") {
            let stage = from.split_whitespace().next().unwrap_or("");
            let earlier = &stages[..stages.len() - 1];
            ensure!(
                earlier.iter().any(|(_, n)| n.as_deref() == Some(stage)),
                "{word} --from={stage}: no earlier stage of that name"
            );
        }
        final_stage.push((word.clone(), args.clone()));
    }
    ensure!(stages.len() >= 2, "multi-stage: {stages:?}");
    let (build_image, _) = &stages[0];
    // The build stage's toolchain is at least the workspace's rust-version.
    let manifest = std::fs::read_to_string(root().join("Cargo.toml"))?;
    let rust_version = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"'))
        .context("rust-version in Cargo.toml")?;
    let tag = build_image
        .strip_prefix("rust:")
        .and_then(|t| t.split('-').next())
        .context("the build stage is a rust image")?;
    let version = |v: &str| -> Vec<u32> { v.split('.').filter_map(|p| p.parse().ok()).collect() };
    ensure!(
        version(tag) >= version(rust_version),
        "rust:{tag} is older than rust-version {rust_version}"
    );
    let last = |w: &str| {
        final_stage
            .iter()
            .rev()
            .find(|(x, _)| x == w)
            .map(|(_, a)| a.as_str())
    };
    // Non-root in the final stage.
    let user = last("USER").context("the final stage sets USER")?;
    let name = user.split(':').next().unwrap_or("");
    ensure!(!matches!(name, "root" | "0" | ""), "USER {user} is root");
    // A health check with an exec-form command that runs the binary the image ships.
    let health = last("HEALTHCHECK").context("the final stage has a HEALTHCHECK")?;
    let cmd = health
        .split_once("CMD")
        .map(|(_, c)| c.trim())
        .context("HEALTHCHECK ... CMD")?;
    let argv: Vec<String> = serde_json::from_str(cmd).context("HEALTHCHECK CMD in exec form")?;
    let entry: Vec<String> = serde_json::from_str(last("ENTRYPOINT").context("ENTRYPOINT")?)
        .context("ENTRYPOINT in exec form")?;
    ensure!(
        argv.first() == entry.first(),
        "the health check runs the gateway binary"
    );
    // And that command really is a health check: `outlast health` (tested below).
    ensure!(
        argv.get(1).map(String::as_str) == Some("health"),
        "{argv:?}"
    );
    // Every OUTLAST_* variable it sets is one the binary knows.
    let known = known_env_vars()?;
    for var in env_vars(&text) {
        ensure!(
            known.contains(&var),
            "Dockerfile sets {var}, which outlast does not read"
        );
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).context(".dockerignore")?;
    ensure!(
        ignore.lines().any(|l| l.trim() == "target"),
        "the build context leaves out target/"
    );
    Ok(())
}

/// YAML to JSON with PyYAML (`tests/clients/requirements.txt`).
fn yaml_to_json(path: &Path) -> anyhow::Result<Value> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\nprint(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .context("python3")?;
    ensure!(
        out.status.success(),
        "PyYAML could not parse {} (pip install -r tests/clients/requirements.txt): {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn the_compose_file_has_the_gateway_and_a_comfyui_placeholder() -> anyhow::Result<()> {
    const SERVICE_KEYS: [&str; 12] = [
        "build",
        "image",
        "ports",
        "expose",
        "environment",
        "volumes",
        "depends_on",
        "restart",
        "stop_grace_period",
        "healthcheck",
        "command",
        "profiles",
    ];
    let path = root().join("deploy/compose.yml");
    let doc = yaml_to_json(&path)?;
    let top: BTreeSet<&str> = doc
        .as_object()
        .context("a mapping")?
        .keys()
        .map(String::as_str)
        .collect();
    ensure!(
        top.iter()
            .all(|k| ["services", "volumes", "networks", "secrets", "configs"].contains(k)),
        "unknown top-level keys: {top:?}"
    );
    let services = doc["services"].as_object().context("services")?;
    ensure!(
        services.contains_key("outlast") && services.contains_key("comfyui"),
        "{services:?}"
    );
    let declared_volumes: BTreeSet<&str> = doc["volumes"]
        .as_object()
        .map(|v| v.keys().map(String::as_str).collect())
        .unwrap_or_default();
    for (name, s) in services {
        let s = s.as_object().with_context(|| format!("service {name}"))?;
        for k in s.keys() {
            ensure!(
                SERVICE_KEYS.contains(&k.as_str()),
                "service {name}: unknown key {k}"
            );
        }
        ensure!(
            s.contains_key("build") || s.contains_key("image"),
            "service {name}: build or image"
        );
        for v in s
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let v = v.as_str().context("short volume syntax")?;
            let source = v.split(':').next().unwrap_or("");
            if !source.starts_with(['.', '/']) {
                ensure!(
                    declared_volumes.contains(source),
                    "service {name}: volume {source} undeclared"
                );
            }
        }
        for p in s
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let p = p.as_str().context("ports as strings")?;
            ensure!(
                p.split(':').count() == 3 && p.starts_with("127.0.0.1:"),
                "{name}: port {p} is public"
            );
        }
        for d in s
            .get("depends_on")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            ensure!(
                services.contains_key(d.as_str().unwrap_or("")),
                "{name} depends on unknown {d}"
            );
        }
    }
    let outlast = &services["outlast"];
    let build = &outlast["build"];
    let context = path
        .parent()
        .context("deploy/")?
        .join(build["context"].as_str().context("build.context")?);
    let dockerfile = context.join(build["dockerfile"].as_str().context("build.dockerfile")?);
    ensure!(dockerfile.is_file(), "{} is missing", dockerfile.display());
    ensure!(
        context.join("Cargo.toml").is_file(),
        "the build context is the workspace"
    );
    let env: BTreeMap<String, Value> = serde_json::from_value(outlast["environment"].clone())
        .context("environment as a mapping")?;
    let known = known_env_vars()?;
    for var in env.keys() {
        ensure!(
            known.contains(var),
            "compose sets {var}, which outlast does not read"
        );
    }
    ensure!(
        env.contains_key("OUTLAST_TOKENS"),
        "a public listen address needs tokens"
    );
    Ok(())
}

/// `outlast_x` names in a text (a PromQL expression, a JSON file).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("outlast_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The metrics `metrics.rs` declares, with whether each is a histogram (its doc line says so).
fn declared_metrics() -> anyhow::Result<BTreeMap<String, bool>> {
    let source = std::fs::read_to_string(root().join("crates/outlast-gateway/src/metrics.rs"))?;
    let mut out = BTreeMap::new();
    let mut doc = "";
    for line in source.lines() {
        if let Some(d) = line.strip_prefix("/// ") {
            if doc.is_empty() {
                doc = d;
            }
            continue;
        }
        if let Some(name) = line
            .strip_prefix("pub const ")
            .and_then(|l| l.split('"').nth(1))
            .filter(|n| n.starts_with("outlast_"))
        {
            out.insert(name.to_owned(), doc.starts_with("Histogram"));
        }
        doc = "";
    }
    ensure!(
        out.values().filter(|h| **h).count() >= 4,
        "metrics.rs declares histograms"
    );
    Ok(out)
}

/// Every metric name in a Prometheus text scrape.
fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_the_gateway_exports() -> anyhow::Result<()> {
    let dashboard: Value = serde_json::from_str(&deploy_file("grafana-dashboard.json")?)
        .context("the dashboard is JSON")?;
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            exprs.push(target["expr"].as_str().context("expr")?.to_owned());
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        exprs.push(var["definition"].as_str().unwrap_or("").to_owned());
    }
    ensure!(exprs.len() >= 20, "{} queries", exprs.len());
    let named: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();

    // What a gateway really exports after work went through it: a job followed over the
    // WebSocket, SSE and long-poll, a tus upload, a webhook delivered to a receiver here.
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("outlast.toml");
    std::fs::write(
        &config,
        "[webhooks]\nallow_private = true\n\
         secrets = [\"whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"]\n",
    )?;
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_url = format!("http://{}/hook", hook.local_addr()?);
    let receiver = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(hook, receiver).await });
    let gw = Gateway::start(&["--config", &config.display().to_string()]).await?;
    let api = gw.api();
    let spec = json!({"backend": "demo", "workflow": {"steps": 3, "step_ms": 10},
                      "webhook": {"url": hook_url}});
    let job = api.submit(&spec).await?.job_id;
    let mut ws = Client::connect(&gw.ws_url(), Codec::Json).await?;
    ws.send(&ClientMsg::Subscribe {
        req: None,
        job_id: job,
        after: None,
    })
    .await?;
    while let Some(e) = ws.next_event(T).await? {
        if e.kind.is_terminal() {
            break;
        }
    }
    reqwest::get(format!("{}/v1/jobs/{job}/events", gw.http()))
        .await?
        .text()
        .await?;
    api.follow_to_end(job, T).await?;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/uploads", gw.http()))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "3")
        .send()
        .await?;
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("location")?
        .to_owned();
    let upload = location
        .find("/v1/uploads/")
        .map(|at| location[at..].to_owned())
        .context("path")?;
    let r = reqwest::Client::new()
        .patch(format!("{}{upload}", gw.http()))
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body("abc")
        .send()
        .await?;
    ensure!(r.status() == 204, "PATCH {}", r.status());
    api.wait_for_metric(T, |l| {
        l.starts_with("outlast_webhook_attempts_total{outcome=\"delivered\"}")
    })
    .await?;
    let scrape = api.metrics().await?;
    let scraped = scraped_names(&scrape);
    // A series appears once first recorded: counters of things that did not happen in this run
    // (timeouts, refusals) count as exported when metrics.rs declares them; a histogram only
    // under its `_bucket`, `_sum` and `_count` names, never its bare name.
    let mut exported = scraped.clone();
    for (name, histogram) in declared_metrics()? {
        if histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                exported.insert(format!("{name}{suffix}"));
            }
        } else {
            exported.insert(name);
        }
    }
    let unknown: Vec<&String> = named.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard names metrics the gateway does not export: {unknown:?}\nscrape:\n{scrape}"
    );
    // The dashboard covers what the operator asked for.
    for must in [
        "outlast_queue_depth",
        "outlast_jobs_running",
        "outlast_job_duration_seconds_bucket",
        "outlast_job_queue_wait_seconds_bucket",
        "outlast_jobs_failed_total",
        "outlast_ws_connections",
        "outlast_ws_resumes_total",
        "outlast_events_stored_total",
        "outlast_events_sent_total",
        "outlast_upload_bytes_total",
        "outlast_webhook_attempts_total",
        "outlast_http_requests_total",
        "outlast_http_request_duration_seconds_bucket",
    ] {
        assert!(
            named.contains(must),
            "the dashboard has no panel over {must}"
        );
    }
    // What this run did is really in the scrape, under the names the dashboard uses.
    let recorded: Vec<&String> = named.intersection(&scraped).collect();
    assert!(
        recorded.len() >= 15,
        "only {recorded:?} of the dashboard's metrics were scraped"
    );
    Ok(())
}

#[tokio::test]
async fn outlast_health_answers_for_a_running_gateway_only() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let health = |addr: String| {
        let dir = tempfile::tempdir();
        async move {
            let dir = dir?;
            let out = tokio::process::Command::new(outlast_e2e::binary())
                // A non-loopback listen address needs auth or --allow-public, as in a container.
                .args(["--listen", &addr, "--allow-public", "health"])
                .env_remove("OUTLAST_CONFIG")
                .current_dir(dir.path())
                .output()
                .await?;
            anyhow::Ok((
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
        }
    };
    assert_eq!(health(gw.addr.to_string()).await?.0, Some(0));
    // `0.0.0.0:PORT` (the container's listen address) is asked on loopback.
    assert_eq!(
        health(format!("0.0.0.0:{}", gw.addr.port())).await?.0,
        Some(0)
    );
    let closed = free_port()?;
    let (code, stderr) = health(format!("127.0.0.1:{closed}")).await?;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("outlast health"), "{stderr}");
    Ok(())
}
