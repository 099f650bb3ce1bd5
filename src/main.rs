//! The command line: `pgsluice [run] --config FILE`, `pgsluice check --config FILE`,
//! `pgsluice convert FILE`, `pgsluice demo`.

use pgsluice::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage:
  pgsluice [run] --config FILE    run the pooler
  pgsluice check --config FILE    validate FILE and exit (status 2 when invalid)
  pgsluice convert FILE           print a PgBouncer INI FILE as pgsluice TOML
FILE may be pgsluice's TOML or PgBouncer's pgbouncer.ini as it is.
  pgsluice demo                   throwaway primary + replica with pgsluice in front";

enum Command {
    Run(PathBuf),
    Check(PathBuf),
    Convert(PathBuf),
    Demo,
}

fn parse_args() -> Result<Command, lexopt::Error> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut sub: Option<String> = None;
    let mut file: Option<PathBuf> = None;
    let mut config: Option<PathBuf> = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('c') | Long("config") => config = Some(parser.value()?.into()),
            Short('h') | Long("help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            Value(v) if sub.is_none() => sub = Some(v.string()?),
            Value(v) if sub.as_deref() == Some("convert") && file.is_none() => {
                file = Some(v.into())
            }
            _ => return Err(arg.unexpected()),
        }
    }
    let need_config = || {
        config
            .clone()
            .ok_or_else(|| lexopt::Error::from("--config FILE is required"))
    };
    match sub.as_deref() {
        None | Some("run") => Ok(Command::Run(need_config()?)),
        Some("check") => Ok(Command::Check(need_config()?)),
        Some("convert") => {
            Ok(Command::Convert(file.or(config).ok_or_else(|| {
                lexopt::Error::from("convert needs the INI FILE")
            })?))
        }
        Some("demo") => Ok(Command::Demo),
        Some(other) => Err(format!("unknown command \"{other}\"").into()),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}

/// The runtime for `workers` threads: one runs everything on the thread that waits for the
/// sockets (no hand-offs between threads), more share the connections out among themselves.
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if workers > 1 {
        builder.worker_threads(workers);
    }
    builder.enable_all().build().expect("tokio runtime")
}

/// `pgsluice convert FILE`: the TOML of a PgBouncer file, checked, on stdout.
fn convert(path: &std::path::Path) -> ExitCode {
    use pgsluice::config::ini;
    let file = path.display().to_string();
    let converted = std::fs::read_to_string(path)
        .map_err(|source| pgsluice::config::ConfigError::Read {
            file: file.clone(),
            source,
        })
        .and_then(|text| ini::convert(&text, &file))
        .and_then(|c| match Config::from_table(c.table.clone(), &file) {
            Ok(_) => Ok(c),
            Err(e) => Err(c.locate(e)),
        });
    match converted {
        Ok(c) => {
            print!("{}", c.to_toml(&file));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pgsluice: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let command = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgsluice: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Check(path) => match Config::read(&path) {
            Ok((c, skipped)) => {
                for (at, why) in skipped {
                    eprintln!("warning: {at}: not carried over: {why}");
                }
                println!(
                    "{}: ok ({} databases, {} users)",
                    path.display(),
                    c.databases.len(),
                    c.users.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgsluice: {e}");
                ExitCode::from(2)
            }
        },
        Command::Convert(path) => convert(&path),
        Command::Run(path) => {
            let (config, skipped) = match Config::read(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("pgsluice: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging();
            for (at, why) in skipped {
                tracing::warn!("{at}: not carried over: {why}");
            }
            runtime(config.general.workers).block_on(async {
                let service = match pgsluice::service::Service::bind(config).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen");
                        return ExitCode::FAILURE;
                    }
                };
                let ctx = service.ctx.clone();
                let _ = ctx.config_path.set(path.clone());
                let serving = service.serve();
                tokio::pin!(serving);
                let signals = signal(SignalKind::terminate())
                    .and_then(|t| Ok((t, signal(SignalKind::hangup())?)));
                let (mut term, mut hup) = match signals {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot handle signals");
                        return ExitCode::FAILURE;
                    }
                };
                loop {
                    tokio::select! {
                        _ = &mut serving => break,
                        _ = term.recv() => {
                            tracing::info!("SIGTERM: draining, then exiting");
                            ctx.shutdown(false);
                        }
                        _ = hup.recv() => {
                            tracing::info!("SIGHUP: reloading {}", path.display());
                            // A refused reload is logged by reload() and changes nothing.
                            let _ = ctx.reload();
                        }
                        _ = tokio::signal::ctrl_c() => {
                            tracing::info!("SIGINT: closing clients, then exiting");
                            ctx.shutdown(true);
                        }
                    }
                }
                ExitCode::SUCCESS
            })
        }
        Command::Demo => {
            init_logging();
            match runtime(0).block_on(pgsluice::demo::run()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pgsluice demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
