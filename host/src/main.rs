//! `payfn`: the command line over the [`payfn`] library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = payfn::cli::Cli::parse();
    payfn::tls::install_provider();
    if let Err(e) = payfn::logging::init(args.log_format) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(payfn::cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
