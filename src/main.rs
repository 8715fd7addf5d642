//! The `wsgate` binary: command line, logging, signals. Everything else lives in
//! the library so tests can run the same gateway in-process.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wsgate::config;

/// glibc malloc spends thousands of instructions on each 8 KiB connection
/// buffer hyper allocates; mimalloc's size classes do not (per new proxied
/// WebSocket: 92k -> 75k instructions, `bench/callgrind.sh S5`). The library
/// (tests, fuzzing) keeps the system allocator.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "wsgate",
    version,
    about = "Reverse proxy and WebSocket gateway"
)]
struct Cli {
    /// Config file.
    #[arg(short, long, global = true, default_value = "conf/wsgate.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config, load its certificates and try to listen on its
    /// addresses; print `ok` or every error.
    Check {
        /// Do not try to listen on the listener and admin addresses (e.g. before
        /// reloading a running gateway, whose own listeners hold them).
        #[arg(long)]
        no_bind: bool,
    },
    /// Write a self-signed development certificate and key.
    GenCert {
        /// Output directory.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Host names or IP addresses the certificate is valid for (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Replace existing files (by default they are kept).
        #[arg(long)]
        force: bool,
    },
    /// Print a development token (HS256) signed with an `[auth.NAME]`'s
    /// `hmac_secret`.
    Token {
        /// The `[auth.NAME]` whose secret signs the token.
        #[arg(long, default_value = "users")]
        auth: String,
        /// The subject: the user the token names.
        #[arg(long)]
        sub: String,
        /// Rooms the chat lets the user join: names or prefixes ending in `*`.
        #[arg(long)]
        rooms: Option<String>,
        /// Lifetime (e.g. 30m, 1h, 7d).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// An extra claim `k=v` (v as JSON when it parses); repeatable.
        #[arg(long = "claim")]
        claims: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { no_bind }) => check(&cli.config, !no_bind),
        Some(Command::GenCert { out, hosts, force }) => gen_cert(&out, hosts, force),
        Some(Command::Token {
            auth,
            sub,
            rooms,
            ttl,
            claims,
        }) => token(&cli.config, auth, sub, rooms, &ttl, claims),
        None => match run(&cli.config) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("wsgate: {}", chain(e.chain()));
                ExitCode::FAILURE
            }
        },
    }
}

/// An error and its causes as `outer: cause: root`, each said once: a cause
/// whose text already ends the message (an error that prints its source in
/// its own message, like `cannot bind ADDR: {source}`) is not repeated.
fn chain<'a>(errors: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>) -> String {
    let mut out = String::new();
    for e in errors {
        let text = e.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// `e` and its `source()` chain.
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

fn check(path: &std::path::Path, bind: bool) -> ExitCode {
    let cfg = match config::load_with(path, config::Checks { bind }) {
        Ok(c) => c,
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for w in &cfg.warnings {
        eprintln!("warning: {w}");
    }
    if let Err(e) = wsgate::gateway::check(cfg) {
        println!("{}: {}", path.display(), chain(causes(&e)));
        return ExitCode::FAILURE;
    }
    println!("ok");
    ExitCode::SUCCESS
}

fn gen_cert(out: &std::path::Path, mut hosts: Vec<String>, force: bool) -> ExitCode {
    let (crt, key) = (out.join("localhost.crt"), out.join("localhost.key"));
    if !force && crt.exists() && key.exists() {
        println!(
            "{} and {} exist; keeping them (use --force to replace)",
            crt.display(),
            key.display()
        );
        return ExitCode::SUCCESS;
    }
    if hosts.is_empty() {
        hosts = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    }
    match wsgate::certs::write_dev_cert(out, &hosts) {
        Ok((c, k)) => {
            println!(
                "wrote {} and {} for {}",
                c.display(),
                k.display(),
                hosts.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wsgate gen-cert: {e}");
            ExitCode::FAILURE
        }
    }
}

fn token(
    path: &std::path::Path,
    auth: String,
    sub: String,
    rooms: Option<String>,
    ttl: &str,
    claims: Vec<String>,
) -> ExitCode {
    let ttl = match config::units::parse_duration(ttl) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("wsgate token: --ttl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = config::load(path)
        .map_err(|e| e.to_string())
        .and_then(|cfg| {
            let t = wsgate::auth::mint::DevToken {
                auth,
                sub,
                rooms,
                ttl,
                claims,
            };
            t.sign(&cfg.auth).map_err(|e| format!("wsgate token: {e}"))
        });
    match result {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    // First, while this is the only thread: both read and clear variables.
    let (inherited, inherit_errors) = wsgate::inherit::Inherited::from_env();
    let ready_report = wsgate::upgrade::ReadyReport::from_env();
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    wsgate::logging::init(cfg.log.format);
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    for e in &inherit_errors {
        tracing::warn!("{e}; binding instead");
    }
    let upgrader = wsgate::upgrade::Upgrader::capture()
        .map_err(|e| tracing::warn!("SIGUSR2 upgrades disabled: {e}"))
        .ok();
    let rt = wsgate::runtime::build().context("starting the runtime")?;
    let path = path.to_path_buf();
    let served = rt.block_on(async move {
        let signals = Signals::install()?;
        let handle = wsgate::Gateway::start_with(cfg, inherited)
            .await
            .context("starting the gateway")?;
        let upgraded = ready_report.is_some();
        if let Some(r) = ready_report {
            match r.send() {
                Ok(()) => tracing::info!("serving; told the previous process to drain"),
                Err(e) => tracing::warn!("cannot tell the previous process this one is ready: {e}"),
            }
        }
        sd(wsgate::sd_notify::ready(upgraded));
        match serve_signals(&handle, &path, upgrader.as_ref(), signals).await? {
            Stop::Signal => sd(wsgate::sd_notify::stopping()),
            // systemd follows the new process (MAINPID): no STOPPING here.
            Stop::Upgraded(pid) => {
                tracing::info!(pid, "the new process is ready");
                handle.hand_over_admin();
            }
        }
        tracing::info!("draining: stopped accepting, closing WebSockets over the drain window");
        tokio::select! {
            drained = handle.shutdown() => if drained {
                tracing::info!("drained; exiting");
            } else {
                tracing::warn!("shutdown grace passed with sessions still open; exiting");
            },
            // A second SIGTERM or SIGINT: as `Ctrl-C` twice, do not wait.
            () = another_stop_signal() => {
                tracing::warn!("second stop signal: exiting without waiting for the drain");
            }
        }
        Ok(ExitCode::SUCCESS)
    });
    // Not waiting for blocking tasks: a reload stuck reading a file (a hung
    // mount) must not hold the exit after the drain.
    rt.shutdown_background();
    served
}

/// The next SIGTERM, SIGINT or SIGQUIT; never, if they cannot be listened for.
async fn another_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::quit()),
    ) {
        (Ok(mut term), Ok(mut int), Ok(mut quit)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = quit.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Why the process stops serving.
enum Stop {
    /// SIGTERM, SIGINT or SIGQUIT.
    Signal,
    /// A new binary (this pid) serves on our sockets now.
    Upgraded(u32),
}

/// The signals the process serves, listened for before it starts serving:
/// one arriving between the first listener and the handlers would
/// otherwise take its default action (SIGHUP and SIGUSR2 kill). SIGQUIT
/// and SIGUSR1 are nginx's graceful stop and log reopening, which
/// operators and logrotate send out of habit: their default action (a
/// core dump, an exit) would drop every session without a close frame.
/// SIGALRM, which nginx takes for its timers, is ignored for the same
/// reason.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
    alrm: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            quit: signal(SignalKind::quit()).context("installing SIGQUIT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
            usr1: signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?,
            usr2: signal(SignalKind::user_defined2()).context("installing SIGUSR2 handler")?,
            alrm: signal(SignalKind::alarm()).context("installing SIGALRM handler")?,
        })
    }
}

/// Reloads on SIGHUP and upgrades on SIGUSR2 until SIGTERM, SIGINT or
/// SIGQUIT arrives, or an upgrade succeeds.
async fn serve_signals(
    handle: &wsgate::GatewayHandle,
    path: &std::path::Path,
    upgrader: Option<&wsgate::upgrade::Upgrader>,
    signals: Signals,
) -> anyhow::Result<Stop> {
    let Signals {
        mut term,
        mut int,
        mut quit,
        mut hup,
        mut usr1,
        mut usr2,
        mut alrm,
    } = signals;
    // An upgrade runs in a task of its own while signals are still served;
    // so does a reload, so that SIGTERM still drains while one reads its
    // files (a hung mount). A SIGHUP during a reload is one more after it.
    // Awaited through their handles: a task that panicked ends too.
    type Upgrade = tokio::task::JoinHandle<Result<u32, wsgate::upgrade::UpgradeError>>;
    let mut upgrading: Option<Upgrade> = None;
    let mut reloading: Option<tokio::task::JoinHandle<()>> = None;
    let mut again = false;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(abandon(upgrading).await),
            _ = int.recv() => return Ok(abandon(upgrading).await),
            _ = quit.recv() => return Ok(abandon(upgrading).await),
            _ = usr1.recv() => tracing::info!("SIGUSR1: logs go to stderr, nothing to reopen"),
            _ = alrm.recv() => tracing::info!("SIGALRM: ignored"),
            _ = hup.recv() => {
                if reloading.is_some() {
                    tracing::info!("SIGHUP: a reload is running; another follows it");
                    again = true;
                } else {
                    reloading = Some(start_reload(handle, path));
                }
            }
            r = async { reloading.as_mut().expect("guarded").await }, if reloading.is_some() => {
                if let Err(e) = r {
                    tracing::error!("reload failed, keeping the running config: {e}");
                }
                reloading = std::mem::take(&mut again).then(|| start_reload(handle, path));
            }
            _ = usr2.recv() => match upgrader {
                _ if upgrading.is_some() => tracing::warn!("SIGUSR2: an upgrade is already in progress"),
                None => tracing::error!("SIGUSR2: upgrades are disabled (see the start log)"),
                Some(u) => {
                    tracing::info!("SIGUSR2: starting the new binary with our listening sockets");
                    let (u, sockets) = (u.clone(), handle.listening_sockets());
                    upgrading = Some(tokio::spawn(async move { u.run(sockets).await }));
                }
            },
            r = async { upgrading.as_mut().expect("guarded").await }, if upgrading.is_some() => {
                upgrading = None;
                match r {
                    Ok(Ok(pid)) => return Ok(Stop::Upgraded(pid)),
                    Ok(Err(e)) => tracing::error!("binary upgrade failed, still serving: {}", chain(causes(&e))),
                    Err(e) => tracing::error!("binary upgrade failed, still serving: {e}"),
                }
            }
        }
    }
}

/// SIGTERM or SIGINT: an upgrade still waiting for its new process is
/// abandoned, the process killed (it would otherwise outlive this one with
/// the listening sockets, accepting connections nobody serves). One that
/// finished just now (its new process serving) is an upgrade, not a stop.
async fn abandon(
    upgrading: Option<tokio::task::JoinHandle<Result<u32, wsgate::upgrade::UpgradeError>>>,
) -> Stop {
    let Some(task) = upgrading else {
        return Stop::Signal;
    };
    task.abort();
    if let Ok(Ok(pid)) = task.await {
        return Stop::Upgraded(pid);
    }
    tracing::warn!("stopping: the binary upgrade in progress is abandoned and its process killed");
    Stop::Signal
}

/// Logs a failed `sd_notify` (systemd then times the service out itself).
fn sd(r: Result<(), wsgate::sd_notify::NotifyError>) {
    if let Err(e) = r {
        tracing::warn!("{e}");
    }
}

/// Reloads in a task of its own.
fn start_reload(
    handle: &wsgate::GatewayHandle,
    path: &std::path::Path,
) -> tokio::task::JoinHandle<()> {
    let (handle, path) = (handle.clone(), path.to_path_buf());
    tokio::spawn(async move {
        sd(wsgate::sd_notify::reloading());
        reload(&handle, path).await;
        // Not after the drain's STOPPING=1.
        if !handle.is_draining() {
            sd(wsgate::sd_notify::ready(false));
        }
    })
}

async fn reload(handle: &wsgate::GatewayHandle, path: std::path::PathBuf) {
    tracing::info!(config = %path.display(), "SIGHUP: reloading");
    // Off the runtime's workers: the config names files it reads.
    let read = tokio::task::spawn_blocking({
        let path = path.clone();
        move || config::load(&path)
    });
    let cfg = match read.await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            for line in e.to_string().lines() {
                tracing::error!("reload refused, keeping the running config: {line}");
            }
            return;
        }
        Err(e) => {
            tracing::error!("reload failed, keeping the running config: {e}");
            return;
        }
    };
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    if let Err(e) = handle.reload(cfg).await {
        // A bind error names its file and line itself.
        let place = match e {
            wsgate::gateway::StartError::Bind { .. } => String::new(),
            _ => format!("{}: ", path.display()),
        };
        tracing::error!(
            "reload refused, keeping the running config: {place}{}",
            chain(causes(&e))
        );
    }
}
