//! Config parsing and validation: the shipped example, and one located error per mistake.

use super::*;
use crate::routing::Reason;

fn err(text: &str) -> ConfigError {
    match parse(text, "t.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn example_file_validates_and_routes() {
    let cfg = parse(include_str!("../../examples/viaduct.toml"), "viaduct.toml").unwrap();
    assert_eq!(
        cfg.listen,
        ["127.0.0.1:8083".parse::<crate::server::Listen>().unwrap()]
    );
    let r = &cfg.router;
    let decide = |t: &str| {
        let d = r.decide_with(&parse_target(t).unwrap(), None, &[]);
        (d.action.to_string(), d.reason)
    };
    assert!(decide("abc.onion:80").0.starts_with("upstream tor"));
    assert_eq!(
        decide("db.internal:5432"),
        ("direct".into(), Reason::Rule(2))
    );
    assert_eq!(decide("10.1.2.3:22"), ("direct".into(), Reason::Rule(2)));
    assert_eq!(
        decide("x.ads.example:443"),
        ("block".into(), Reason::Rule(3))
    );
    assert_eq!(
        decide("mail.example.org:25"),
        ("block".into(), Reason::Rule(4))
    );
    assert!(
        decide("www.shop.example:443")
            .0
            .starts_with("pool residential")
    );
    let (action, reason) = decide("www.example.org:443");
    assert!(
        action.starts_with("upstream corp (http proxy proxy.corp.example:3128)"),
        "{action}"
    );
    assert!(!action.contains("s3cret"));
    assert_eq!(reason, Reason::Default);
    assert_eq!(r.pools().len(), 1);
}

#[test]
fn errors_name_file_line_and_field() {
    let e = err(
        "listen = [\"127.0.0.1:1\"]\n[upstreams]\na = \"http://h:1\"\n\n[[rules]]\nmatch = {}\nvia = \"nope\"\n",
    );
    assert_eq!(
        (e.file.as_str(), e.line, e.field.as_str()),
        ("t.toml", 7, "rules[1].via")
    );
    assert!(
        e.message
            .contains("\"nope\" is not direct, block, an upstream or a pool"),
        "{e}"
    );
    assert!(
        e.to_string().starts_with("t.toml:7:7: rules[1].via: "),
        "{e}"
    );

    let e = err("[pools.p]\nmembers = [\"x\"]\nstrateg = \"random\"\n");
    assert_eq!((e.line, e.field.as_str()), (3, "pools.p.strateg"));
    assert!(e.message.contains("unknown field"), "{e}");

    let e = err(
        "[upstreams]\na = \"http://h:1\"\n[pools.p]\nmembers = [\"a\"]\nstrategy = \"fastest\"\n",
    );
    assert_eq!((e.line, e.field.as_str()), (5, "pools.p.strategy"));

    let e = err(
        "[upstreams]\na = \"http://h:1\"\n[pools.p]\nmembers = [\"a\"]\n[pools.q]\nmembers = [\"p\"]\n",
    );
    assert_eq!((e.line, e.field.as_str()), (6, "pools.q.members"));
    assert!(
        e.message.contains("is a pool; members must be upstreams"),
        "{e}"
    );

    let e = err("connect_timeout = \"ten seconds\"\n");
    assert_eq!((e.line, e.field.as_str()), (1, "connect_timeout"));

    let e = err("[upstreams]\ncorp = \"ftp://alice:s3cret@h:1\"\n");
    assert_eq!((e.line, e.field.as_str()), (2, "upstreams.corp"));
    assert!(!e.to_string().contains("s3cret"));

    let e = err("[[rules]]\nmatch = { cidrs = [\"10.0.0.0/33\"] }\nvia = \"direct\"\n");
    assert_eq!((e.line, e.field.as_str()), (2, "rules[1].match.cidrs"));

    let e = err("bypass = \"localhost,not a host\"\n");
    assert_eq!(e.field, "bypass");

    let e = err("listen = [\"nowhere\"]\n");
    assert_eq!((e.line, e.field.as_str()), (1, "listen"));

    let e = err("[default]\nvia = \"corp\"\n");
    assert_eq!((e.line, e.field.as_str()), (2, "default.via"));

    // A plain setting's bad value: its own line and column, its table, and what it takes.
    let e =
        err("idle_timeout = \"1m\"\n[limits]\nmax_headers = 10\nrequest_body_grace = \"later\"\n");
    assert_eq!(
        (e.line, e.column, e.field.as_str()),
        (4, 22, "limits.request_body_grace")
    );
    assert!(e.message.contains("invalid duration \"later\""), "{e}");
    let e = err("[limits]\nmax_headers = \"many\"\n");
    assert_eq!((e.line, e.field.as_str()), (2, "limits.max_headers"));
    assert!(e.message.contains("expected a number"), "{e}");
    let e = err("open = \"yes\"\n");
    assert_eq!((e.line, e.field.as_str()), (1, "open"));
    let e = err("[limits.user_bandwidth]\nann = \"1MB/s\"\nbob = \"lots\"\n");
    assert_eq!((e.line, e.field.as_str()), (3, "limits.user_bandwidth.bob"));

    let e = err("this is not toml\n");
    assert_eq!(e.line, 1);
}

#[test]
fn chains_and_inline_routes() {
    let cfg = parse(
        "[upstreams]\nchain = \"socks5h://127.0.0.1:1080,http://127.0.0.1:3128\"\n[[rules]]\nmatch = { ports = [22] }\nvia = \"socks5://127.0.0.1:9\"\n[default]\nvia = \"chain\"\n",
        "t.toml",
    )
    .unwrap();
    let d = cfg
        .router
        .decide_with(&parse_target("x.org:443").unwrap(), None, &[]);
    assert_eq!(
        d.action.to_string(),
        "upstream chain (socks5h proxy 127.0.0.1:1080 -> http proxy 127.0.0.1:3128)"
    );
    let d = cfg
        .router
        .decide_with(&parse_target("x.org:22").unwrap(), None, &[]);
    assert!(d.action.to_string().contains("socks5 proxy 127.0.0.1:9"));
}

#[test]
fn limits_table() {
    let cfg = parse(
        "[limits]\nmax_connections = 5\nheader_read_timeout = \"2s\"\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(cfg.limits.max_connections, 5);
    assert_eq!(cfg.limits.header_read_timeout, Duration::from_secs(2));
    assert_eq!(cfg.limits.max_headers, Limits::default().max_headers);
    let e = err("[limits]\nmax_conections = 5\n");
    assert_eq!((e.line, e.field.as_str()), (2, "limits.max_conections"));
    let e = err("[limits]\nheader_read_timeout = \"soon\"\n");
    assert_eq!(
        (e.line, e.field.as_str()),
        (2, "limits.header_read_timeout")
    );
}

/// Errors that quote the file never carry a password: a line missing its `=`, a bad `via`.
#[test]
fn errors_never_echo_credentials() {
    for text in [
        "[upstreams]\ncorp \"http://alice:s3cretPW@127.0.0.1:3128\"\n",
        "[[rules]]\nmatch = { domains = [\"x.test\"] }\nvia = \"http//alice:s3cretPW@127.0.0.1:3128\"\n",
        "[upstreams]\ncorp = \"alice:s3cretPW@127.0.0.1:3128\"\n",
    ] {
        let shown = err(text).to_string();
        assert!(
            !shown.contains("s3cretPW") && !shown.contains("alice"),
            "{shown}"
        );
    }
}

/// A block rule on 127.0.0.0/8 also catches every other spelling of a loopback address.
#[test]
fn block_rules_see_every_ipv4_spelling() {
    let cfg = parse(
        "[[rules]]\nmatch = { cidrs = [\"127.0.0.0/8\"] }\nvia = \"block\"\n",
        "t.toml",
    )
    .unwrap();
    for t in [
        "127.1:80",
        "2130706433:80",
        "0x7f000001:80",
        "0177.0.0.1:80",
        "0.0.0.0:80",
        "[::ffff:127.0.0.1]:80",
    ] {
        let d = cfg.router.decide_with(&parse_target(t).unwrap(), None, &[]);
        assert_eq!(d.action.to_string(), "block", "{t}");
    }
}

/// `${NAME}` in upstream URLs comes from the environment; a missing variable or a bad name is
/// an error on its line that never shows the URL's secret.
#[test]
fn environment_variables_in_upstream_urls() {
    let env = |name: &str| (name == "PW").then(|| "p@ss".to_owned());
    assert_eq!(
        expand_with("http://u:${PW}@h:1", env).unwrap(),
        "http://u:p@ss@h:1"
    );
    assert_eq!(expand_with("no vars", env).unwrap(), "no vars");
    assert!(
        expand_with("${NOPE}", env)
            .unwrap_err()
            .contains("NOPE is not set")
    );
    assert!(
        expand_with("${1X}", env)
            .unwrap_err()
            .contains("not an environment variable name")
    );
    assert!(expand_with("${PW", env).unwrap_err().contains("closing"));
    // In a URL's userinfo a value is percent-encoded: a raw password stays one password.
    let raw = |name: &str| match name {
        "PW" => Some("p@ss:w/rd%41,x".to_owned()),
        "HOST" => Some("proxy.example".to_owned()),
        "PORT" => Some("80x80".to_owned()),
        _ => None,
    };
    let chain = expand_url_with(
        "http://u:${PW}@${HOST}:1,socks5://${PW}@h:2",
        &raw,
        |s: &str| Ok::<_, String>(s.to_owned()),
    )
    .unwrap();
    assert_eq!(
        chain,
        "http://u:p%40ss%3Aw%2Frd%2541%2Cx@proxy.example:1,socks5://p%40ss%3Aw%2Frd%2541%2Cx@h:2"
    );
    let route = expand_url_with("http://u:${PW}@h:1", &raw, crate::upstream::Route::parse);
    assert!(route.is_ok(), "{:?}", route.err());
    // An error caused by a substituted value names the variable, never the value.
    let e = expand_url_with(
        "http://u:${PW}@h:${PORT}",
        &raw,
        crate::upstream::Route::parse,
    )
    .err()
    .unwrap();
    assert!(
        e.contains("${PORT}") && !e.contains("80x80") && !e.contains("p%40"),
        "{e}"
    );
    let e = err("[upstreams]\n\na = \"http://u:${VIADUCT_TEST_SURELY_UNSET_42}@h:1\"\n");
    assert_eq!((e.line, e.field.as_str()), (3, "upstreams.a"));
    assert!(
        e.message
            .contains("environment variable VIADUCT_TEST_SURELY_UNSET_42 is not set"),
        "{e}"
    );
}

/// `[auth]` and `[access]`: values are checked where they are written.
#[test]
fn auth_and_access_tables() {
    let cfg = parse(
        "open = true\n[auth]\nfile = \"users.htpasswd\"\nrealm = \"corp\"\nmax_connections_per_user = 5\nlockout = \"30s\"\n\
         [access]\nclients = [\"10.0.0.0/8\", \"192.0.2.7\"]\ndeny = [\"203.0.113.0/24\"]\nallow = [\"10.1.0.0/16\"]\nconnect_ports = [443]\n",
        "/etc/viaduct/viaduct.toml",
    )
    .unwrap();
    let auth = cfg.auth.unwrap();
    assert_eq!(
        auth.file.as_deref(),
        Some(Path::new("/etc/viaduct/users.htpasswd")),
        "relative to the config file"
    );
    assert_eq!(auth.realm.as_deref(), Some("corp"));
    assert_eq!(auth.lockout, Some(Duration::from_secs(30)));
    let a = &cfg.access;
    assert!(cfg.settings.open);
    assert_eq!(a.clients.as_ref().map(Vec::len), Some(2));
    assert_eq!(a.connect_ports, [443]);
    let e = err("[access]\ndeny = [\"10.0.0.0/33\"]\n");
    assert_eq!((e.line, e.field.as_str()), (2, "access.deny"));
    let e = err("[auth]\nfile = \"u\"\nrealm = \"a\\\"b\"\n");
    assert_eq!((e.line, e.field.as_str()), (3, "auth.realm"));
    let e = err("[auth]\nfile = \"u\"\nmax_failures = 0\n");
    assert_eq!(e.field, "auth.max_failures");
    let e = err("[access]\nconnect_ports = [0]\n");
    assert_eq!(e.field, "access.connect_ports");
}
