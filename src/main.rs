//! The `consullock` binary: everything lives in the library; see `consullock::app`.

fn main() -> std::process::ExitCode {
    consullock::app::main()
}
