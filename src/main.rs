//! The `wsgate` binary: command line, logging, signals. Everything else lives in
//! the library so tests can run the same gateway in-process.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wsgate::config;
use wsgate::gateway::Snapshot;

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
    /// Validate the config and load its certificates; print `ok` or every error.
    Check,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => check(&cli.config),
        Some(Command::GenCert { out, hosts, force }) => gen_cert(&out, hosts, force),
        None => match run(&cli.config) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("wsgate: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            println!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for w in &cfg.warnings {
        eprintln!("warning: {w}");
    }
    // Any key will do: nothing is sealed or opened here.
    if let Err(e) = Snapshot::build(cfg, None, &[0; 32]) {
        println!("{}: {e}", path.display());
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

fn run(path: &std::path::Path) -> anyhow::Result<ExitCode> {
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let path = path.to_path_buf();
    rt.block_on(async move {
        let handle = wsgate::Gateway::start(cfg)
            .await
            .context("starting the gateway")?;
        serve_signals(&handle, &path).await?;
        tracing::info!("draining: stopped accepting, closing WebSockets with 1001");
        if handle.shutdown().await {
            tracing::info!("drained; exiting");
        } else {
            tracing::warn!("shutdown grace passed with sessions still open; exiting");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Reloads on SIGHUP until SIGTERM or SIGINT arrives.
async fn serve_signals(
    handle: &wsgate::GatewayHandle,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => reload(handle, path).await,
        }
    }
}

async fn reload(handle: &wsgate::GatewayHandle, path: &std::path::Path) {
    tracing::info!(config = %path.display(), "SIGHUP: reloading");
    let cfg = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            for line in e.to_string().lines() {
                tracing::error!("reload refused, keeping the running config: {line}");
            }
            return;
        }
    };
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    if let Err(e) = handle.gw.reload(cfg).await {
        tracing::error!(
            "reload refused, keeping the running config: {}: {e}",
            path.display()
        );
    }
}
