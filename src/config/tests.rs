//! The config module's own helpers: positions, key paths, host patterns,
//! Redis URLs as messages show them.

use super::*;

#[test]
fn line_col_counts_from_one() {
    let t = "a = 1\nbb = 2\n";
    assert_eq!(line_col(t, 0), (1, 1));
    assert_eq!(line_col(t, 6), (2, 1));
    assert_eq!(line_col(t, 9), (2, 4));
}

#[test]
fn redis_urls_are_described_without_their_passwords() {
    let single = RedisTarget::Single("redis://:s3cret@10.0.0.1:6379/0".into());
    assert_eq!(single.describe(), "redis://***@10.0.0.1:6379/0");
    let seeds = RedisTarget::Cluster(vec![
        "rediss://app:s3cret@a:7000".into(),
        "redis://b:7001".into(),
    ]);
    assert_eq!(
        seeds.describe(),
        "cluster rediss://***@a:7000, redis://b:7001"
    );
    // A `#` in a password ends the authority as a URL reads it: everything
    // before the last `@` is hidden (an `@` in a query too: the safe side).
    let hash = RedisTarget::Single("redis://u:1#pw@h:6379".into());
    assert_eq!(hash.describe(), "redis://***@h:6379");
    let plain = RedisTarget::Single("redis://127.0.0.1:6379/0".into());
    assert_eq!(plain.describe(), "redis://127.0.0.1:6379/0");
}

#[test]
fn host_patterns() {
    let w = HostPattern::parse("*.Example.test").unwrap();
    assert!(w.matches("a.example.test"));
    assert!(w.matches("a.b.example.test"));
    assert!(!w.matches("example.test"));
    let e = HostPattern::parse("api.example.test").unwrap();
    assert!(e.matches("api.example.test"));
    assert!(!e.matches("x.api.example.test"));
    assert!(HostPattern::parse("bad host").is_err());
    assert!(HostPattern::parse("*.").is_err());
}

/// The messages `t.toml` gets refused with.
fn err(toml: &str) -> String {
    parse(Path::new("t.toml"), toml)
        .map(|_| ())
        .expect_err("refused")
        .to_string()
}

#[test]
fn a_value_of_the_wrong_type_is_named_by_its_key_in_toml_words() {
    let listener = "[[listener]]\naddr = \"127.0.0.1:0\"\n";
    assert_eq!(
        err(&format!("[server]\nmax_connections = \"lots\"\n{listener}")),
        "t.toml:2:19: server.max_connections: invalid type: string \"lots\", expected an integer"
    );
    assert_eq!(
        err(&format!(
            "[server]\nmax_connections = 99999999999999999999\n{listener}"
        )),
        "t.toml:2:19: server.max_connections: the integer `99999999999999999999` is out of range"
    );
    assert_eq!(
        err(&format!("{listener}[[listener]]\naddr = 5\n")),
        "t.toml:4:8: listener[1].addr: invalid type: integer `5`, expected a string"
    );
    assert_eq!(
        err(&format!("{listener}[upstream.a]\nservers = \"x\"\n")),
        "t.toml:4:11: upstream.a.servers: invalid type: string \"x\", expected an array"
    );
    // A table given as something else: no Rust type name in the message.
    assert_eq!(
        err(&format!("server = 5\n{listener}")),
        "t.toml:1:10: server: invalid type: integer `5`, expected a table"
    );
}

#[test]
fn a_misspelt_secret_key_is_named_unknown() {
    let e =
        err("[[listener]]\naddr = \"127.0.0.1:0\"\n[auth.users]\nsecret = \"hunter2hunter2\"\n");
    assert!(
        e.contains("auth.users.secret: unknown field `secret`"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn an_upstream_server_with_credentials_is_not_quoted_back_whole() {
    let listener = "[[listener]]\naddr = \"127.0.0.1:0\"\n";
    for server in [
        "http://user:hunter2secret@127.0.0.1:1",
        "user:hunter2secret@127.0.0.1:1",
        "https://user:hunter2/secret@127.0.0.1:1",
    ] {
        let e = err(&format!(
            "{listener}[upstream.u]\nservers = [\"{server}\"]\n"
        ));
        assert!(
            e.contains("upstream.u.servers[0]") && e.contains("***@127.0.0.1:1"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }
}

#[test]
fn an_origin_that_no_browser_sends_is_refused() {
    let base = "[[listener]]\naddr = \"127.0.0.1:0\"\n[[route]]\npath = \"/ws\"\napp = \"echo\"\n";
    for bad in ["not a url", "https://", "a.test", "https://a.test/path"] {
        let e = err(&format!("{base}origins = [\"{bad}\"]\n"));
        assert!(
            e.starts_with("t.toml:6:") && e.contains("is not an origin"),
            "{bad}: {e}"
        );
    }
    for good in [
        "https://a.test",
        "https://a.test/",
        "http://a.test:8080",
        "null",
        "",
    ] {
        let ok = parse(
            Path::new("t.toml"),
            &format!("{base}origins = [\"{good}\"]\n"),
        );
        assert!(ok.is_ok(), "{good}: {:?}", ok.err().map(|e| e.to_string()));
    }
}

#[test]
fn a_duplicate_key_is_named_and_a_broken_definition_is_reported_once() {
    assert_eq!(
        err("[server]\nmax_connections = 5\nmax_connections = 6\n"),
        "t.toml:3:1: duplicate key `max_connections`"
    );
    let out = err("[[listener]]\naddr = \"127.0.0.1:0\"\n[limit.tiny]\nrate = \"lots\"\nkey = \"ip\"\n[[route]]\npath = \"/\"\napp = \"echo\"\nlimits = [\"tiny\"]\n");
    assert!(out.starts_with("t.toml:4:8: limit.tiny.rate: "), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
}

#[test]
fn a_config_printed_with_debug_shows_no_secret() {
    let cfg = parse(
        Path::new("t.toml"),
        "[server]\nsecret = \"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I=\"\n\
         [[listener]]\naddr = \"127.0.0.1:0\"\n\
         [app.chat]\npush_token = \"push-s3cret\"\n\
         [cluster]\nredis = \"redis://:redis-s3cret@127.0.0.1:6379\"\n\
         [[route]]\npath = \"/chat\"\napp = \"chat\"\n",
    )
    .expect("valid");
    let shown = format!("{cfg:?}");
    assert!(cfg.server.secret.is_some());
    for secret in ["push-s3cret", "redis-s3cret", "115, 101, 99"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
}

#[test]
fn a_secret_of_the_wrong_type_is_not_quoted_back() {
    let e = err("[app.chat]\npush_token = 98765432123\n");
    assert!(
        e.contains("app.chat.push_token: invalid type: integer, expected a string"),
        "{e}"
    );
    assert!(!e.contains("98765432123"), "{e}");
    let e = err("[server]\nsecret = 1234567890123\n");
    assert!(!e.contains("1234567890123"), "{e}");
    // Past i64, toml's wording differs (and was reworded around the value).
    let e = err("[app.chat]\npush_token = 98765432123456789012345\n");
    assert!(!e.contains("98765432123456789012345"), "{e}");
    // Other keys quote what they got, which helps.
    let e = err("[server]\nmax_connections = \"lots\"\n");
    assert!(e.contains("\"lots\""), "{e}");
}

#[test]
fn redis_urls_are_checked_as_the_client_will_read_them_and_shown_without_passwords() {
    let cfg = |url: &str| {
        format!("[cluster]\nredis = \"{url}\"\n[[listener]]\naddr = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\napp = \"echo\"\n")
    };
    for (url, says) in [
        (
            "redis://u:Hunter2@127.0.0.1:notaport",
            "is not a valid Redis URL",
        ),
        ("redis://127.0.0.1:99999", "is not a valid Redis URL"),
        ("redis://[::1:6379", "is not a valid Redis URL"),
        ("rediss//u:Hunter2@127.0.0.1:6379", "is not a redis:// URL"),
        (
            "rediss://u:Hunter2@h:6379",
            "TLS to Redis (rediss://) is not supported",
        ),
        // A password with `#` or `/` is why such a URL does not parse.
        (
            "redis://:Hunter2#x@127.0.0.1:6379",
            "is not a valid Redis URL",
        ),
        (
            "redis://u:Hun/ter2@127.0.0.1:6379",
            "is not a valid Redis URL",
        ),
    ] {
        let e = err(&cfg(url));
        assert!(
            e.contains("t.toml:2:9: cluster.redis: ") && e.contains(says),
            "{url}: {e}"
        );
        assert!(!e.contains("Hunter2") && !e.contains("ter2"), "{url}: {e}");
    }
    assert!(parse(Path::new("t.toml"), &cfg("redis://:pw@127.0.0.1:6379/0")).is_ok());
    assert!(parse(Path::new("t.toml"), &cfg("redis+unix:///run/redis.sock")).is_ok());
}

/// A PROXY-protocol listener with no trusted proxy is refused; but when the
/// list is empty only because its entries were wrong, those are the one
/// problem, not a second "nobody is trusted".
#[test]
fn a_bad_trusted_proxy_is_the_one_problem_of_a_proxy_protocol_listener() {
    let listener = "[[listener]]\naddr = \"127.0.0.1:0\"\nproxy_protocol = true\n";
    let e = err(&format!(
        "[server]\ntrusted_proxies = [\"10.0.0.1/8\"]\n{listener}"
    ));
    assert!(e.contains("server.trusted_proxies[0]"), "{e}");
    assert!(!e.contains("no peer may send"), "{e}");
    let e = err(listener);
    assert!(
        e.contains("listener[0].proxy_protocol: no peer may send"),
        "{e}"
    );
}

#[test]
fn chat_max_rooms_is_read_and_bounded() {
    let listener = "[[listener]]\naddr = \"127.0.0.1:0\"\n";
    let cfg = parse(
        Path::new("t.toml"),
        &format!("{listener}[app.chat]\nmax_rooms = 50000\n"),
    )
    .expect("valid");
    assert_eq!(cfg.chat.max_rooms, 50_000);
    assert_eq!(cfg.chat.max_rooms_per_ip, 1_000, "the default");
    let e = err(&format!("{listener}[app.chat]\nmax_rooms = 0\n"));
    assert!(e.contains("t.toml:4:13: app.chat.max_rooms"), "{e}");
    let cfg = parse(
        Path::new("t.toml"),
        &format!("{listener}[app.chat]\nmax_rooms_per_ip = 0\n"),
    )
    .expect("0 is no cap");
    assert_eq!(cfg.chat.max_rooms_per_ip, 0);
    let e = err(&format!("{listener}[app.chat]\nmax_rooms_per_ip = -1\n"));
    assert!(e.contains("t.toml:4:20: app.chat.max_rooms_per_ip"), "{e}");
}

#[test]
fn send_timeout_is_read_and_zero_is_refused() {
    let listener = "[[listener]]\naddr = \"127.0.0.1:0\"\n";
    let cfg = parse(Path::new("t.toml"), listener).expect("valid");
    assert_eq!(cfg.server.send_timeout, std::time::Duration::from_secs(60));
    let cfg = parse(
        Path::new("t.toml"),
        &format!("[server]\nsend_timeout = \"5s\"\n{listener}"),
    )
    .expect("valid");
    assert_eq!(cfg.server.send_timeout, std::time::Duration::from_secs(5));
    let e = err(&format!("[server]\nsend_timeout = \"0s\"\n{listener}"));
    assert!(
        e.contains("t.toml:2:16: server.send_timeout: must be more than 0"),
        "{e}"
    );
}

/// A timeout or period of zero would fail at once what it times (TLS
/// handshakes and HTTP/2 connections failed at random) or panic the task
/// that ticks it (`health.interval`), so each is refused with its line.
#[test]
fn timeouts_and_periods_of_zero_are_refused() {
    let listener = "[[listener]]\naddr = \"127.0.0.1:0\"\n";
    let up = "[upstream.u]\nservers = [\"127.0.0.1:1\"]\n";
    let cases = [
        ("[server]\n", "header_timeout", "server.header_timeout"),
        (
            "[server]\n",
            "keepalive_timeout",
            "server.keepalive_timeout",
        ),
        (
            "[server]\n",
            "tls_handshake_timeout",
            "server.tls_handshake_timeout",
        ),
        (up, "connect_timeout", "upstream.u.connect_timeout"),
        (up, "response_timeout", "upstream.u.response_timeout"),
        (up, "ws_idle_timeout", "upstream.u.ws_idle_timeout"),
        (up, "fail_timeout", "upstream.u.fail_timeout"),
        (up, "health.interval", "upstream.u.health.interval"),
        (up, "health.timeout", "upstream.u.health.timeout"),
        ("[app.echo]\n", "idle_timeout", "app.echo.idle_timeout"),
        (
            "[app.chat]\n",
            "poll_idle_timeout",
            "app.chat.poll_idle_timeout",
        ),
        ("[server]\n", "shutdown_grace", "server.shutdown_grace"),
    ];
    for (table, key, name) in cases {
        let text = format!("{listener}{table}{key} = \"0\"\n");
        let line = text.lines().count();
        let e = err(&text);
        assert!(
            e.contains(&format!("t.toml:{line}:"))
                && e.contains(&format!("{name}: must be more than 0")),
            "{key}: {e}"
        );
    }
}

#[test]
fn an_upstream_server_on_port_0_is_refused() {
    let listener = "[[listener]]\naddr = \"127.0.0.1:0\"\n";
    for server in [
        "127.0.0.1:0",
        "[::1]:0",
        "localhost:0",
        "https://localhost:0",
    ] {
        let e = err(&format!(
            "{listener}[upstream.u]\nservers = [\"{server}\"]\n"
        ));
        assert!(
            e.starts_with("t.toml:4:")
                && e.contains("upstream.u.servers[0]")
                && e.contains("port 1-65535"),
            "{server}: {e}"
        );
    }
}

#[test]
fn a_health_path_that_is_no_request_path_is_refused() {
    let base = "[[listener]]\naddr = \"127.0.0.1:0\"\n[upstream.u]\nservers = [\"127.0.0.1:1\"]\n[upstream.u.health]\n";
    let e = err(&format!("{base}path = \"/a b\"\n"));
    assert!(
        e.starts_with("t.toml:6:")
            && e.contains("upstream.u.health.path: \"/a b\" is not a request path"),
        "{e}"
    );
    assert!(parse(
        Path::new("t.toml"),
        &format!("{base}path = \"/a%20b?x=1\"\n")
    )
    .is_ok());
}

#[test]
fn a_route_path_no_request_can_match_is_refused() {
    let base = "[[listener]]\naddr = \"127.0.0.1:0\"\n[[route]]\napp = \"echo\"\n";
    for (path, why) in [
        ("/a b", "is not a request path"),
        ("/a?x=1", "holds a query"),
        ("/a/../b", "segment"),
        ("/a//b", "segment"),
        ("/./", "segment"),
        ("/%61pi/", "decoded of before routing"),
        ("/%zz", "not an escape"),
        ("/a%2", "not an escape"),
    ] {
        let e = err(&format!("{base}path = \"{path}\"\n"));
        assert!(e.starts_with("t.toml:5:") && e.contains(why), "{path}: {e}");
    }
    for path in ["/", "/a/", "/a", "/a%20b/c/", "/a%2Fb/"] {
        let ok = parse(Path::new("t.toml"), &format!("{base}path = \"{path}\"\n"));
        assert!(ok.is_ok(), "{path}: {:?}", ok.err().map(|e| e.to_string()));
    }
}

#[test]
fn two_routes_with_bad_hosts_are_each_reported_for_their_host() {
    let route = |h: &str| format!("[[route]]\npath = \"/\"\napp = \"echo\"\nhost = \"{h}\"\n");
    let text = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n{}{}",
        route("a b"),
        route("c d")
    );
    let e = err(&text);
    assert_eq!(e.matches(".host: host").count(), 2, "{e}");
    assert!(!e.contains("another route"), "{e}");
}

#[test]
fn message_settings_of_a_byte_splice_and_zero_sizes_are_refused() {
    let base = "[[listener]]\naddr = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"ws\"\n\
                [upstream.ws]\nservers = [\"127.0.0.1:9\"]\n";
    let e = err(&format!(
        "{base}ws_max_message_size = \"1KiB\"\nws_ping_interval = \"5s\"\n"
    ));
    assert!(
        e.contains("t.toml:8:23: upstream.ws.ws_max_message_size: needs ws_inspect = true"),
        "{e}"
    );
    assert!(
        e.contains("t.toml:9:20: upstream.ws.ws_ping_interval: needs ws_inspect = true"),
        "{e}"
    );
    let e = err(&format!(
        "{base}ws_inspect = true\nws_max_message_size = \"0B\"\nws_ping_interval = \"1ms\"\n"
    ));
    assert!(
        e.contains("ws_max_message_size: must be more than 0"),
        "{e}"
    );
    assert!(
        e.contains("ws_ping_interval: must be \"0\" (off) or at least 100ms"),
        "{e}"
    );
    let ok = format!(
        "{base}ws_inspect = true\nws_max_message_size = \"1KiB\"\nws_ping_interval = \"0\"\n"
    );
    assert!(parse(Path::new("t.toml"), &ok).is_ok());
    let off = format!("{base}ws_ping_interval = \"0\"\n");
    assert!(
        parse(Path::new("t.toml"), &off).is_ok(),
        "pings off need no inspection"
    );
    let listener = "[[listener]]\naddr = \"127.0.0.1:0\"\n";
    for (app, key) in [
        ("echo", "max_message_size"),
        ("chat", "max_message_size"),
        ("chat", "history_memory"),
    ] {
        let e = err(&format!("{listener}[app.{app}]\n{key} = \"0B\"\n"));
        assert!(
            e.contains(&format!("app.{app}.{key}: must be more than 0")),
            "{e}"
        );
    }
    let e = err(&format!("{listener}[app.chat]\nping_interval = \"10ms\"\n"));
    assert!(e.contains("app.chat.ping_interval: must be"), "{e}");
}

#[test]
fn a_chat_route_behind_a_callout_alone_is_warned_of() {
    let base = "[[listener]]\naddr = \"127.0.0.1:0\"\n[upstream.authsvc]\nservers = [\"127.0.0.1:1\"]\n[[route]]\npath = \"/chat\"\napp = \"chat\"\nauth_request = \"authsvc\"\n";
    let cfg = parse(Path::new("t.toml"), base).expect("valid");
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.contains("behind auth_request alone")),
        "{:?}",
        cfg.warnings
    );
    let with_chat_auth = format!(
        "{base}[auth.users]\nhmac_secret = \"base64:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n[app.chat]\nauth = \"users\"\n"
    );
    let cfg = parse(Path::new("t.toml"), &with_chat_auth).expect("valid");
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn a_short_push_token_is_warned_of() {
    let cfg = |token: &str| {
        let toml =
            format!("[[listener]]\naddr = \"127.0.0.1:0\"\n[app.chat]\npush_token = \"{token}\"\n");
        parse(Path::new("t.toml"), &toml).expect("valid").warnings
    };
    let w = cfg("push-s3cret");
    assert!(
        w.iter()
            .any(|w| w.contains("app.chat.push_token: 11 characters")),
        "{w:?}"
    );
    assert!(
        !w.iter().any(|w| w.contains("push-s3cret")),
        "no secret shown"
    );
    assert!(cfg("0123456789abcdef0123").is_empty());
}
