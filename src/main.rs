//! The `consullock` command (temporary entry point: only `dev-server` for now).

use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    DevServer {
        #[arg(long, default_value = "127.0.0.1:8500")]
        listen: SocketAddr,
        #[arg(long)]
        acl_token: Option<String>,
        #[arg(short, action = clap::ArgAction::Count)]
        verbose: u8,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::DevServer {
            listen,
            acl_token,
            verbose,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let result =
                runtime.block_on(consullock::devserver::run(consullock::devserver::Options {
                    listen,
                    acl_token,
                    verbose,
                }));
            if let Err(e) = result {
                eprintln!("consullock dev-server: {e}");
                std::process::exit(1);
            }
        }
    }
}
