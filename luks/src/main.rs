use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = p2pvps_luks::cli::run(&args, &mut std::io::stdin().lock(), &mut std::io::stdout());
    ExitCode::from(code)
}
