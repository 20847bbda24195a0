//! `shoal`: look at and look after a shoal cluster.
//!
//! - `shoal members`: joins briefly as an observer and prints the cluster.
//! - `shoal healthcheck <url>`: exit 0 on a 2xx answer (Docker HEALTHCHECK
//!   in images that have no curl).
//! - `shoal keygen`: prints a new cluster key.
//! - `shoal sidecar`: advertises a co-located service by its health URL.
//! - `shoal local`: the whole topology on this machine (what `scripts/run-local` runs).

// One `unsafe` block in the whole binary: `die_with_parent` asks the kernel
// to stop a child if its parent dies (see there).
#![deny(unsafe_code)]

mod args;
mod exit;
mod http;
mod local;
mod members;
mod sidecar;

use std::process::ExitCode;
use std::time::Duration;

use crate::args::duration_arg;
use crate::http::http_get;
use crate::members::members;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Look at and look after a shoal cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Joins as an observer (never routed to) and prints the members by service.
    Members {
        /// Seeds, host:port comma list (default: SHOAL_SEEDS).
        #[arg(long)]
        seeds: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// How long to listen at most before printing.
        #[arg(long, default_value = "3s", value_parser = duration_arg)]
        wait: Duration,
        /// Keep watching until Ctrl-C: the table once the view settles, then
        /// one line per membership event (joined, up, starting, draining,
        /// left, failed) — the dashboard's event log. With --json, one JSON
        /// line per change of the view instead, with its events.
        #[arg(long)]
        watch: bool,
        /// Also log what the observer does (joining, leaving) on stderr.
        #[arg(short, long)]
        verbose: bool,
    },
    /// GETs a URL; exit 0 on 2xx, 1 otherwise.
    Healthcheck {
        /// e.g. http://127.0.0.1:8768/health
        url: String,
        /// Print the body (e.g. the admin port's /members from inside a container).
        #[arg(long)]
        print: bool,
        /// Give up after this long.
        #[arg(long, default_value = "3s", value_parser = duration_arg)]
        timeout: Duration,
    },
    /// Prints a new random cluster key (base64) for SHOAL_CLUSTER_KEY.
    Keygen,
    /// Runs gateways, story-service and notice-service replicas on loopback
    /// addresses of this machine, until Ctrl-C.
    Local(local::LocalArgs),
    /// Advertises a co-located service written in any language (SHOAL_SERVICE
    /// on SHOAL_PORT): `up` while its health URL answers 2xx, drained on
    /// SIGTERM; with `-- <command>` it also runs the service as its child.
    Sidecar(sidecar::SidecarArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("shoal: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Members {
                seeds,
                json,
                wait,
                watch,
                verbose,
            } => members(seeds, json, wait, watch, verbose).await,
            Command::Healthcheck {
                url,
                timeout,
                print,
            } => {
                let (status, body) = http_get(&url, timeout).await?;
                if print {
                    println!("{}", String::from_utf8_lossy(&body));
                }
                anyhow::ensure!(status.is_success(), "GET {url} answered {status}");
                Ok(())
            }
            Command::Sidecar(args) => sidecar::run(args).await,
            Command::Local(args) => local::run(args).await,
            Command::Keygen => {
                println!("{}", shoal_node::ClusterKey::generate().to_base64());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("shoal: {err:#}");
            ExitCode::FAILURE
        }
    }
}
