use std::process::ExitCode;

fn main() -> ExitCode {
    mpu_sweeper::cli::main()
}
