#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    approvalplane::cli::run()
}
