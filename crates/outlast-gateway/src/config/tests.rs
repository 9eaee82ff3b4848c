//! Unit tests of the configuration: defaults, precedence and refusals, fed from strings and maps
//! (never the process environment, since tests run in parallel).

use std::collections::BTreeMap;

use clap::{CommandFactory, FromArgMatches};

use super::*;

/// Parses `argv` as the command line with `env` standing in for the process environment:
/// clap's own environment lookup is switched off and each given variable becomes the value the
/// option has when its flag is absent, which is exactly the precedence clap gives environment.
fn args_with_env(argv: &[&str], env: &[(&str, &str)]) -> Args {
    let env: BTreeMap<&str, &str> = env.iter().copied().collect();
    let command = Args::command().mut_args(|arg| {
        let value = arg
            .get_env()
            .and_then(|name| name.to_str())
            .and_then(|name| env.get(name).copied());
        let arg = arg.env(None);
        match value {
            // Tests only: leaking a few short strings lets clap hold them as `&'static str`.
            Some(v) => arg.default_value(&*Box::leak(v.to_owned().into_boxed_str())),
            None => arg,
        }
    });
    let argv = std::iter::once("outlast").chain(argv.iter().copied());
    let matches = command
        .try_get_matches_from(argv)
        .expect("valid command line");
    Args::from_arg_matches(&matches).expect("matches fit Args")
}

fn load(argv: &[&str], env: &[(&str, &str)], file: &str) -> Result<Config, ConfigError> {
    Config::from_sources(
        args_with_env(argv, env),
        Some((Path::new("test.toml"), file)),
    )
}

fn dur(text: &str) -> Duration {
    humantime::parse_duration(text).expect("duration")
}

/// A default, as the docs and `--help` write it.
#[derive(Debug)]
enum Shown {
    Duration(Duration),
    Text(String),
}

/// Every documented default next to the value `Config::default()` really has.
fn defaults() -> Vec<(&'static str, Shown)> {
    use Shown::{Duration as D, Text as T};
    let c = Config::default();
    let comfy = ComfyConfig::default();
    let exec = ExecConfig::default();
    let u = &c.uploads;
    vec![
        ("listen", T(c.listen.to_string())),
        ("allow_public", T(c.allow_public.to_string())),
        ("data_dir", T(format!("./{}", c.data_dir.display()))),
        ("ping_interval", D(c.ping_interval)),
        ("pong_timeout", D(c.pong_timeout)),
        ("max_message_bytes", T(c.max_message_bytes.to_string())),
        ("slow_consumer_timeout", D(c.slow_consumer_timeout)),
        ("long_poll_timeout", D(c.long_poll_timeout)),
        ("shutdown_grace", D(c.shutdown_grace)),
        ("history_max_events", T(c.history_max_events.to_string())),
        ("cache_ttl", D(c.cache_ttl)),
        (
            "log_format",
            T(format!("{:?}", c.log_format).to_lowercase()),
        ),
        ("demo.concurrency", T(c.demo_concurrency.to_string())),
        (
            "exec.command",
            T(if c.exec.is_none() { "none" } else { "?" }.into()),
        ),
        ("exec.timeout", D(exec.timeout)),
        ("exec.concurrency", T(exec.concurrency.to_string())),
        ("exec.kill_grace", D(exec.kill_grace)),
        (
            "comfyui.servers",
            T(if c.comfyui.is_none() { "none" } else { "?" }.into()),
        ),
        (
            "comfyui.servers[].concurrency",
            T(DEFAULT_COMFYUI_CONCURRENCY.to_string()),
        ),
        ("comfyui.poll_interval", D(comfy.poll_interval)),
        ("comfyui.ping_interval", D(comfy.ping_interval)),
        ("comfyui.unreachable_timeout", D(comfy.unreachable_timeout)),
        ("comfyui.retry_interval", D(comfy.retry_interval)),
        ("comfyui.timeout", D(comfy.timeout)),
        ("comfyui.cancel_timeout", D(comfy.cancel_timeout)),
        (
            "comfyui.preview_max_edge",
            T(comfy.preview_max_edge.to_string()),
        ),
        ("comfyui.preview_interval", D(comfy.preview_interval)),
        ("uploads.max_size", T(u.max_size.to_string())),
        ("uploads.max_chunk_bytes", T(u.max_chunk_bytes.to_string())),
        ("uploads.target_chunk", D(u.target_chunk)),
        ("uploads.expiry", D(u.expiry)),
        ("uploads.retention", D(u.retention)),
        (
            "uploads.max_open_per_owner",
            T(u.max_open_per_owner.to_string()),
        ),
        (
            "uploads.max_bytes_per_owner",
            T(u.max_bytes_per_owner.to_string()),
        ),
        ("uploads.min_free_bytes", T(u.min_free_bytes.to_string())),
        (
            "jobs.max_queued_per_owner",
            T(c.jobs.max_queued_per_owner.to_string()),
        ),
        (
            "streams.max_per_owner",
            T(c.streams.max_per_owner.to_string()),
        ),
        ("streams.sse_write_timeout", D(c.streams.sse_write_timeout)),
        ("tickets.ttl", D(c.tickets.ttl)),
        (
            "metrics.listen",
            T(c.metrics.listen.map_or("none".into(), |a| a.to_string())),
        ),
        (
            "http.allow_query_token",
            T(c.http.allow_query_token.to_string()),
        ),
    ]
}

fn matches(shown: &Shown, written: &str) -> bool {
    match shown {
        Shown::Duration(d) => humantime::parse_duration(written).ok() == Some(*d),
        Shown::Text(t) => t == written,
    }
}

#[test]
fn no_file_and_no_flags_give_the_defaults() {
    let c = Config::from_sources(args_with_env(&[], &[]), None).expect("defaults are valid");
    assert_eq!(c, Config::default());
    assert_eq!(c.listen, "127.0.0.1:8080".parse().expect("addr"));
    assert_eq!(c.data_dir, PathBuf::from("outlast-data"));
    assert_eq!(c.ping_interval, Duration::from_secs(25));
    assert_eq!(c.cache_ttl, Duration::from_secs(24 * 3600));
    assert!(c.tokens.is_empty() && c.exec.is_none() && c.comfyui.is_none());
    // An empty file changes nothing either.
    assert_eq!(load(&[], &[], "").expect("valid"), Config::default());
}

#[test]
fn docs_operations_md_states_the_real_defaults() {
    let docs = include_str!("../../../../docs/operations.md");
    for (key, shown) in defaults() {
        if key.starts_with("uploads.") {
            continue; // the docs send readers to `outlast --help` for these
        }
        let row = docs
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("docs/operations.md has no row for `{key}`"));
        let written = row.split('|').nth(3).expect("a default column").trim();
        assert!(
            matches(&shown, written.trim_matches('`')),
            "docs say {key} defaults to {written}, the code to {shown:?}"
        );
    }
}

#[test]
fn help_states_the_real_defaults() {
    let help: String = Args::command()
        .get_arguments()
        .filter_map(|a| a.get_long_help().or(a.get_help()).map(|h| h.to_string()))
        .collect::<Vec<_>>()
        .join(" ")
        .replace('\n', " ");
    for (key, shown) in defaults() {
        let Some(at) = help.find(&format!("[{key}; default ")) else {
            continue; // options without a default (exec.command, comfyui.servers, ...)
        };
        let rest = &help[at + key.len() + 11..];
        let written = &rest[..rest.find(']').expect("closing bracket")];
        assert!(
            matches(&shown, written),
            "--help says {key} defaults to {written}, the code to {shown:?}"
        );
    }
    for key in [
        "ping_interval",
        "comfyui.preview_interval",
        "uploads.retention",
    ] {
        assert!(
            help.contains(&format!("[{key}; default ")),
            "{key} in --help"
        );
    }
}

#[test]
fn file_then_environment_then_flag() {
    // (file, environment variable, flag, what to read back); each source sets a different value.
    type Read = fn(&Config) -> String;
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        [&'static str; 3],
        Read,
    );
    let cases: [Case; 10] = [
        (
            "ping_interval = \"{}\"",
            "OUTLAST_PING_INTERVAL",
            "--ping-interval",
            ["7s", "8s", "9s"],
            |c| humantime::format_duration(c.ping_interval).to_string(),
        ),
        (
            "listen = \"{}\"",
            "OUTLAST_LISTEN",
            "--listen",
            ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
            |c| c.listen.to_string(),
        ),
        (
            "[demo]\nconcurrency = {}",
            "OUTLAST_DEMO_CONCURRENCY",
            "--demo-concurrency",
            ["3", "4", "5"],
            |c| c.demo_concurrency.to_string(),
        ),
        (
            "[streams]\nmax_per_owner = {}",
            "OUTLAST_STREAMS_MAX_PER_OWNER",
            "--streams-max-per-owner",
            ["6", "7", "8"],
            |c| c.streams.max_per_owner.to_string(),
        ),
        (
            "[uploads]\nmax_size = {}",
            "OUTLAST_UPLOAD_MAX_SIZE",
            "--upload-max-size",
            ["100", "200", "300"],
            |c| c.uploads.max_size.to_string(),
        ),
        (
            "[exec]\ncommand = \"true\"\ntimeout = \"{}\"",
            "OUTLAST_EXEC_TIMEOUT",
            "--exec-timeout",
            ["1m", "2m", "3m"],
            |c| humantime::format_duration(c.exec.as_ref().expect("exec").timeout).to_string(),
        ),
        (
            "[exec]\ncommand = \"{}\"",
            "OUTLAST_EXEC_COMMAND",
            "--exec-command",
            ["a", "b", "c"],
            |c| c.exec.as_ref().expect("exec").command.clone(),
        ),
        (
            "[comfyui]\nservers = [\"http://{}:8188\"]",
            "OUTLAST_COMFYUI",
            "--comfyui",
            ["a", "b", "c"],
            |c| c.comfyui.as_ref().expect("comfyui").servers[0].url[7..8].to_owned(),
        ),
        (
            "[comfyui]\nservers = [\"http://a:1\"]\npoll_interval = \"{}\"",
            "OUTLAST_COMFYUI_POLL_INTERVAL",
            "--comfyui-poll-interval",
            ["1s", "2s", "3s"],
            |c| {
                humantime::format_duration(c.comfyui.as_ref().expect("comfyui").poll_interval)
                    .to_string()
            },
        ),
        (
            "[auth.tokens]\n{} = \"0123456789abcdef\"",
            "OUTLAST_TOKENS",
            "--token",
            ["alice", "bob", "carol"],
            |c| c.tokens.values().map(|o| o.as_str().to_owned()).collect(),
        ),
    ];
    for (file, var, flag, [v_file, v_env, v_flag], read) in cases {
        let text = file.replace("{}", v_file);
        // Tokens are OWNER=SECRET and servers URLs on the command line and in the environment.
        let arg = |v: &str| match var {
            "OUTLAST_TOKENS" => format!("{v}=0123456789abcde{v}"),
            "OUTLAST_COMFYUI" => format!("http://{v}:8188"),
            _ => v.to_owned(),
        };
        let (env_value, flag_value) = (arg(v_env), arg(v_flag));
        let c = load(&[], &[], &text).expect(&text);
        assert_eq!(read(&c), v_file, "file alone: {var}");
        let c = load(&[], &[(var, &env_value)], &text).expect(&text);
        assert_eq!(read(&c), v_env, "environment beats file: {var}");
        let c = load(&[flag, &flag_value], &[(var, &env_value)], &text).expect(&text);
        assert_eq!(read(&c), v_flag, "flag beats environment: {var}");
    }
}

#[test]
fn list_options_split_on_commas_in_the_environment() {
    let c = load(
        &[],
        &[
            ("OUTLAST_TOKENS", "a=0123456789abcdef,b=fedcba9876543210"),
            ("OUTLAST_COMFYUI", "http://x:1/,http://y:2"),
        ],
        "",
    )
    .expect("valid");
    assert_eq!(c.tokens.len(), 2);
    let urls: Vec<_> = c
        .comfyui
        .expect("on")
        .servers
        .into_iter()
        .map(|s| s.url)
        .collect();
    assert_eq!(urls, ["http://x:1", "http://y:2"]);
}

#[test]
fn cache_ttl_from_file_flag_and_zero() {
    let c = load(&[], &[], "cache_ttl = \"90m\"").expect("valid");
    assert_eq!(c.cache_ttl, Duration::from_secs(90 * 60));
    let c = load(&["--cache-ttl", "0s"], &[], "cache_ttl = \"90m\"").expect("0s disables");
    assert_eq!(c.cache_ttl, Duration::ZERO);
}

#[test]
fn public_listen_needs_auth_or_allow_public() {
    let public = ["--listen", "0.0.0.0:8080"];
    let e = load(&public, &[], "").expect_err("refused");
    assert_eq!(e.key, "listen");
    assert!(e.to_string().contains("`listen`"), "{e}");
    assert!(load(&[&public[..], &["--allow-public"]].concat(), &[], "").is_ok());
    assert!(load(&public, &[("OUTLAST_ALLOW_PUBLIC", "true")], "").is_ok());
    assert!(load(&public, &[], "allow_public = true").is_ok());
    let c = load(&public, &[], "[auth.tokens]\nalice = \"0123456789abcdef\"")
        .expect("auth makes public listening fine");
    assert_eq!(c.tokens.len(), 1);
}

#[test]
fn bad_values_are_refused_naming_their_key() {
    // (flags, file, key)
    let cases: &[(&[&str], &str, &str)] = &[
        (&[], "ping_interval = \"0s\"", "ping_interval"),
        (&["--ping-interval", "0s"], "", "ping_interval"),
        (&["--pong-timeout", "0s"], "", "pong_timeout"),
        (&["--max-message-bytes", "1000"], "", "max_message_bytes"),
        (&[], "max_message_bytes = 268435457", "max_message_bytes"),
        (
            &["--slow-consumer-timeout", "0s"],
            "",
            "slow_consumer_timeout",
        ),
        (&["--long-poll-timeout", "0s"], "", "long_poll_timeout"),
        (
            &["--streams-sse-write-timeout", "0s"],
            "",
            "streams.sse_write_timeout",
        ),
        (
            &[],
            "[streams]\nsse_write_timeout = \"0s\"",
            "streams.sse_write_timeout",
        ),
        (&["--history-max-events", "15"], "", "history_max_events"),
        (&[], "history_max_events = 0", "history_max_events"),
        (&[], "cache_ttl = \"3651days\"", "cache_ttl"),
        (&[], "[exec]\ncommand = \"\"", "exec.command"),
        (&["--exec-command", " "], "", "exec.command"),
        (&[], "[exec]\ntimeout = \"1m\"", "exec.command"),
        (
            &["--exec-command", "true", "--exec-concurrency", "0"],
            "",
            "exec.concurrency",
        ),
        (&[], "[demo]\nconcurrency = 0", "demo.concurrency"),
        (&[], "[auth.tokens]\nalice = \"short\"", "auth.tokens"),
        (&[], "[jwt.keys]\nk1 = \"too-short\"", "jwt.keys"),
        (&["--jwt-key", "k1"], "", "jwt.keys"),
        (
            &["--jwt-key", "bad kid=0123456789abcdef0123456789abcdef"],
            "",
            "jwt.keys",
        ),
        (
            &[
                "--jwt-key",
                "k1=0123456789abcdef0123456789abcdef",
                "--jwt-signing-kid",
                "k2",
            ],
            "",
            "jwt.signing_kid",
        ),
        (&["--ticket-ttl", "0s"], "", "tickets.ttl"),
        (&[], "[tickets]\nttl = \"11m\"", "tickets.ttl"),
        (
            &["--allowed-host", "https://x.example"],
            "",
            "http.allowed_hosts",
        ),
        (
            &["--cors-origin", "app.example"],
            "",
            "cors.allowed_origins",
        ),
        (
            &[],
            "[ws]\nallowed_origins = [\"https://a.example/path\"]",
            "ws.allowed_origins",
        ),
        (&["--token", "alice"], "", "auth.tokens"),
        (
            &[
                "--token",
                "alice=0123456789abcdef",
                "--token",
                "bob=0123456789abcdef",
            ],
            "",
            "auth.tokens",
        ),
        (
            &[],
            "[auth.tokens]\na = \"0123456789abcdef\"\nb = \"0123456789abcdef\"",
            "auth.tokens",
        ),
        (&["--upload-max-size", "0"], "", "uploads.max_size"),
        (
            &[],
            "[uploads]\nmax_chunk_bytes = 10",
            "uploads.max_chunk_bytes",
        ),
        (&[], "[uploads]\nexpiry = \"0s\"", "uploads.expiry"),
        (&["--upload-target-chunk", "0s"], "", "uploads.target_chunk"),
        (&["--upload-retention", "0s"], "", "uploads.retention"),
        (
            &["--upload-max-open-per-owner", "0"],
            "",
            "uploads.max_open_per_owner",
        ),
        (
            &[],
            "[comfyui]\nservers = [\"https://gpu:8188\"]",
            "comfyui.servers",
        ),
        (&["--comfyui", "http://"], "", "comfyui.servers"),
        (
            &[],
            "[comfyui]\nservers = [{url = \"http://gpu:8188\", concurrency = 0}]",
            "comfyui.servers",
        ),
        (
            &["--comfyui", "http://a:1", "--comfyui-concurrency", "0"],
            "",
            "comfyui.servers",
        ),
        (
            &[],
            "[comfyui]\nservers = [\"http://gpu:8188\", \"http://gpu:8188/\"]",
            "comfyui.servers",
        ),
        (
            &[],
            "[comfyui]\nservers = [\"http://gpu:8188\"]\npoll_interval = \"0s\"",
            "comfyui.poll_interval",
        ),
        (
            &["--comfyui", "http://a:1", "--comfyui-ping-interval", "0s"],
            "",
            "comfyui.ping_interval",
        ),
        (
            &[
                "--comfyui",
                "http://a:1",
                "--comfyui-unreachable-timeout",
                "0s",
            ],
            "",
            "comfyui.unreachable_timeout",
        ),
        (
            &["--comfyui", "http://a:1", "--comfyui-retry-interval", "0s"],
            "",
            "comfyui.retry_interval",
        ),
        (
            &["--comfyui", "http://a:1", "--comfyui-timeout", "0s"],
            "",
            "comfyui.timeout",
        ),
        (
            &["--comfyui", "http://a:1", "--comfyui-preview-max-edge", "8"],
            "",
            "comfyui.preview_max_edge",
        ),
    ];
    for (flags, file, key) in cases {
        let e = load(flags, &[], file).expect_err(&format!("{flags:?} {file}"));
        assert_eq!(e.key, *key, "{flags:?} {file}: {e}");
        assert!(e.to_string().contains(&format!("`{key}`")), "{e}");
    }
}

#[test]
fn unknown_keys_in_the_file_are_refused_naming_the_key() {
    for (file, key) in [
        ("pign_interval = \"1s\"", "pign_interval"),
        ("[uploads]\nmax_sise = 1", "max_sise"),
        ("[exec]\ncomand = \"true\"", "comand"),
        ("[demo]\nconcurency = 1", "concurency"),
        ("[auth]\ntoken = {}", "token"),
        ("[comfyui]\npoll = \"1s\"", "poll"),
        ("[streams]\nmax_per_stream = 3", "max_per_stream"),
    ] {
        let e = load(&[], &[], file).expect_err(file);
        assert_eq!(e.key, key, "{file}: {e}");
    }
}

#[test]
fn comfyui_pool_from_file_or_flags() {
    let c = load(
        &[],
        &[],
        "[comfyui]\nservers = [\"http://a:8188/\", {url = \"http://b:8188\", concurrency = 2}]",
    )
    .expect("valid");
    let comfy = c.comfyui.expect("enabled");
    assert_eq!(
        comfy.servers,
        vec![
            ComfyServer {
                url: "http://a:8188".into(),
                concurrency: 1
            },
            ComfyServer {
                url: "http://b:8188".into(),
                concurrency: 2
            }
        ]
    );
    assert_eq!(comfy.poll_interval, Duration::from_secs(5));
    let c = load(
        &["--comfyui", "http://c:8188"],
        &[],
        "[comfyui]\nservers = [\"http://a:8188\"]",
    )
    .expect("valid");
    assert_eq!(c.comfyui.expect("enabled").servers[0].url, "http://c:8188");
    // Settings without servers leave the backend off; servers from flags then use them.
    let text = "[comfyui]\npoll_interval = \"9s\"";
    assert!(load(&[], &[], text).expect("valid").comfyui.is_none());
    let c = load(
        &["--comfyui", "http://c:8188", "--comfyui-concurrency", "3"],
        &[],
        text,
    )
    .expect("valid");
    let comfy = c.comfyui.expect("enabled");
    assert_eq!(
        (comfy.poll_interval, comfy.servers[0].concurrency),
        (dur("9s"), 3)
    );
}

#[test]
fn exec_settings_from_file_and_flags_combine() {
    let c = load(
        &["--exec-command", "run.sh"],
        &[],
        "[exec]\ntimeout = \"10m\"\nconcurrency = 2",
    )
    .expect("valid");
    assert_eq!(
        c.exec,
        Some(ExecConfig {
            command: "run.sh".into(),
            timeout: dur("10m"),
            concurrency: 2,
            kill_grace: crate::config::DEFAULT_EXEC_KILL_GRACE,
        })
    );
}

#[test]
fn access_sections_from_the_file_and_flags() {
    let file = "[http]\nallowed_hosts = [\"outlast.example.com\"]\nallow_query_token = true\n\
                [cors]\nallowed_origins = [\"https://app.example.com\"]\n\
                [ws]\nallowed_origins = [\"*\"]\n\
                [jwt]\nsigning_kid = \"new\"\n[jwt.keys]\nold = \"0123456789abcdef0123456789abcdef\"\n\
                new = \"fedcba9876543210fedcba9876543210\"\n\
                [tickets]\nttl = \"5s\"";
    let c = load(&[], &[], file).expect("valid");
    assert_eq!(c.http.allowed_hosts, ["outlast.example.com"]);
    assert!(c.http.allow_query_token);
    assert_eq!(c.cors.allowed_origins, ["https://app.example.com"]);
    assert_eq!(c.ws.allowed_origins, ["*"]);
    assert_eq!(c.tickets.ttl, Duration::from_secs(5));
    assert_eq!(
        c.jwt.signing_key(None).expect("key"),
        ("new", "fedcba9876543210fedcba9876543210")
    );
    assert_eq!(c.jwt.signing_key(Some("old")).expect("key").0, "old");
    // Flags replace the file's lists; env works like flags.
    let c = load(
        &["--allowed-host", "a.example", "--ticket-ttl", "2s"],
        &[(
            "OUTLAST_CORS_ALLOWED_ORIGINS",
            "https://x.example,https://y.example",
        )],
        file,
    )
    .expect("valid");
    assert_eq!(c.http.allowed_hosts, ["a.example"]);
    assert_eq!(
        c.cors.allowed_origins,
        ["https://x.example", "https://y.example"]
    );
    assert_eq!(c.tickets.ttl, Duration::from_secs(2));
    // Several keys and no signing kid: `outlast token` must be told which.
    let two = load(
        &[
            "--jwt-key",
            "a=0123456789abcdef0123456789abcdef",
            "--jwt-key",
            "b=0123456789abcdef0123456789abcdef",
        ],
        &[],
        "",
    )
    .expect("valid");
    assert_eq!(
        two.jwt.signing_key(None).expect_err("ambiguous").key,
        "jwt.signing_kid"
    );
    // Signed-token keys count as auth for a public listen address.
    let public = ["--listen", "0.0.0.0:8080"];
    assert!(load(&public, &[], "").is_err());
    let mut with_key = public.to_vec();
    with_key.extend(["--jwt-key", "a=0123456789abcdef0123456789abcdef"]);
    assert!(load(&with_key, &[], "").is_ok());
}

#[test]
fn origins_and_hosts_parse() {
    assert_eq!(
        origin_parts("HTTPS://App.Example.com"),
        Some(("https".into(), "app.example.com".into(), 443))
    );
    assert_eq!(
        origin_parts("http://127.0.0.1:8080"),
        Some(("http".into(), "127.0.0.1".into(), 8080))
    );
    assert_eq!(
        origin_parts("http://[::1]:9"),
        Some(("http".into(), "[::1]".into(), 9))
    );
    for bad in [
        "null",
        "app.example",
        "ftp://x",
        "https://x/",
        "https://x:99999",
        "https://",
    ] {
        assert_eq!(origin_parts(bad), None, "{bad}");
    }
    assert_eq!(
        split_host_port("Example.com:80"),
        Some(("example.com".into(), Some(80)))
    );
    assert_eq!(split_host_port("[::1]"), Some(("[::1]".into(), None)));
    assert_eq!(split_host_port("[::1]x"), None);
}

#[test]
fn webhooks_section_parses_validates_and_redacts_secrets() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let file = format!(
        "[webhooks]\nsecrets = [{secret:?}]\nschedule = [\"0s\", \"1s\"]\nallow_cidrs = [\"10.1.2.0/24\"]\n\
         [webhooks.owners.alice]\nsecrets = [{secret:?}]\ndefault = {{ url = \"https://a.example/h\", events = [\"progress\"] }}\n"
    );
    let c = load(&[], &[], &file).expect("valid");
    assert_eq!(
        c.webhooks.schedule,
        vec![Duration::ZERO, Duration::from_secs(1)]
    );
    assert_eq!(c.webhooks.secrets_of("alice"), [secret.to_owned()]);
    assert_eq!(c.webhooks.secrets_of("bob"), [secret.to_owned()]);
    assert!(c.webhooks.owners["alice"].default.is_some());
    let shown = format!("{c:?}");
    assert!(!shown.contains("MfKQ9r8"), "a secret in Debug output");
    assert_eq!(Config::default().webhooks.schedule.len(), 8);

    for (bad, key) in [
        (
            "[webhooks]\nsecrets = [\"whsec_short\"]\n",
            "webhooks.secrets",
        ),
        ("[webhooks]\nsecrets = [\"nope\"]\n", "webhooks.secrets"),
        ("[webhooks]\nschedule = [\"5s\"]\n", "webhooks.schedule"),
        ("[webhooks]\nschedule = []\n", "webhooks.schedule"),
        (
            "[webhooks]\nallow_cidrs = [\"10.0.0.0/33\"]\n",
            "webhooks.allow_cidrs",
        ),
        ("[webhooks]\ntimeout = \"0s\"\n", "webhooks.timeout"),
        (
            "[webhooks.owners.bob]\ndefault = { url = \"https://b.example\" }\n",
            "webhooks.owners.bob.secrets",
        ),
    ] {
        let e = load(&[], &[], bad).expect_err(bad);
        assert_eq!(e.key, key, "{bad}: {e}");
    }
}
